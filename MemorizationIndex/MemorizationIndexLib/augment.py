"""Benchmark conditions applied to [0, 1]-scaled 2D slices [h, w]: the paper's 8 and our generator-like families.

**Paper group** (Deo et al., arXiv 2602.13066), :data:`CONDITIONS`: ``clean``; ``noise01`` / ``noise02``:
additive Gaussian noise σ = 0.01 / 0.02, clipped to [0, 1]; ``intensity``: multiplication by U[0.9, 1.1];
``rot3`` / ``rot5``: rotation by U[-3°, 3°] / U[-5°, 5°] about the slice centre (bilinear interpolation,
nearest-edge padding); ``hflip`` / ``vflip``: every slice flipped (hflip reverses columns, vflip reverses rows).

**Generator group**, :data:`GENERATOR_CONDITIONS` (edits a generator plausibly leaves on a memorised slice; every
parameter is drawn per slice from the range given, never tuned on results):

- ``shift_fill``: translation by U[0.05, 0.20] of the field of view in a uniformly random direction, whole
  pixels, the emptied band zero-filled.
- ``shift_crop``: a crop window keeping U[0.75, 0.95] of each side at a uniformly random position (the content
  moves and the slice gets smaller; nothing is zero-filled).
- ``zoom_in`` / ``zoom_out``: scaling about the centre by U[1.1, 1.4] / U[0.6, 0.9] (bilinear; zero outside).
- ``stretch``: rows and columns scaled about the centre by factors drawn each on its own, log-uniform in
  [0.8, 1.25], and a shear (each row moved sideways by U[-0.15, 0.15] times its distance from the centre), as a
  generator trained on slices resized to another aspect ratio gives them back (bilinear; zero outside). Not in
  ``chain``.
- ``rot_large``: rotation by ±U[10°, 30°] (as the paper's rotations: bilinear, nearest-edge padding).
- ``rot90``: rotation by 90°, 180° or 270° (equal odds). ``transpose``: ``x.T`` or the anti-diagonal
  transpose ``x[::-1, ::-1].T`` (equal odds); with the flips these complete the 8 axis-aligned orientations.
- ``elastic``: a smooth random displacement field (normal values on a 6×6 lattice, cubic) scaled so that its
  largest displacement is U[0.02, 0.05] of the shorter side.
- ``rician``: |x + n₁ + i·n₂|, n ~ N(0, σ²), σ ~ U[0.05, 0.15], clipped to [0, 1].
- ``bias``: multiplication by exp(a · g), g a smooth field in [-1, 1] (4×4 lattice, cubic), a ~ U[0.2, 0.6],
  divided by the maximum when it exceeds 1.
- ``gamma``: x ** γ, log γ ~ U[log 0.5, log 2]. ``blur``: Gaussian blur, σ ~ U[1, 3] slice pixels.
- ``lowres``: down-sampling by f ~ U[2, 4] per axis (Gaussian anti-aliasing σ = (f − 1)/2) and back up (bilinear).
- ``interp``: (1 − t) · slice + t · neighbour, t ~ U[0.2, 0.5], the neighbour the next or previous slice of the
  same volume (equal odds where both exist).
- ``half`` / ``quarter``: one half (top, bottom, left or right) / one quadrant of the slice, the rest from
  another person's slice resampled to its shape. ``paste``: a rectangle of the slice with sides U[0.3, 0.6] of
  the slice's, from a random place, pasted at another random place of another person's slice. The copied region is
  drawn among those carrying at least a tenth of the slice's anatomy (unit intensity ≥ 0.1): an empty quadrant
  copies nothing of the person. These three keep the mask of the copied pixels (:attr:`Augmented.copy_mask`, query
  pixel coordinates).
- ``chain``: 3 distinct families drawn from :data:`CHAIN_FAMILIES`, in random order, each with its own range.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import augment_geometry as geometry
from . import augment_intensity as intensity
from .augment_geometry import Params
from .augment_partial import half, interpolate_neighbour, paste, quarter
from .transforms import flip_slice, rotate

CONDITIONS: tuple[str, ...] = ("clean", "noise01", "noise02", "intensity", "rot3", "rot5", "hflip", "vflip")
NOISE_SIGMA = {"noise01": 0.01, "noise02": 0.02}
ROTATION_DEGREES = {"rot3": 3.0, "rot5": 5.0}
INTENSITY_RANGE = (0.9, 1.1)

SingleFamily = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, Params]]
SINGLE_SLICE_FAMILIES: dict[str, SingleFamily] = {
    "shift_fill": geometry.shift_fill,
    "shift_crop": geometry.shift_crop,
    "zoom_in": geometry.zoom_in,
    "zoom_out": geometry.zoom_out,
    "stretch": geometry.stretch,
    "rot_large": geometry.rotate_large,
    "rot90": geometry.rotate90,
    "transpose": geometry.transpose,
    "elastic": geometry.elastic,
    "rician": intensity.rician,
    "bias": intensity.bias_field,
    "gamma": intensity.gamma,
    "blur": intensity.blur,
    "lowres": intensity.resolution_loss,
}
PARTIAL_COPIES = {"half": half, "quarter": quarter, "paste": paste}
CHAIN_FAMILIES: tuple[str, ...] = (
    "shift_fill",
    "zoom_in",
    "zoom_out",
    "rot_large",
    "elastic",
    "rician",
    "bias",
    "gamma",
    "blur",
    "lowres",
)
CHAIN_LENGTH = 3
GENERATOR_CONDITIONS: tuple[str, ...] = (*SINGLE_SLICE_FAMILIES, "interp", *PARTIAL_COPIES, "chain")
ALL_CONDITIONS: tuple[str, ...] = CONDITIONS + GENERATOR_CONDITIONS


@dataclass
class Augmented:
    """One augmented slice: ``image`` float32 [h', w'] in [0, 1] (the shape may change: crops, transposes),
    the drawn ``parameters``, and for partial copies ``copy_mask`` bool [h', w'] (True where the pixel was taken
    from the input slice)."""

    image: np.ndarray
    parameters: Params
    copy_mask: np.ndarray | None = None


def augment_slice(slice01: np.ndarray, condition: str, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Apply the paper's ``condition`` to one [0, 1] slice; returns the slice and its random parameter.

    The parameter is the noise σ, the intensity factor or the rotation angle in degrees
    (0 for clean and the flips).
    """
    x = np.asarray(slice01, dtype=np.float32)
    if condition == "clean":
        return x.copy(), 0.0
    if condition in NOISE_SIGMA:
        sigma = NOISE_SIGMA[condition]
        return np.clip(x + rng.normal(0.0, sigma, size=x.shape).astype(np.float32), 0.0, 1.0), sigma
    if condition == "intensity":
        factor = float(rng.uniform(*INTENSITY_RANGE))
        return x * np.float32(factor), factor
    if condition in ROTATION_DEGREES:
        limit = ROTATION_DEGREES[condition]
        angle = float(rng.uniform(-limit, limit))
        return rotate(x, angle), angle
    if condition in ("hflip", "vflip"):
        return np.ascontiguousarray(flip_slice(x, condition)), 0.0
    raise ValueError(f"unknown condition {condition!r}; choose from {', '.join(CONDITIONS)}")


def chain(slice01: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Params]:
    """:data:`CHAIN_LENGTH` distinct families of :data:`CHAIN_FAMILIES` applied one after another (random order);
    parameters are prefixed with their family's name."""
    picked = [CHAIN_FAMILIES[i] for i in rng.permutation(len(CHAIN_FAMILIES))[:CHAIN_LENGTH]]
    out, params = np.asarray(slice01, np.float32), {"families": "+".join(picked)}
    for name in picked:
        out, step = SINGLE_SLICE_FAMILIES[name](out, rng)
        params.update({f"{name}.{key}": value for key, value in step.items()})
    return out, params


def augment_condition(
    slice01: np.ndarray,
    condition: str,
    rng: np.random.Generator,
    *,
    other: np.ndarray | None = None,
    neighbour: np.ndarray | None = None,
) -> Augmented:
    """Apply any condition of either group to one [0, 1] slice [h, w].

    ``other`` (another person's slice, any shape) is needed by ``half``, ``quarter`` and ``paste``;
    ``neighbour`` (the adjacent slice of the same volume, [h, w]) by ``interp``.
    """
    if condition in CONDITIONS:
        image, value = augment_slice(slice01, condition, rng)
        return Augmented(image, {"parameter": value})
    if condition in SINGLE_SLICE_FAMILIES or condition == "chain":
        family = SINGLE_SLICE_FAMILIES.get(condition, chain)
        return Augmented(*family(slice01, rng))
    if condition in PARTIAL_COPIES:
        if other is None:
            raise ValueError(f"condition {condition!r} needs another person's slice (other=...)")
        image, params, mask = PARTIAL_COPIES[condition](slice01, rng, other)
        return Augmented(image, params, mask)
    if condition == "interp":
        if neighbour is None:
            raise ValueError("condition 'interp' needs the neighbouring slice (neighbour=...)")
        return Augmented(*interpolate_neighbour(slice01, rng, neighbour))
    raise ValueError(f"unknown condition {condition!r}; choose from {', '.join(ALL_CONDITIONS)}")
