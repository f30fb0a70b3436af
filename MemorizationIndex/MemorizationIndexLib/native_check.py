"""The near-exact part at the query slice's own resolution: the candidate's own pixels carried onto the query's by a
pair's alignment and compared in small windows, which finds a small pasted patch or fine texture that the 64-pixel
grid sees too coarsely (method.md §7.44, §7.50).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.registration import phase_cross_correlation

from .agreement import (
    EXACT,
    bounding_box,
    closed,
    largest_regions,
    local_correlation,
    shrunk,
    two_dimensional_pixels,
)
from .grid_warps import BEND_GATE
from .separable import gaussian_reach
from .slice_grid import Grid

# A pair scoring at least NATIVE_GATE, or reproducing any grid pixel near-exactly, is also checked at the query slice's
# own resolution (:func:`native_part`, :func:`checked_natively`): the grid sees a small pasted patch at a quarter of
# its resolution or less, too coarse for its pixels to correlate near-exactly (method.md §7.44), and fine texture
# copied in place can agree on it too little to reach the gate (§7.50). A near-exact region of NATIVE_SHARE of the
# smaller foreground (at least half the field of view) scores 1, so one of a fiftieth reaches
# verified_null.MIN_COPY_SCORE.
NATIVE_GATE = BEND_GATE
NATIVE_SHARE = 0.1
NATIVE_WINDOW = 2.0  # local-correlation window (slice pixels) at the slice's own resolution
NATIVE_SHIFT = 2.0  # slice pixels: the largest residual translation the native check corrects (:func:`native_part`)
NATIVE_SUBPIXEL = 20  # that translation's precision: 1 / NATIVE_SUBPIXEL slice pixel
NATIVE_TAPER = 4.0  # sigma (slice pixels) of the taper of the region that translation is sought in


def checked_natively(score: float, reproduced: float = 0.0) -> bool:
    """Whether a scored hypothesis is checked at the query slice's own resolution (:func:`native_part`): its grid
    score reaches NATIVE_GATE, or some of its grid pixels are reproduced near-exactly (``reproduced`` > 0, its
    near-exact part on the grid; a pair's chosen hypothesis passes it, the moves that count only by their near-exact
    part do not, method.md §7.50). Fine texture copied in place can agree on the 64-pixel grid too little to reach
    the gate while a few of its grid pixels correlate near-exactly."""
    return bool(score >= NATIVE_GATE or reproduced > 0.0)


def native_part(
    query: Grid, candidate: Grid, to_query: np.ndarray, copied: np.ndarray | None = None
) -> tuple[float, np.ndarray]:
    """The near-exact part at the query slice's own resolution, and its region bool [rows, cols] of the query.

    The candidate's own pixels (``Grid.unit``) are carried onto the query's by ``to_query`` [3, 3] (a pair's
    ``Alignment.matrix``), then moved by the
    translation that phase correlation at the slice's resolution finds in the copied region (``copied``, the grid's
    copy mask; the two foregrounds' overlap where it is empty or None), when that is at most NATIVE_SHIFT pixels: the
    grid's alignment is exact to a fraction of a grid pixel, several of the slice's, and a noisy copy's pixels
    correlate near-exactly only within a fraction of one. The part is the largest region, more than a pixel inside
    both foregrounds, whose local correlation (Gaussian windows of NATIVE_WINDOW pixels) is at least EXACT where
    neither slice's structure is one straight edge (a smooth ramp is one at this scale; noise added to the query
    alone would hide it there): its share of the smaller foreground (at least half the query's field
    of view: a small foreground's few near-exact pixels are look-alike anatomy as often as not) over NATIVE_SHARE, at
    most 1."""
    to_candidate = np.linalg.inv(to_query)[[1, 0, 2]][:, [1, 0, 2]]  # query (row, col, 1) -> candidate's
    fixed, own = query.unit.astype(np.float32), candidate.unit.astype(np.float32)
    inside = _carried(candidate.foreground.astype(np.float32), to_candidate, fixed.shape) > 0.5
    overlap = query.foreground & inside
    region = overlap if copied is None or not copied.any() else copied & overlap
    moved = _carried(own, to_candidate, fixed.shape)
    shift = _residual_shift(fixed, moved, region)
    if shift.any():
        to_candidate[:2, 2] -= to_candidate[:2, :2] @ shift
        moved = _carried(own, to_candidate, fixed.shape)
    largest = np.zeros(fixed.shape, dtype=bool)
    bounds = bounding_box(overlap)
    if bounds is None:
        return 0.0, largest
    # The overlap and what the filters read about it (their reach and the gradient's step): the same values.
    box = _widened(bounds, gaussian_reach(NATIVE_WINDOW) + 1, fixed.shape)
    fixed, moved, overlap = fixed[box], moved[box], overlap[box]
    correlation = local_correlation(fixed[None], moved[None], overlap[None], NATIVE_WINDOW, _filtered)
    exact = closed(correlation >= EXACT) & shrunk(overlap[None])
    if exact.any():  # the structure tensors only where some pixel correlates near-exactly (the same result)
        exact &= two_dimensional_pixels(np.stack([fixed, moved]), NATIVE_WINDOW, _filtered).all(axis=0, keepdims=True)
    if not exact.any():
        return 0.0, largest
    largest[box] = largest_regions(exact)[0]
    candidate_pixels = float(candidate.foreground.sum()) * abs(float(np.linalg.det(to_query[:2, :2])))
    smaller = max(min(float(query.foreground.sum()), candidate_pixels), query.foreground.size / 2)
    return min(float(largest.sum()) / smaller / NATIVE_SHARE, 1.0), largest


def _carried(image: np.ndarray, to_source: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``image`` resampled (bilinear, zeros outside) onto ``shape`` through ``to_source`` [3, 3], the map from the
    target's (row, col, 1) to the image's."""
    return ndimage.affine_transform(image, to_source[:2, :2], to_source[:2, 2], shape, order=1)


def _residual_shift(fixed: np.ndarray, moved: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The (row, col) translation [2] that puts ``moved`` onto ``fixed`` within ``region`` (the cross-correlation
    peak of both, less their means and tapered by the region blurred by NATIVE_TAPER, to 1 / NATIVE_SUBPIXEL pixel);
    zeros when it exceeds NATIVE_SHIFT pixels or the region is empty."""
    bounds = bounding_box(region)
    if bounds is None or bounds[2] - bounds[0] < 2 or bounds[3] - bounds[1] < 2:
        return np.zeros(2)
    box = np.s_[bounds[0] : bounds[2], bounds[1] : bounds[3]]
    taper = _filtered_in_box(region.astype(np.float32), NATIVE_TAPER, box)
    weight = max(float(taper.sum()), 1e-6)
    a, b = fixed[box], moved[box]
    a, b = (a - float((a * taper).sum()) / weight) * taper, (b - float((b * taper).sum()) / weight) * taper
    shift, _, _ = phase_cross_correlation(a, b, upsample_factor=NATIVE_SUBPIXEL, normalization=None)
    return np.zeros(2) if np.abs(shift).max() > NATIVE_SHIFT else np.asarray(shift, dtype=np.float64)


def _widened(bounds: tuple[int, int, int, int], margin: int, shape: tuple[int, ...]) -> tuple[slice, slice]:
    """The box ``bounds`` (row0, col0, row1, col1; ends exclusive) widened by ``margin`` pixels, cut to ``shape``."""
    (top, left, bottom, right), (rows, cols) = bounds, shape
    return np.s_[max(top - margin, 0) : min(bottom + margin, rows), max(left - margin, 0) : min(right + margin, cols)]


def _filtered_in_box(image: np.ndarray, sigma: float, box: tuple[slice, slice]) -> np.ndarray:
    """``ndimage.gaussian_filter(image, sigma)[box]``, filtering only the box and the filter's reach about it (the
    same values: each pixel sums the same neighbours in the same order)."""
    wide = _widened((box[0].start, box[1].start, box[0].stop, box[1].stop), gaussian_reach(sigma), image.shape)
    inner = tuple(slice(b.start - w.start, b.stop - w.start) for b, w in zip(box, wide))
    return ndimage.gaussian_filter(image[wide], sigma)[inner]


def _filtered(stack: np.ndarray, sigma: float) -> np.ndarray:
    """``ndimage.gaussian_filter`` of every image of a stack [..., rows, cols] (at a slice's own size, cheaper than
    :func:`separable.gaussian_smoothed`'s matrix products)."""
    return ndimage.gaussian_filter(stack, (0,) * (stack.ndim - 2) + (sigma, sigma))
