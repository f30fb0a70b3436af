"""Geometry of 2D slices: flips, small rotations, bilinear resizing, and the copies a reference index holds.

A generator that memorised a training slice may hand it back flipped, slightly rotated, turned by
90° or in the other axis order (a PNG export may write it transposed); the features are not
invariant to any of these. The reference index therefore holds, besides every training slice,
copies of it flipped left-right and up-down, rotated by ±4°, transposed and turned by ±90°, all
with provenance pointing at the original slice (docs/method.md §4 and §7.9). The last three also
give the audit's second stage its candidates for re-oriented copies without embedding any
re-oriented view of the query.
"""

from __future__ import annotations

import math

import numpy as np

REFERENCE_ROTATION_DEGREES = 4.0
ORIGINAL = "none"
# Every copy of a reference slice the index holds, in index order (originals first).
REFERENCE_COPIES: tuple[str, ...] = (ORIGINAL, "hflip", "vflip", "rot+4", "rot-4", "transpose", "rot+90", "rot-90")
# The copies that swap the slice's axes (a [rows, cols] slice becomes [cols, rows]).
AXES_SWAPPING_COPIES = frozenset({"transpose", "rot+90", "rot-90"})
_ROTATIONS = {"rot+4": REFERENCE_ROTATION_DEGREES, "rot-4": -REFERENCE_ROTATION_DEGREES}
_QUARTER_TURNS = {"rot+90": -1, "rot-90": 1}  # np.rot90 turns of rotate()'s +90° and -90°


def flip_slice(slice2d: np.ndarray, flip: str) -> np.ndarray:
    """hflip reverses the last (column) axis of a 2D slice, vflip the first (row) axis."""
    if flip == "hflip":
        return slice2d[:, ::-1]
    if flip == "vflip":
        return slice2d[::-1, :]
    return slice2d


def rotate(slice2d: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate about the centre by ``degrees`` (counter-clockwise), bilinear, nearest-edge padding."""
    image = np.asarray(slice2d, dtype=np.float32)
    h, w = image.shape
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    # Output pixel (x, y) about the centre samples the input at R(-θ)(x, y), clamped to the edge.
    ys, xs = np.meshgrid(np.arange(h) - (h - 1) / 2.0, np.arange(w) - (w - 1) / 2.0, indexing="ij")
    src_x = np.clip(cos * xs + sin * ys + (w - 1) / 2.0, 0, w - 1)
    src_y = np.clip(-sin * xs + cos * ys + (h - 1) / 2.0, 0, h - 1)
    x0 = np.minimum(np.floor(src_x).astype(np.intp), max(w - 2, 0))
    y0 = np.minimum(np.floor(src_y).astype(np.intp), max(h - 2, 0))
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (src_x - x0).astype(np.float32), (src_y - y0).astype(np.float32)
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def reference_copy(slice2d: np.ndarray, copy: str) -> np.ndarray:
    """The slice transformed as one of :data:`REFERENCE_COPIES` names (``none`` returns it as is)."""
    if copy in _ROTATIONS:
        return rotate(slice2d, _ROTATIONS[copy])
    if copy in _QUARTER_TURNS:
        return np.ascontiguousarray(np.rot90(slice2d, _QUARTER_TURNS[copy]))
    if copy == "transpose":
        return np.ascontiguousarray(np.asarray(slice2d).T)
    if copy in (ORIGINAL, "hflip", "vflip"):
        return flip_slice(slice2d, copy)
    raise ValueError(f"unknown reference copy {copy!r}; expected one of {', '.join(REFERENCE_COPIES)}")


def bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] float64: antialiased bilinear resampling of one axis from n_in to n_out pixels.

    Pixel centres are aligned (no corner alignment); when shrinking, the triangle filter is
    widened by n_in / n_out so that every input pixel contributes (no aliasing). The weights are
    those of ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=True)``.
    """
    scale = n_in / n_out
    support = max(scale, 1.0)
    inverse = 1.0 / support
    matrix = np.zeros((n_out, n_in), dtype=np.float64)
    for i in range(n_out):
        centre = scale * (i + 0.5)
        low = max(int(centre - support + 0.5), 0)
        high = min(int(centre + support + 0.5), n_in)
        taps = np.maximum(0.0, 1.0 - np.abs((np.arange(low, high) - centre + 0.5) * inverse))
        total = 0.0
        for tap in taps:  # summed in order, as torch does, so that the weights match it exactly
            total += tap
        matrix[i, low:high] = taps / total
    return matrix


def resize_bilinear(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A 2D image [h, w] resized to ``shape`` [rows, cols] by :func:`bilinear_weights` along each axis; float32."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"expected a 2D slice, got shape {image.shape}")
    rows = bilinear_weights(image.shape[0], int(shape[0])).astype(np.float32)
    cols = bilinear_weights(image.shape[1], int(shape[1])).astype(np.float32)
    return rows @ image @ cols.T
