"""Generator-like edits that mix a slice with a second one: partial copies (a half, a quarter, a pasted region of
the slice over someone else's slice) and between-slice interpolation with the slice's neighbour (ranges in
:mod:`augment`).

Partial copies are ``family(slice01, rng, other) -> (image, parameters, mask)``: the output has the shape of
``slice01`` [h, w]; ``other`` (any shape) is resampled to it and fills everything outside the copied region;
``mask`` [h, w] bool is True exactly on the output pixels taken from ``slice01`` (query pixel coordinates). The
copied region is drawn among those that carry at least MIN_COPIED_SHARE of the slice's anatomy: a quadrant of empty
background copies nothing of the person (docs/method.md §7.32).
"""

from __future__ import annotations

import numpy as np

from .augment_geometry import Params, resample_to
from .preprocess import PreprocessSettings

HALVES = ("top", "bottom", "left", "right")
QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")
PASTE_SIDE = (0.3, 0.6)  # side of the pasted rectangle, as a fraction of each side of the slice
NEIGHBOUR_WEIGHT = (0.2, 0.5)  # weight t of the neighbour slice in (1 - t) · slice + t · neighbour
MIN_COPIED_SHARE = 0.1  # share of the slice's anatomy (unit intensity >= ANATOMY) a partial copy carries, at least
ANATOMY = PreprocessSettings().background_floor  # unit intensity from which a pixel is anatomy (the default floor)
MAX_DRAWS = 100  # pasted rectangles drawn at most; none carrying MIN_COPIED_SHARE: the one carrying the most is kept

Region = tuple[slice, slice, Params]  # rows, columns and parameters of a region of a slice


def _anatomy(slice01: np.ndarray) -> np.ndarray:
    """bool [h, w]: the slice's anatomy (unit intensity >= ANATOMY)."""
    return np.asarray(slice01) >= ANATOMY


def _carried(anatomy: np.ndarray, region: Region) -> float:
    """The share of a slice's anatomy (:func:`_anatomy`) inside the region."""
    return float(anatomy[region[0], region[1]].sum() / max(int(anatomy.sum()), 1))


def _one_carrying_anatomy(slice01: np.ndarray, rng: np.random.Generator, regions: list[Region]) -> Region:
    """One of the regions at random among those carrying MIN_COPIED_SHARE of the slice's anatomy (when none does,
    the one carrying the most)."""
    anatomy = _anatomy(slice01)
    shares = np.array([_carried(anatomy, region) for region in regions])
    allowed = np.flatnonzero(shares >= MIN_COPIED_SHARE)
    return regions[int(rng.choice(allowed)) if allowed.size else int(np.argmax(shares))]


def _host(slice01: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``other`` resampled to the shape of ``slice01`` (float32 [h, w])."""
    other = np.asarray(other, np.float32)
    return other.copy() if other.shape == slice01.shape else resample_to(other, slice01.shape)


def _copy_region(slice01: np.ndarray, other: np.ndarray, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
    """The host with ``slice01[rows, cols]`` put back in place, and the mask of that region."""
    x = np.asarray(slice01, np.float32)
    out, mask = _host(x, other), np.zeros(x.shape, dtype=bool)
    out[rows, cols] = x[rows, cols]
    mask[rows, cols] = True
    return out, mask


def half(slice01: np.ndarray, rng: np.random.Generator, other: np.ndarray) -> tuple[np.ndarray, Params, np.ndarray]:
    """One half of the slice (top, bottom, left or right, at random among those carrying MIN_COPIED_SHARE of its
    anatomy), the other half from ``other``."""
    h, w = np.shape(slice01)
    rows_of = {"top": slice(0, h // 2), "bottom": slice(h // 2, h)}
    cols_of = {"left": slice(0, w // 2), "right": slice(w // 2, w)}
    regions: list[Region] = [
        (rows_of.get(side, slice(0, h)), cols_of.get(side, slice(0, w)), {"half": side}) for side in HALVES
    ]
    rows, cols, params = _one_carrying_anatomy(slice01, rng, regions)
    out, mask = _copy_region(slice01, other, rows, cols)
    return out, params, mask


def quarter(slice01: np.ndarray, rng: np.random.Generator, other: np.ndarray) -> tuple[np.ndarray, Params, np.ndarray]:
    """One quadrant of the slice (at random among those carrying MIN_COPIED_SHARE of its anatomy), the other three
    from ``other``."""
    h, w = np.shape(slice01)
    halves = {"top": slice(0, h // 2), "bottom": slice(h // 2, h), "left": slice(0, w // 2), "right": slice(w // 2, w)}
    regions: list[Region] = []
    for quadrant in QUADRANTS:
        vertical, horizontal = quadrant.split("-")
        regions.append((halves[vertical], halves[horizontal], {"quadrant": quadrant}))
    rows, cols, params = _one_carrying_anatomy(slice01, rng, regions)
    out, mask = _copy_region(slice01, other, rows, cols)
    return out, params, mask


def paste(slice01: np.ndarray, rng: np.random.Generator, other: np.ndarray) -> tuple[np.ndarray, Params, np.ndarray]:
    """A rectangle of the slice (sides U[PASTE_SIDE] of the slice's, at a random place carrying MIN_COPIED_SHARE of
    its anatomy) pasted at another random place of ``other``."""
    x = np.asarray(slice01, np.float32)
    h, w = x.shape

    anatomy, best, most = _anatomy(x), None, -1.0
    for _ in range(MAX_DRAWS):
        fractions = rng.uniform(*PASTE_SIDE, size=2)
        ph, pw = max(1, int(round(fractions[0] * h))), max(1, int(round(fractions[1] * w)))
        top, left = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        params = {"side_h": float(fractions[0]), "side_w": float(fractions[1]), "src_top": float(top)}
        region = (slice(top, top + ph), slice(left, left + pw), params | {"src_left": float(left)})
        share = _carried(anatomy, region)
        if share > most:
            best, most = region, share
        if share >= MIN_COPIED_SHARE:
            break
    rows, cols, params = best
    ph, pw = rows.stop - rows.start, cols.stop - cols.start
    dst_top, dst_left = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    out, mask = _host(x, other), np.zeros(x.shape, dtype=bool)
    out[dst_top : dst_top + ph, dst_left : dst_left + pw] = x[rows, cols]
    mask[dst_top : dst_top + ph, dst_left : dst_left + pw] = True
    return out, params | {"dst_top": float(dst_top), "dst_left": float(dst_left)}, mask


def interpolate_neighbour(
    slice01: np.ndarray, rng: np.random.Generator, neighbour: np.ndarray
) -> tuple[np.ndarray, Params]:
    """(1 − t) · slice + t · neighbour, t ~ U[NEIGHBOUR_WEIGHT]: a slice between the slice and the next one of its
    volume (``neighbour`` has the slice's shape [h, w])."""
    weight = float(rng.uniform(*NEIGHBOUR_WEIGHT))
    x, n = np.asarray(slice01, np.float32), np.asarray(neighbour, np.float32)
    if n.shape != x.shape:
        raise ValueError(f"the neighbour slice has shape {n.shape}, the slice {x.shape}")
    return ((1 - weight) * x + weight * n).astype(np.float32), {"weight": weight}
