"""A slice on the verification's working grid, and the maps between the slice's pixels and the grid's.

A slice is robust-scaled, smoothed when it is noisy (by its estimated white-noise level), cropped to the rows and
columns that hold its foreground, centred in a square and resized to GRID × GRID, its foreground rank-equalised
(:class:`Grid`); its log-polar spectrum is made with it (``fourier``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage
from skimage.exposure import equalize_hist
from skimage.transform import resize

from .fourier import SPECTRUM_GRID, log_polar_maps, rfft2, transposed_rows, whitened
from .preprocess import PreprocessSettings, foreground_rows, robust_window, scale_unit, scaled_foreground
from .separable import gaussian_smoothed, resized

GRID = 64  # side of the working grid in pixels (alignment and scoring)
NOISE_TARGET = 0.0125  # white-noise level (unit intensities) a noisy slice's scored image is smoothed down to
CROP_NOISE_TARGET = 0.005  # the same for the foreground and crop: the background must fall below the floor
DENOISING = "after the robust scaling, which clips the tails"  # when a noisy slice is smoothed (method.md §7.65)
MAX_DENOISE_SIGMA = 4.0  # slice pixels: the widest smoothing a noisy slice gets
# White-noise level below which a slice is not smoothed at all (σ < 0.5 in :func:`_denoised` for the crop's target;
# NOISE_TARGET is higher), less 1% for rounding: a slice shown to lie below it needs no exact noise level.
_QUIET = 0.99 * 0.5 * 2.0 * math.sqrt(math.pi) * CROP_NOISE_TARGET
GRID_BATCH = 64  # slices whose log-polar spectra are made together (:func:`to_grids`)


@dataclass(frozen=True)
class Grid:
    """A slice cropped to its foreground, centred in a square and resized to the working grid.

    image: float32 [GRID, GRID], foreground rank-equalised into (0, 1], background 0.
    mask: bool [GRID, GRID], the foreground.
    log_polar: float32 [180, SPECTRUM_GRID - SPECTRUM_GRID // 8] log-polar log-magnitude spectrum of
        the slice (:func:`fourier.log_polar_maps`); the transposed slice's is a permutation of its rows (``polar``).
    polar_spectrum: complex64 [180, columns // 2 + 1] the whitened half spectrum of ``log_polar``
        (what phase correlation of rotation and scale needs, made once per grid).
    foreground: bool [rows, cols], the slice's own foreground (after the background floor).
    corner: (row, col) of the square's first pixel in slice pixels; side: its side in slice pixels.
    roughness: :func:`roughness` of ``image`` (smaller = smoother).
    unit: float16 [rows, cols], the slice robust-scaled to [0, 1] at its own resolution
    (:func:`native_check.native_part`; half
        precision, steps of at most 2⁻¹¹, halves what a cached grid holds).
    """

    image: np.ndarray
    mask: np.ndarray
    log_polar: np.ndarray
    polar_spectrum: np.ndarray
    foreground: np.ndarray
    corner: tuple[int, int]
    side: int
    roughness: float
    unit: np.ndarray

    @property
    def polar(self) -> np.ndarray:
        """float32 [2, 180, columns]: the log-polar spectra of the slice as is and transposed."""
        as_is = self.log_polar.astype(np.float32)
        return np.stack([as_is, as_is[transposed_rows()]])


def to_grid(slice2d: np.ndarray, settings: PreprocessSettings = PreprocessSettings()) -> Grid:
    """Robust-scale a raw 2D slice [rows, cols], crop it to the rows and columns holding foreground
    (so that the anatomy, not the field of view, fills the grid), centre it in a square and resize.
    A noisy slice is smoothed (:func:`_denoised`) before it is cropped: strongly for its foreground and crop, mildly
    for the image that is scored. The smoothing follows its robust scaling, which clips its tails, so that a slice
    read raw from its volume and the same slice exported clipped to its window get one grid (method.md §7.65)."""
    return to_grids([slice2d], settings)[0]


def to_grids(
    slices: Sequence[np.ndarray],
    settings: PreprocessSettings = PreprocessSettings(),
    squares: Sequence[tuple[tuple[int, int], int]] | None = None,
) -> list[Grid]:
    """:func:`to_grid` of every slice; the log-polar spectra of GRID_BATCH slices at a time are made
    together, their band-pass one matrix product per axis (under load, one threaded BLAS call per
    slice costs far more than the product itself). ``squares``: per slice, the square (corner (row, col), side;
    slice pixels, reaching past the slice where it must) that its grid covers instead of its foreground's."""
    grids = []
    wanted = [None] * len(slices) if squares is None else list(squares)
    for start in range(0, len(slices), GRID_BATCH):
        stop = start + GRID_BATCH
        parts = [_grid_parts(s, settings, square) for s, square in zip(slices[start:stop], wanted[start:stop])]
        polar = log_polar_maps(np.stack([fine for *_, fine in parts])).astype(np.float32)
        spectra = whitened(rfft2(polar))
        grids += [
            Grid(image, mask, *maps, *place[:3], roughness(image, mask), place[3])
            for (image, mask, place, _), *maps in zip(parts, polar, spectra)
        ]
    return grids


def roughness(image: np.ndarray, mask: np.ndarray) -> float:
    """How rough a grid image is: the variance of its neighbour differences (both axes, both pixels in
    ``mask``) over its variance in ``mask``. Blur, lost resolution and denoised noise lower it; the
    verified null is matched to a query by it (``verified_null.VerifiedNull``). nan for a mask too
    small to say. (Weighted sums rather than boolean selections: this runs for every grid.)"""
    weight = mask.astype(np.float32)
    down, across = weight[1:] * weight[:-1], weight[:, 1:] * weight[:, :-1]
    rows, cols = image[1:] - image[:-1], image[:, 1:] - image[:, :-1]
    steps, pixels = float(down.sum() + across.sum()), float(weight.sum())
    if steps < 2 or pixels < 2:
        return math.nan
    step_mean = (float(np.vdot(rows, down)) + float(np.vdot(cols, across))) / steps
    step_var = (float(np.vdot(rows * rows, down)) + float(np.vdot(cols * cols, across))) / steps - step_mean**2
    mean = float(np.vdot(image, weight)) / pixels
    spread = float(np.vdot(image * image, weight)) / pixels - mean**2
    return step_var / spread if spread > 0 else math.nan


def _grid_parts(
    slice2d: np.ndarray, settings: PreprocessSettings, square: tuple[tuple[int, int], int] | None = None
) -> tuple:
    """A slice's grid image and mask [GRID, GRID], (foreground, corner, side, robust-scaled slice) and the crop resized
    to the spectrum grid [SPECTRUM_GRID, SPECTRUM_GRID] (see :func:`to_grid`); the grid covers ``square`` (corner,
    side) when given, else the foreground's rows and columns centred in a square."""
    raw = np.asarray(slice2d, dtype=np.float32)
    window = robust_window(raw, settings)
    scaled = scale_unit(raw, settings, window)
    noise = _noise_of(scaled) if steps_reaching(scaled, _QUIET) >= 0.5 else 0.0  # below _QUIET its value is unused
    smoothed = _denoised(scaled, noise, CROP_NOISE_TARGET)  # DENOISING
    unit = scaled_foreground(raw, settings, window) if smoothed is scaled else scaled_foreground(smoothed, settings)
    foreground = unit > 0
    rows, cols = foreground_rows(foreground) if square is None else _covered(square, unit.shape)
    h, w = rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0]
    if square is None:
        side = int(max(h, w))
        top, left = (side - h) // 2, (side - w) // 2
    else:
        side, top, left = square[1], rows[0] - square[0][0], cols[0] - square[0][1]
    crop = unit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    small = resized(crop, side, (top, left), GRID)
    mask = gaussian_smoothed(small, 1.0) > 0.05
    if noise > NOISE_TARGET:
        unit = scaled_foreground(_denoised(scaled, noise, NOISE_TARGET), settings)
        crop = unit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        small = resized(crop, side, (top, left), GRID)
    image = np.zeros_like(small)
    if mask.any():
        image[mask] = equalize_hist(small[mask], nbins=64) * 0.99 + 0.01
    place = (foreground, (int(rows[0] - top), int(cols[0] - left)), side, scaled.astype(np.float16))
    return image, mask, place, resized(crop, side, (top, left), SPECTRUM_GRID)


def _covered(square: tuple[tuple[int, int], int], shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The rows and columns of a slice of ``shape`` inside ``square`` (corner, side; it must overlap the slice)."""
    (top, left), side = square
    rows = np.arange(max(top, 0), min(top + side, shape[0]))
    cols = np.arange(max(left, 0), min(left + side, shape[1]))
    if len(rows) == 0 or len(cols) == 0:
        raise ValueError(f"the square {square} lies outside the slice of shape {shape}")
    return rows, cols


def noise_level(slice2d: np.ndarray, settings: PreprocessSettings = PreprocessSettings()) -> float:
    """Robust white-noise standard deviation of a slice in unit intensities (its robust window = 1): the
    median absolute difference of neighbouring pixels (both axes, so a transposed slice reads the same)
    / (0.6745 √2). Anatomy moves few neighbour
    differences, so the median reads the noise; a clean slice with a zero background reads ≈ 0."""
    return _noise_of(scale_unit(slice2d, settings))


def steps_reaching(unit: np.ndarray, level: float) -> float:
    """Share of a slice's neighbour differences (both axes; the slice scaled to its robust window) at
    least as large as the median step of white noise of ``level``. Below one half, its
    :func:`noise_level` is below ``level``; counting is several times cheaper than the median."""
    step = np.float32(level * 0.6745 * math.sqrt(2.0))
    rows, cols = np.abs(np.diff(unit, axis=0)), np.abs(np.diff(unit, axis=1))
    total = rows.size + cols.size
    return (np.count_nonzero(rows >= step) + np.count_nonzero(cols >= step)) / total if total else 0.0


def _noise_of(unit: np.ndarray) -> float:
    """:func:`noise_level` of a slice already scaled to its robust window."""
    rows, cols = unit.shape
    steps = np.empty((rows - 1) * cols + rows * (cols - 1), dtype=unit.dtype)
    if steps.size == 0:
        return 0.0
    np.subtract(unit[1:], unit[:-1], out=steps[: (rows - 1) * cols].reshape(rows - 1, cols))
    np.subtract(unit[:, 1:], unit[:, :-1], out=steps[(rows - 1) * cols :].reshape(rows, cols - 1))
    return float(_median_magnitude(steps) / (0.6745 * math.sqrt(2.0)))


def _median_magnitude(values: np.ndarray) -> np.floating:
    """``np.median(np.abs(values))`` of a float32 array (overwritten), as a float32 scalar. Zero steps (background) are
    often most of them, so only the non-zero magnitudes are partitioned, and only when the median
    is not zero; a NaN leaves it to ``np.median``."""
    magnitudes = np.abs(values, out=values)
    positive = magnitudes[magnitudes > 0]
    zeros = np.count_nonzero(magnitudes == 0)
    if zeros + positive.size != magnitudes.size:
        return np.median(magnitudes, overwrite_input=True)
    middle = sorted({(magnitudes.size - 1) // 2, magnitudes.size // 2})  # the middle order statistics
    above = [rank - zeros for rank in middle if rank >= zeros]
    chosen = np.partition(positive, above)[above] if above else np.zeros(0, np.float32)
    values_at = np.concatenate([np.zeros(len(middle) - len(above), np.float32), chosen.astype(np.float32)])
    return values_at[0] if len(values_at) == 1 else (values_at[0] + values_at[1]) / np.float32(2)


def _denoised(slice2d: np.ndarray, noise: float, target: float) -> np.ndarray:
    """The slice smoothed by the Gaussian that brings white noise of level ``noise`` down to ``target``
    (a Gaussian of σ pixels divides it by 2√π σ), σ at most MAX_DENOISE_SIGMA; unchanged for σ < 0.5."""
    sigma = min(noise / (2.0 * math.sqrt(math.pi) * target), MAX_DENOISE_SIGMA)
    return ndimage.gaussian_filter(slice2d, sigma) if sigma >= 0.5 else slice2d


def grid_places(places: np.ndarray, query: Grid, candidate: Grid) -> np.ndarray:
    """Tile centres ``places`` [4] (row, col of the query's, then of the candidate's), given as fractions of each
    slice's whole field of view centred in a square (``preprocess.framed``), as fractions of the two grids'
    squares (which :func:`verification.verify_batch`'s ``places`` are)."""
    out = np.asarray(places, dtype=np.float64).copy()
    for start, grid in ((0, query), (2, candidate)):
        shape = np.array(grid.foreground.shape, dtype=np.float64)
        side = shape.max()
        corner = -((side - shape) // 2)  # the whole square's first pixel, in slice pixels (preprocess.to_square)
        out[start : start + 2] = (corner + out[start : start + 2] * side - np.array(grid.corner)) / grid.side
    return out


def regrid_places(places: np.ndarray, old: Grid, new: Grid) -> np.ndarray:
    """Tile centres ``places`` [4] whose query half is a fraction of the ``old`` query grid's square, with that half
    as a fraction of the ``new`` grid's square (of the same slice); the candidate's half is kept."""
    out = np.asarray(places, dtype=np.float64).copy()
    out[:2] = (np.array(old.corner) + out[:2] * old.side - np.array(new.corner)) / new.side
    return out


def grid_of(grid: Grid) -> np.ndarray:
    """[3, 3] map from slice pixels (column, row, 1) to grid pixels (resize maps pixel centres)."""
    k = GRID / grid.side
    (top, left) = grid.corner
    return np.array([[k, 0, (0.5 - left) * k - 0.5], [0, k, (0.5 - top) * k - 0.5], [0, 0, 1]])


@lru_cache(maxsize=256)
def _nearest_rows(side: int) -> np.ndarray:
    """int [side]: the grid row (or column) each of ``side`` slice pixels takes in a nearest-neighbour
    resize from GRID (skimage's ``resize(order=0)`` is separable: resizing the row numbers gives it)."""
    ramp = np.arange(GRID, dtype=np.float64)[:, None]
    return resize(ramp, (side, 1), order=0, anti_aliasing=False)[:, 0].astype(np.intp)


def to_slice(grid_mask: np.ndarray, query: Grid) -> np.ndarray:
    """A grid mask carried back to the query slice's own pixels: bool [rows, cols]."""
    nearest = _nearest_rows(query.side)
    square = grid_mask.take(nearest, axis=0).take(nearest, axis=1)
    out = np.zeros_like(query.foreground)
    (top, left), (h, w) = query.corner, out.shape
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + query.side, h), min(left + query.side, w)
    out[r0:r1, c0:c1] = square[r0 - top : r1 - top, c0 - left : c1 - left]
    return out & query.foreground
