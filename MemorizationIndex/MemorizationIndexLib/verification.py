"""Pairwise verification: does a query slice reproduce (part of) a candidate reference slice?

The global search proposes candidates; each is aligned to the query on a coarse square grid and
the aligned overlap is scored. The alignment covers an optional transpose followed by a rotation of
any angle (every flip and 90° turn is one of these), a scale and a translation: rotation and scale
come from the log-polar magnitude spectra (Fourier–Mellin: phase correlation of log-polar maps) and,
as further hypotheses, from the two foregrounds' principal axes and radii of gyration; a stretch or shear
(one linear map of any kind) from the two images' second moments, refined by the affine fit of their optical
flow; translation from phase correlation, refined to a tenth of a grid pixel for the hypotheses that are scored (the
in-place one taken exactly in place when phase correlation puts it within a pixel of there). The
score is (mainly) the share of the smaller foreground in which the local correlation of
rank-equalised intensities (Gaussian windows) is high: rank equalisation
removes monotone intensity changes, local windows tolerate bias fields, and pixels that are
background in either slice (zero-filled bands, empty margins) never count as agreement. Each
agreeing pixel is weighted by how far its correlation rises above the agreement level (exact copies
≈ 1, another person's similar anatomy ≈ 0.3). The largest agreeing region is the copy mask. A region
reproduced near-exactly (local correlation ≥ EXACT, where the structure is not one straight edge, which
agrees with any parallel edge) scores by its own share of the foreground, so that a copied quarter or
pasted patch is not outscored by a whole slice of loose look-alike anatomy; a pair that agrees at all is
also checked for such a region at the query's own resolution, with the candidate's own pixels. A noisy
slice is smoothed by its estimated noise level before it is cropped and put on the grid.

Many queries are verified against their candidates at once (:func:`verify_batch`), in chunks of
CHUNK_PAIRS query-candidate pairs: the phase correlations are batched FFTs, the warps one
``grid_sample`` call and the scoring of the chosen hypotheses one stack (local correlations,
closing, largest regions); the resizes, band-pass and Gaussian windows are linear maps applied as
(cached) matrices, equal to the scikit-image and SciPy calls they replace up to float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import torch
from scipy import fft, ndimage, sparse
from skimage.exposure import equalize_hist
from skimage.registration import phase_cross_correlation
from skimage.transform import resize

from .centroid_sweep import swept_turns, turned_back
from .encoders.tiles import FINE_STEP
from .optical_flow import batched_ilk
from .preprocess import PreprocessSettings, robust_window, scale_unit, scaled_foreground
from .separable import separable

Smoother = Callable[[np.ndarray, float], np.ndarray]  # (image stack, sigma) -> the stack filtered by that Gaussian

GRID = 64  # side of the working grid in pixels (alignment and scoring)
SPECTRUM_GRID = 128  # side of the grid whose spectrum gives rotation and scale
WINDOW_SIGMA = 2.0  # local-correlation window (grid pixels)
AGREEMENT = 0.7  # local correlation above which a pixel agrees
EXACT = 0.95  # local correlation from which a pixel is reproduced near-exactly (copied, not look-alike anatomy)
EXACT_SHARE = 0.3  # share of the smaller foreground that, reproduced near-exactly, scores 1 (method.md §7.16)
# Grid pixels a near-exact pixel lies inside the overlap: its correlation window is cut at the overlap's edge, where
# two people's outlines agree by chance. One pixel, not the window's reach (1.5 WINDOW_SIGMA): straight outlines are
# left out by EXACT_COHERENCE, and a copied region at the field's edge kept too little of itself (method.md §7.27).
EXACT_INSET = 1
EXACT_FLOOR = GRID * GRID // 2  # grid pixels: the smallest foreground a near-exact share is taken of (method.md §7.19)
# Structure-tensor coherence from which a pixel's neighbourhood is one straight edge: such windows correlate near 1
# with any parallel edge, whoever's it is, so they are not counted as reproduced near-exactly (method.md §7.22).
EXACT_COHERENCE = 0.9
SCALE_RANGE = (0.45, 2.2)  # scales outside are not proposed by the log-polar estimate (method.md §7.12, §7.36)
# the hypotheses of a pair that are scored (:func:`_scored_hypotheses`, :func:`_moved_shifts`, :func:`_seen_in_place`)
SCORED = (  # the hypotheses scored per pair (an index's verified null records them: method.md §7.45)
    "best-ranked, in place, in place moved where the region tiles say, exactly in place where they say in place, "
    "in place at the phase correlation's strongest peak away from in place by its near-exact part at full resolution, "
    "in place at the peak near the region tiles' small move by its near-exact part at full resolution"
)
LOOSE_SHARE = "of the candidate's whole foreground at its scale"  # what loose agreement is a share of (_agreements)
_POLAR_ROWS = 360  # one row per degree; the magnitude spectrum repeats after 180 rows
_POLAR_INNER = SPECTRUM_GRID // 8  # log-polar columns of the lowest frequencies, left out
_MIN_VARIANCE = 1e-3  # local variance below this (flat tissue or background) carries no evidence
_BAND = (0.5, 6.0)  # difference-of-Gaussians band-pass of the spectrum grid (sigmas, pixels)
# per candidate: {as is, transposed} x {theta, theta + 180} of the log-polar estimate, {phi, phi + 180} of the
# principal axes (:func:`principal_axes`), the grid images' second moments matched and refined by their optical flow
# (:func:`_moment_maps`, :func:`_flow_refined`), the centroid sweep's turn (``centroid_sweep``), and in place
# (:func:`_in_place`)
_HYPOTHESES = 9
HYPOTHESES = (  # the hypotheses tried per pair (:func:`_hypotheses`)
    "log-polar, principal axes, second moments matched, centroid sweep, in place"
)
MOMENTS = _HYPOTHESES - 3  # the moment-matched linear map (anisotropic scale and shear)
SWEPT = _HYPOTHESES - 2  # the centroid sweep's hypothesis
IN_PLACE = _HYPOTHESES - 1  # the in-place hypothesis comes last
# The hypotheses sampled from the candidate; each of the others is the 180° turn of the one before it, which on the
# grid is the sampled image reversed along both axes (the grid centre is the turn's centre; :func:`_with_twins`).
_SAMPLED = np.array([0, 2, 4, MOMENTS, SWEPT, IN_PLACE])
_TWINS = np.array([1, 3, 5])
NOISE_TARGET = 0.0125  # white-noise level (unit intensities) a noisy slice's scored image is smoothed down to
CROP_NOISE_TARGET = 0.005  # the same for the foreground and crop: the background must fall below the floor
DENOISING = "after the robust scaling, which clips the tails"  # when a noisy slice is smoothed (method.md §7.65)
MAX_DENOISE_SIGMA = 4.0  # slice pixels: the widest smoothing a noisy slice gets
# White-noise level below which a slice is not smoothed at all (σ < 0.5 in :func:`_denoised` for the crop's target;
# NOISE_TARGET is higher), less 1% for rounding: a slice shown to lie below it needs no exact noise level.
_QUIET = 0.99 * 0.5 * 2.0 * math.sqrt(math.pi) * CROP_NOISE_TARGET
SUBPIXEL = 10  # the scored hypotheses' translations are refined to 1 / SUBPIXEL grid pixel (:func:`_refined_shifts`)
# Grid pixels about a moved region's place (the region search's two tiles, method.md §7.25) within which its
# in-place hypothesis takes its phase correlation's peak: one step of the fine tiles, the most two tiles on their
# lattices can be off the move they share
MOVED_SEARCH = GRID * FINE_STEP
# Grid pixels within which an in-place hypothesis's translation is in place: it is then put exactly there, and a
# move near the region tiles' that falls within it is not tried again (:func:`_moved_near`)
IN_PLACE_SNAP = 1.0
MOVED_WINDOW = GRID * FINE_STEP  # sigma (grid pixels) of the window about each of the two tiles they are compared in
# A pair whose best hypothesis scores at least BEND_GATE is also bent onto its query and scored again
# (``Verification.bent``): a generator's copy can be bent smoothly (an elastic warp, alone or stacked with a zoom, a
# turn or noise), which no similarity map undoes. The bend is the iterative Lucas-Kanade optical flow of the aligned
# candidate (BEND_WARPS warps; scikit-image's ``optical_flow_ilk``, run on all pairs at once: ``optical_flow``),
# averaged over BEND_SIGMA grid pixels (twice the correlation window: only bends smoother than the windows that score
# agreement are undone) and cut to BEND_MAX grid pixels (1/16 of the grid). Bending makes other people's anatomy agree
# more too, so the bent score is tested against the null's own bent scores, beside the score and its near-exact part
# (``verified_null.VerifiedNull``; docs/method.md §7.34).
BEND_GATE = 0.1
# A pair scoring at least NATIVE_GATE, or reproducing any grid pixel near-exactly, is also checked at the query slice's
# own resolution (:func:`native_part`, :func:`_checked_natively`): the grid sees a small pasted patch at a quarter of
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
BEND_SIGMA = 2.0 * WINDOW_SIGMA
BEND_MAX = 4.0
BEND_WARPS = 3
CHUNK_PAIRS = 64  # query-candidate pairs verified together (docs/performance.md: faster than 32, 48, 96 or 128)
GRID_BATCH = 64  # slices whose log-polar spectra are made together (:func:`to_grids`)


@dataclass(frozen=True)
class Grid:
    """A slice cropped to its foreground, centred in a square and resized to the working grid.

    image: float32 [GRID, GRID], foreground rank-equalised into (0, 1], background 0.
    mask: bool [GRID, GRID], the foreground.
    log_polar: float32 [180, SPECTRUM_GRID - SPECTRUM_GRID // 8] log-polar log-magnitude spectrum of
        the slice (:func:`_log_polar`); the transposed slice's is a permutation of its rows (``polar``).
    polar_spectrum: complex64 [180, columns // 2 + 1] the whitened half spectrum of ``log_polar``
        (what phase correlation of rotation and scale needs, made once per grid).
    foreground: bool [rows, cols], the slice's own foreground (after the background floor).
    corner: (row, col) of the square's first pixel in slice pixels; side: its side in slice pixels.
    roughness: :func:`roughness` of ``image`` (smaller = smoother).
    unit: float16 [rows, cols], the slice robust-scaled to [0, 1] at its own resolution (:func:`native_part`; half
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
        return np.stack([as_is, as_is[_transposed_rows()]])


@dataclass(frozen=True)
class Alignment:
    """How the candidate maps onto the query: transpose (if ``transposed``), then rotate by ``angle``
    degrees (as ``transforms.rotate``) and scale by ``scale``. ``matrix`` [3, 3] is the whole map
    from candidate to query slice pixels in homogeneous (column, row, 1) coordinates, crops,
    translation and grid resampling included."""

    transposed: bool
    angle: float
    scale: float
    matrix: np.ndarray


@dataclass(frozen=True)
class Verification:
    """One candidate verified against the query.

    score: share of the smaller foreground of the two aligned slices in which they agree, graded by how
        well, or its near-exact part (``reproduced``) when that is higher; in [0, 1].
    mask: bool [rows, cols] of the query: the copied region (empty when none).
    box: (row0, col0, row1, col1) of the mask in query pixels (ends exclusive), None when empty.
    reproduced: the share of the smaller foreground (at least EXACT_FLOOR grid pixels) reproduced near-exactly,
        over EXACT_SHARE, or at the slice's own resolution (:func:`native_part`) when that is higher (at most 1; the
        score's second part, which has a null of its own: ``verified_null.VerifiedNull``).
    bent: the higher of the score and the score of the aligned candidate bent onto the query (BEND_GATE), which has
        a null of its own too.
    on_grid: the score on the grid alone, before the near-exact part at the slice's own resolution (which reaches 1
        for two references that differ only in contrast, such as two echoes of one slice).
    likeness: the correlation of the query's grid with the aligned candidate's over the copied region (the grid's copy
        mask of the best-scoring grid hypothesis), times the share of that region both foregrounds cover; -1 where
        they cover under 3 pixels. Two references that differ only in
        contrast agree alike in small windows, but the source's intensities match the copy's best over the whole
        region: with ``on_grid`` it breaks ties of scores (``second_stage.verify_slices``).
    """

    score: float
    alignment: Alignment
    mask: np.ndarray
    box: tuple[int, int, int, int] | None
    reproduced: float = 0.0
    bent: float = 0.0
    on_grid: float = 0.0
    likeness: float = -1.0


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
        polar = _log_polar(np.stack([fine for *_, fine in parts])).astype(np.float32)
        spectra = _whitened(_rfft2(polar))
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
    rows, cols = _square_rows(foreground) if square is None else _covered(square, unit.shape)
    h, w = rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0]
    if square is None:
        side = int(max(h, w))
        top, left = (side - h) // 2, (side - w) // 2
    else:
        side, top, left = square[1], rows[0] - square[0][0], cols[0] - square[0][1]
    crop = unit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    small = _resized(crop, side, (top, left), GRID)
    mask = _smoothed(small, 1.0) > 0.05
    if noise > NOISE_TARGET:
        unit = scaled_foreground(_denoised(scaled, noise, NOISE_TARGET), settings)
        crop = unit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        small = _resized(crop, side, (top, left), GRID)
    image = np.zeros_like(small)
    if mask.any():
        image[mask] = equalize_hist(small[mask], nbins=64) * 0.99 + 0.01
    place = (foreground, (int(rows[0] - top), int(cols[0] - left)), side, scaled.astype(np.float16))
    return image, mask, place, _resized(crop, side, (top, left), SPECTRUM_GRID)


def _square_rows(foreground: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows and columns of a slice that hold foreground (all of them when fewer than two do)."""
    rows, cols = np.flatnonzero(foreground.mean(axis=1) >= 0.01), np.flatnonzero(foreground.mean(axis=0) >= 0.01)
    if len(rows) < 2 or len(cols) < 2:
        return np.arange(foreground.shape[0]), np.arange(foreground.shape[1])
    return rows, cols


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


def _mirrored(index: np.ndarray, size: int) -> np.ndarray:
    """Indices reflected into [0, size) about the edge pixels' centres (SciPy's ``mode="mirror"``)."""
    period = 2 * (size - 1)
    index = np.abs(index) % period
    return np.where(index > size - 1, period - index, index)


@lru_cache(maxsize=1024)
def _resize_matrix(side: int, size: int) -> sparse.csc_array:
    """[size, side] sparse matrix M of skimage's ``resize(order=1, anti_aliasing=True)`` along one
    axis, so that ``resize(square, (size, size))`` is ``M @ square @ M.T``: SciPy's Gaussian
    anti-aliasing (sigma (side / size - 1) / 2, radius round(4 sigma), ``mode="mirror"``) followed by
    linear interpolation at the pixel centres (``zoom(order=1, grid_mode=True, mode="mirror")``)."""
    sigma = max(0.0, (side / size - 1) / 2)
    offsets = np.arange(-_reach(sigma), _reach(sigma) + 1)
    kernel = np.exp(-0.5 * offsets**2 / max(sigma, 1e-12) ** 2)
    position = (np.arange(size) + 0.5) * side / size - 0.5
    low = np.floor(position).astype(int)
    rows, cols, weights = [], [], []
    for index, weight in ((low, 1.0 - (position - low)), (low + 1, position - low)):
        rows.append(np.repeat(np.arange(size), len(offsets)))
        cols.append(_mirrored(_mirrored(index, side)[:, None] + offsets[None, :], side).ravel())
        weights.append((weight[:, None] * kernel[None, :] / kernel.sum()).ravel())
    entries = (np.concatenate(weights).astype(np.float32), (np.concatenate(rows), np.concatenate(cols)))
    return sparse.csc_array(entries, shape=(size, side))  # repeated entries are summed


def _resized(crop: np.ndarray, side: int, corner: tuple[int, int], size: int) -> np.ndarray:
    """float32 [size, size]: the crop [h, w] placed at ``corner`` (row, col) of a zero square of
    ``side`` pixels, resized as skimage's ``resize(order=1, anti_aliasing=True)`` (the square is
    never built: only the matrix columns of the crop enter)."""
    matrix = _resize_matrix(side, size)
    (top, left), (h, w) = corner, crop.shape
    rows_done = _columns(matrix, top, top + h) @ crop  # [size, w]
    return np.ascontiguousarray((_columns(matrix, left, left + w) @ rows_done.T).T, dtype=np.float32)


def _columns(matrix: sparse.csc_array, start: int, stop: int) -> sparse.csc_array:
    """``matrix[:, start:stop]`` of a CSC matrix, its entries in the same order, without SciPy's
    index checks (a large share of a small product's time)."""
    first, last = matrix.indptr[start], matrix.indptr[stop]
    entries = (matrix.data[first:last], matrix.indices[first:last], matrix.indptr[start : stop + 1] - first)
    return sparse.csc_array(entries, shape=(matrix.shape[0], stop - start))


@lru_cache(maxsize=8)
def _gaussian_matrix(size: int, sigma: float, mode: str) -> np.ndarray:
    """float32 [size, size]: ``ndimage.gaussian_filter1d`` along one axis as a matrix (filtered identity)."""
    return ndimage.gaussian_filter1d(np.eye(size), sigma, axis=0, mode=mode).astype(np.float32)


def _smoothed(stack: np.ndarray, sigma: float, mode: str = "reflect") -> np.ndarray:
    """``ndimage.gaussian_filter(x, sigma, mode=mode)`` of every [n, m] image of a stack [..., n, m]
    at once (one batched matrix product per axis)."""
    rows, cols = stack.shape[-2:]
    return _gaussian_matrix(rows, sigma, mode) @ stack @ _gaussian_matrix(cols, sigma, mode).T


def _smoothed_together(stack: np.ndarray, sigma: float, mode: str) -> np.ndarray:
    """:func:`_smoothed` of a stack [n, rows, cols] as one matrix product per axis (the same sums as
    one product per image; fewer, larger BLAS calls)."""
    _, rows, cols = stack.shape
    return separable(stack, _gaussian_matrix(rows, sigma, mode), _gaussian_matrix(cols, sigma, mode))


@lru_cache(maxsize=1)
def _spectrum_tools() -> tuple[np.ndarray, sparse.csr_array]:
    """Hann window [SPECTRUM_GRID, SPECTRUM_GRID] and the log-polar sampling of the centred
    spectrum as a sparse matrix [180 * columns, half spectrum]: one row per degree, radii growing
    geometrically from 1 to SPECTRUM_GRID / 2 over SPECTRUM_GRID columns, bilinear (as
    ``ndimage.map_coordinates(order=1)``). The half spectrum is ``fft.rfftn(x, axes=(1, 0))``
    [SPECTRUM_GRID // 2 + 1, SPECTRUM_GRID]: the angles lie in [0°, 180°), i.e. in its rows."""
    centre = SPECTRUM_GRID // 2
    angles = np.deg2rad(np.arange(_POLAR_ROWS // 2) * 360.0 / _POLAR_ROWS)[:, None]
    radii = np.exp(np.arange(_POLAR_INNER, SPECTRUM_GRID) * math.log(centre) / SPECTRUM_GRID)[None, :]
    row, col = (centre + radii * np.sin(angles)).ravel(), (centre + radii * np.cos(angles)).ravel()
    row0, col0 = np.floor(row), np.floor(col)
    weights, columns = [], []
    for dr, dc in ((0, 0), (0, 1), (1, 0), (1, 1)):
        weights.append((1 - abs(row - row0 - dr)) * (1 - abs(col - col0 - dc)))
        frequency = (row0 + dr - centre).astype(int), (col0 + dc - centre).astype(int) % SPECTRUM_GRID
        columns.append(frequency[0] * SPECTRUM_GRID + frequency[1])
    points = np.tile(np.arange(row.size), 4)
    shape = (row.size, (centre + 1) * SPECTRUM_GRID)
    sampling = sparse.csr_array((np.concatenate(weights), (points, np.concatenate(columns))), shape=shape)
    # Imported here, on the first verification: skimage.filters loads scipy.signal (~0.7 s), which a process
    # that never verifies (an audit without reference pixels, the report) need not pay (docs/performance.md).
    from skimage.filters import window

    return window("hann", (SPECTRUM_GRID, SPECTRUM_GRID)).astype(np.float32), sampling


@lru_cache(maxsize=1)
def _transposed_rows() -> np.ndarray:
    """Row order that turns a log-polar map of a slice into that of the transposed slice: the
    transposed spectrum at angle a is the spectrum at 90° − a (modulo 180°, its period)."""
    rows = _POLAR_ROWS // 2
    return (_POLAR_ROWS // 4 - np.arange(rows)) % rows


def _log_polar(images: np.ndarray) -> np.ndarray:
    """Log-polar maps [n, 180, columns] (see :func:`_spectrum_tools`) of the log-magnitude spectra of
    band-passed (``difference_of_gaussians(image, 0.5, 6.0)``), Hann-windowed images [n, SPECTRUM_GRID,
    SPECTRUM_GRID]: rotating an image shifts its map along rows, scaling along columns, translating
    leaves it unchanged."""
    hann, sampling = _spectrum_tools()
    low, high = (_smoothed_together(images, sigma, "nearest") for sigma in _BAND)
    spectra = np.log1p(np.abs(fft.rfftn((low - high) * hann, axes=(2, 1))))
    return (sampling @ spectra.reshape(len(images), -1).T).T.reshape(len(images), _POLAR_ROWS // 2, -1)


def _rfft2(images: np.ndarray) -> np.ndarray:
    """Half spectra of a stack of real images [..., n, m] (torch's FFT: MKL on CPU, faster than
    NumPy's and SciPy's pocketfft at these sizes)."""
    return torch.fft.rfft2(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))).numpy()


def _irfft2(spectra: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Real images [..., *shape] from half spectra (the inverse of :func:`_rfft2`)."""
    return torch.fft.irfft2(torch.from_numpy(spectra), s=shape).numpy()


def _whitened(spectrum: np.ndarray) -> np.ndarray:
    """A spectrum divided by its magnitude (phase correlation's normalisation, applied to each factor
    of the cross-power spectrum instead of their product: the same up to rounding and saves a pass)."""
    return spectrum / np.maximum(np.abs(spectrum), 100 * np.finfo(np.float32).eps)


def _phase_peaks(cross: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """int [..., 2] (row, col) shifts registering each moving image onto its reference, given their
    cross-power spectra (the reference's whitened half spectrum times the moving one's conjugate,
    ``fft.rfft2``): the peak of the phase-normalised cross-correlation, wrapped to (-size / 2, size / 2],
    as skimage's ``phase_cross_correlation`` finds it."""
    correlation = np.abs(_irfft2(cross, shape))
    flat = correlation.reshape(*correlation.shape[:-2], -1).argmax(axis=-1)
    shifts = np.stack(np.unravel_index(flat, shape), axis=-1)
    size = np.asarray(shape)
    return np.where(shifts > size // 2, shifts - size, shifts)


@dataclass(frozen=True)
class _Pairs:
    """The query-candidate pairs of one chunk: ``query`` [P] each pair's query (index into the chunk's
    queries), ``candidate`` [P] its candidate (index into ``unique``, the chunk's distinct candidate
    grids, so that a grid shared by several queries is transformed once)."""

    query: np.ndarray
    candidate: np.ndarray
    unique: list[Grid]

    @classmethod
    def of(cls, candidates: Sequence[Sequence[Grid]]) -> _Pairs:
        """The pairs of queries [Q] with their candidate lists, in order."""
        position: dict[int, int] = {}
        unique: list[Grid] = []
        for grid in (grid for listed in candidates for grid in listed):
            if id(grid) not in position:
                position[id(grid)] = len(unique)
                unique.append(grid)
        query = np.repeat(np.arange(len(candidates)), [len(listed) for listed in candidates])
        candidate = np.array([position[id(grid)] for listed in candidates for grid in listed], dtype=np.intp)
        return cls(query, candidate, unique)


def _rotation_scales(queries: Sequence[Grid], pairs: _Pairs) -> tuple[np.ndarray, np.ndarray]:
    """Rotations (degrees, modulo 180) and image scales [P, 2] taking each pair's candidate, as is
    and transposed, onto its query. The transposed map's spectrum is the as-is one with its row
    frequencies negated and signs alternated (its rows are permuted by a -> 90 - a, half the period)."""
    spectra = np.stack([grid.polar_spectrum for grid in pairs.unique])  # [U, 180, columns // 2 + 1]
    rows = spectra.shape[1]
    flipped = spectra[:, (-np.arange(rows)) % rows] * np.where(np.arange(rows) % 2, -1, 1).astype(np.float32)[:, None]
    reference = np.stack([grid.polar_spectrum for grid in queries])
    moving = np.stack([spectra, flipped], axis=1)[pairs.candidate]  # [P, 2, 180, columns // 2 + 1]
    shifts = _phase_peaks(reference[pairs.query][:, None] * moving.conj(), pairs.unique[0].log_polar.shape)
    angles = shifts[..., 0] * 360.0 / _POLAR_ROWS
    # The spectrum scales inversely to the image.
    scales = np.exp(-shifts[..., 1] * math.log(SPECTRUM_GRID // 2) / SPECTRUM_GRID)
    return angles, scales


def _turns(angles: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """float64 [n, 2, 2]: the linear maps (column, row coordinates) that turn by ``angles`` degrees and scale by
    ``scales`` (the inverses of ``centroid_sweep.turned_back``)."""
    return np.linalg.inv(turned_back(angles, scales))


def _turn_and_scale(linear: np.ndarray) -> tuple[float, float]:
    """The turn (degrees, [0, 360)) and scale of a linear map [2, 2] (column, row coordinates) as an alignment
    reports them: its polar decomposition's rotation, and the square root of its area ratio."""
    angle = math.degrees(math.atan2(linear[1, 0] - linear[0, 1], linear[0, 0] + linear[1, 1])) % 360.0
    return angle, math.sqrt(abs(float(np.linalg.det(linear))))


def _transform(linear: np.ndarray, shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """[3, 3] grid-pixel map (column, row, 1) of the linear map ``linear`` [2, 2] about the centre, then
    shifting by ``shift`` (row, col)."""
    centre = (GRID - 1) / 2.0
    turn = np.eye(3)
    turn[:2, :2] = linear
    to_origin = np.array([[1.0, 0.0, -centre], [0.0, 1.0, -centre], [0.0, 0.0, 1.0]])
    back = np.array([[1.0, 0.0, centre + shift[1]], [0.0, 1.0, centre + shift[0]], [0.0, 0.0, 1.0]])
    return back @ turn @ to_origin


def _inverse_maps(transposed: np.ndarray, linear: np.ndarray, shifts: np.ndarray | None = None) -> torch.Tensor:
    """float32 [n, 2, 3] ``grid_sample`` maps (output grid to input, in its (column, row) coordinates
    normalised to [-1, 1] about the centre) of transposing (where ``transposed``), then the linear maps
    ``linear`` [n, 2, 2] (turns and scales, :func:`_turns`, or any other) about the grid centre, then moving by
    ``shifts`` [n, 2] (row, col; grid pixels, fractions allowed; none when None). The inverse map is affine; a
    transpose swaps its rows."""
    inverse = np.linalg.inv(linear)  # [n, 2, 2]: the linear map undone
    offset = np.zeros((len(inverse), 2))
    if shifts is not None:  # a shift of s pixels is 2 s / (GRID - 1) normalised; undone before the turn
        offset = -np.einsum("nij,nj->ni", inverse, np.asarray(shifts, dtype=np.float64)[:, ::-1] * 2.0 / (GRID - 1))
    theta = np.concatenate([inverse, offset[:, :, None]], axis=2)
    theta[transposed] = theta[transposed][:, ::-1]
    return torch.from_numpy(theta.astype(np.float32))


def _warped(images: np.ndarray, theta: torch.Tensor, per: int) -> tuple[np.ndarray, np.ndarray]:
    """Images [n, 2, GRID, GRID] (image and mask) each under its ``per`` maps (``theta`` [n * per, 2, 3],
    :func:`_inverse_maps`), bilinear with zeros outside (as skimage's ``warp(order=1)``): the moved images,
    float32 [n * per, GRID, GRID], and masks, bool [n * per, GRID, GRID] (the moved mask above one half)."""
    n = len(images)
    with torch.no_grad():
        # The maps of one image are stacked along the rows, so that image is sampled once. Each coordinate is
        # summed term by term (a batched product with an inner size of 3 costs several times more; same sums).
        columns, rows = (ramp[:, None] for ramp in _base_grid())
        maps = theta[:, None]  # [n * per, 1, 2 (x, y), 3]
        sampling = maps[..., 0] * columns + maps[..., 1] * rows + maps[..., 2]  # [n * per, GRID * GRID, 2]
        moved = torch.nn.functional.grid_sample(
            torch.from_numpy(images),
            sampling.reshape(n, per * GRID, GRID, 2),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=True,
        )
    both = moved.numpy().reshape(n, 2, per, GRID, GRID)
    return both[:, 0].reshape(-1, GRID, GRID), both[:, 1].reshape(-1, GRID, GRID) > 0.5


@lru_cache(maxsize=1)
def _base_grid() -> tuple[torch.Tensor, torch.Tensor]:
    """[GRID * GRID] column and row of every grid pixel (raster order), normalised to [-1, 1]: with the
    affine maps [n, 2, 3], the sampling grid of ``affine_grid(theta, align_corners=True)``."""
    ramp = torch.linspace(-1.0, 1.0, GRID)
    return ramp[None, :].expand(GRID, GRID).reshape(-1), ramp[:, None].expand(GRID, GRID).reshape(-1)


def _shifted(stack: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Each image of a stack [n, GRID, GRID] moved by its integer (row, col) shift [n, 2], zeros (False)
    filling what comes in (``ndimage.shift(order=0)``)."""
    out = np.zeros_like(stack)
    for image, moved, (r, c) in zip(stack, out, shifts):
        target = np.s_[..., max(r, 0) : GRID + min(r, 0), max(c, 0) : GRID + min(c, 0)]
        moved[target] = image[..., max(-r, 0) : GRID - max(r, 0), max(-c, 0) : GRID - max(c, 0)]
    return out


def local_correlation(
    a: np.ndarray, b: np.ndarray, weight: np.ndarray, sigma: float = WINDOW_SIGMA, smooth: Smoother | None = None
) -> np.ndarray:
    """Gaussian-windowed correlation of two [..., n, m] images over the pixels where ``weight`` is set.

    Windows are normalised by the weight they hold, so pixels outside ``weight`` never contribute;
    where either image is locally flat the correlation is 0 (no evidence). ``smooth``: the Gaussian filter of an
    image stack (:func:`_smoothed` when None, for grids; :func:`_filtered` for slices at their own size)."""
    w = weight.astype(np.float32)
    products = np.empty((6, *w.shape), dtype=np.float32)  # w, a w, b w, a² w, b² w, a b w
    products[0] = w
    for out, (x, y) in zip(products[1:], ((a, w), (b, w), (a, a), (b, b), (a, b))):
        np.multiply(x, y, out=out)
    products[3:] *= w
    sums = (smooth or _smoothed)(products, sigma)
    ma, mb, maa, mbb, mab = sums[1:] / np.maximum(sums[0], 1e-6)
    va, vb = maa - ma * ma, mbb - mb * mb
    cov = mab - ma * mb
    informative = (va > _MIN_VARIANCE) & (vb > _MIN_VARIANCE) & weight
    # Times the boolean rather than np.where, which costs ten times more on such masks; the same values.
    return cov / np.sqrt(np.maximum(va * vb, 1e-12)) * informative


def _global_correlations(image: np.ndarray, mask: np.ndarray, moved: np.ndarray, moved_mask: np.ndarray) -> np.ndarray:
    """[n] Pearson correlation of each aligned image [n, GRID, GRID] with its query's (``image``,
    ``mask`` [n, GRID, GRID]) over their overlap, weighted by the overlap's share of the query
    foreground (ranks hypotheses cheaply); -1 for overlaps under 3 pixels, 0 for a constant overlap."""
    n = len(moved)
    overlap = (mask & moved_mask).reshape(n, -1)
    q, m = image.reshape(n, -1) * overlap, moved.reshape(n, -1) * overlap  # zero outside the overlap
    count = overlap.sum(axis=1).astype(np.float64)
    size = np.maximum(count, 1.0)
    # Sums of at most GRID² values in (0, 1] in float32 (relative error about 1e-6), the moments in float64.
    sum_q, sum_m = q.sum(axis=1, dtype=np.float64), m.sum(axis=1, dtype=np.float64)
    qq, mm, mq = (np.einsum("ij,ij->i", x, y).astype(np.float64) for x, y in ((q, q), (m, m), (m, q)))
    cov = mq - sum_q * sum_m / size
    var = (qq - sum_q * sum_q / size) * (mm - sum_m * sum_m / size)
    r = np.where(var > 0, cov / np.sqrt(np.maximum(var, 1e-300)), 0.0)  # a constant overlap has no correlation
    share = count / np.maximum(mask.reshape(n, -1).sum(axis=1), 1)
    return np.where(count < 3, -1.0, np.clip(r, -1.0, 1.0) * share)


def _agreements(
    image: np.ndarray,
    mask: np.ndarray,
    moved: np.ndarray,
    moved_mask: np.ndarray,
    two_dimensional: np.ndarray,
    whole: np.ndarray,
) -> tuple:
    """Scores [n], copy masks [n, GRID, GRID] (grid pixels) and the near-exact part of the scores [n] of
    aligned candidates against their queries' images and masks [n, GRID, GRID]. The score is the larger of
    two shares of the smaller of the two foregrounds (the most two slices can share), so that an alignment
    that overlaps the slices only in a corner cannot score high:

    - the largest agreeing region, each of its pixels counted by how far its local correlation rises
      above AGREEMENT (1 for a perfect match, :func:`_strength`): another person's loosely similar
      anatomy counts less than an exact (partial) copy. With ``whole`` [n], each candidate's whole foreground
      in grid pixels at its hypothesis' scale, this share is of the smaller of the query's foreground and that
      (not only of the part the alignment leaves on the grid): a candidate moved mostly off the grid agrees
      loosely in a corner by chance (method.md §7.40);
    - the largest region reproduced near-exactly (:func:`_exact_regions`), over EXACT_SHARE and at most
      1: a copied quarter or patch scores by itself, not diluted by the rest of the slice (its share is of
      EXACT_FLOOR grid pixels at least: the grid enlarges a small foreground to its size).

    The copy mask is the largest agreeing region, or, when the near-exact share scores higher, the
    agreeing region that holds the near-exact one (its inset does not shrink the map). ``two_dimensional``:
    :func:`_two_dimensional` of ``image`` (a caller scoring several hypotheses of one query makes it once per
    query)."""
    overlap = mask & moved_mask
    correlation = local_correlation(image, moved, overlap)
    agree = _closed(correlation >= AGREEMENT) & overlap
    agree &= (overlap.sum(axis=(1, 2)) >= GRID * GRID // 50)[:, None, None]
    largest = _largest_regions(agree)
    exact = _exact_regions(correlation, overlap) & agree & two_dimensional
    some = exact.any(axis=(1, 2))  # most pairs have no near-exact pixel: only the others are labelled
    if some.any():
        exact[some] = _largest_regions(exact[some])
    smaller = np.maximum(np.minimum(mask.sum(axis=(1, 2)), moved_mask.sum(axis=(1, 2))), 1)
    loose = np.maximum(np.minimum(mask.sum(axis=(1, 2)), np.maximum(whole, moved_mask.sum(axis=(1, 2)))), 1)
    weighted = (_strength(correlation) * largest).sum(axis=(1, 2)) / loose
    # The grid enlarges a small foreground to its size: a near-exact share of it is weighed as one of EXACT_FLOOR.
    reproduced = np.minimum(exact.sum(axis=(1, 2)) / np.maximum(smaller, EXACT_FLOOR) / EXACT_SHARE, 1.0)
    by_exact = reproduced > weighted
    copied = largest  # not used again: the rows scored by their near-exact region are replaced in place
    if by_exact.any():
        copied[by_exact] = _regions_holding(agree[by_exact], exact[by_exact])
    return np.where(by_exact, reproduced, weighted), copied, reproduced


def _exact_regions(correlation: np.ndarray, overlap: np.ndarray) -> np.ndarray:
    """bool [n, GRID, GRID]: the pixels whose local correlation is at least EXACT (closed), more than
    EXACT_INSET pixels (4-connected steps) inside the overlap and the grid."""
    inside = overlap.copy()
    inside[:, [0, -1]] = False
    inside[:, :, [0, -1]] = False
    for _ in range(EXACT_INSET):
        inside = _shrunk(inside)
    return _closed(correlation >= EXACT) & inside


def _two_dimensional(images: np.ndarray, sigma: float = WINDOW_SIGMA, smooth: Smoother | None = None) -> np.ndarray:
    """bool [n, GRID, GRID]: the pixels of a stack of grid images whose local structure is not a single straight
    edge: the coherence ((λ1 − λ2) / (λ1 + λ2))² of the structure tensor (gradient products in Gaussian windows of
    ``sigma``) is below EXACT_COHERENCE (flat pixels count as two-dimensional: they carry no edge). ``smooth``: as
    :func:`local_correlation`'s (slices at their own size: :func:`_filtered`)."""
    rows, cols = np.gradient(images, axis=(1, 2))
    rr, cc, rc = (smooth or _smoothed)(np.stack([rows * rows, cols * cols, rows * cols]), sigma)
    trace = rr + cc
    coherence = ((rr - cc) ** 2 + 4.0 * rc * rc) / np.maximum(trace * trace, 1e-12)
    return coherence < EXACT_COHERENCE


def _closed(regions: np.ndarray) -> np.ndarray:
    """``ndimage.binary_closing`` (4-connected cross, zero border) of every image of a stack
    [n, rows, cols]: dilation, then erosion, which clears the image border."""
    grown = regions.copy()
    grown[:, 1:] |= regions[:, :-1]
    grown[:, :-1] |= regions[:, 1:]
    grown[:, :, 1:] |= regions[:, :, :-1]
    grown[:, :, :-1] |= regions[:, :, 1:]
    out = _shrunk(grown)
    out[:, [0, -1]] = False
    out[:, :, [0, -1]] = False
    return out


def _shrunk(regions: np.ndarray) -> np.ndarray:
    """One 4-connected erosion step of every image of a stack [n, rows, cols]: a pixel stays where its
    neighbours inside the image are set too (the image border is left to the caller)."""
    out = regions.copy()
    out[:, 1:] &= regions[:, :-1]
    out[:, :-1] &= regions[:, 1:]
    out[:, :, 1:] &= regions[:, :, :-1]
    out[:, :, :-1] &= regions[:, :, 1:]
    return out


@lru_cache(maxsize=1)
def _in_plane() -> np.ndarray:
    """bool [3, 3, 3]: 4-connectivity within each image of a stack (regions never span images)."""
    connectivity = np.zeros((3, 3, 3), dtype=bool)
    connectivity[1] = ndimage.generate_binary_structure(2, 1)
    return connectivity


def _regions_holding(regions: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """bool [n, rows, cols]: the 4-connected region of each image of a stack ``regions`` that holds that
    image's ``seeds`` (one connected set inside ``regions``; empty where there is none)."""
    labels, _ = ndimage.label(regions, _in_plane())
    held = (labels * seeds).reshape(len(labels), -1).max(axis=1)
    return (labels == held[:, None, None]) & (held > 0)[:, None, None]


def _largest_regions(regions: np.ndarray) -> np.ndarray:
    """bool [n, rows, cols]: the largest 4-connected region of each image of a stack (the first in
    raster order among equals; empty where there is none)."""
    labels, count = ndimage.label(regions, _in_plane())
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    # Labels run in raster order over the stack, so each image's labels follow the previous image's.
    last = np.maximum.accumulate(labels.reshape(len(labels), -1).max(axis=1))
    chosen = np.zeros(len(labels), dtype=labels.dtype)
    for i, (first, end) in enumerate(zip(np.r_[0, last[:-1]] + 1, last + 1)):
        if end > first:
            chosen[i] = first + np.argmax(sizes[first:end])
    return (labels == chosen[:, None, None]) & (chosen > 0)[:, None, None]


def _strength(correlation: np.ndarray) -> np.ndarray:
    """Evidence of agreeing pixels: (correlation − AGREEMENT) / (1 − AGREEMENT), clipped to [0, 1]. A copy
    agrees almost perfectly (≈ 1); another person's similar anatomy sits just above AGREEMENT (≈ 0.3),
    so partial copies are no longer outscored by large loosely agreeing regions."""
    return np.clip((correlation - AGREEMENT) / (1.0 - AGREEMENT), 0.0, 1.0)


def _hypotheses(
    queries: Sequence[Grid], pairs: _Pairs, in_place_scales: np.ndarray, swept: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(transposed [P * _HYPOTHESES], linear map [P * _HYPOTHESES, 2, 2]) to try, per pair in order: per transpose,
    the log-polar rotation estimate and its 180° twin (the magnitude spectrum cannot tell them apart) at the
    estimated scale; the turn between the two foregrounds' principal axes and its twin, at the ratio of
    their radii of gyration (:func:`principal_axes`); the map matching the second moments of the two grid images
    (:func:`_moment_maps`; rank-equalised intensities, which an affine map keeps and which hold more of the anatomy's
    shape than the foreground does): a copy stretched or sheared, as a generator trained on slices resized to one
    grid hands them back (the principal axes' first where that map scales outside SCALE_RANGE; :func:`_verify_chunk`
    refines it by :func:`_flow_refined`); for the pairs
    ``swept`` [P] marks, the centroid sweep's turn and scale (``centroid_sweep.swept_turns``; the others repeat the
    first hypothesis, which then ranks first among equals); then the candidate in place, at ``in_place_scales`` [P]
    (:func:`_in_place`). Scales outside SCALE_RANGE are replaced by 1. Blur, lost resolution, noise and elastic
    warps flatten or smear the spectrum and can mislead the log-polar estimate of a turned copy; the foreground's
    shape keeps its axes, and the smoothed images themselves their turn (method.md §7.54)."""
    angles, scales = _rotation_scales(queries, pairs)  # [P, 2]: as is, transposed
    turned = np.stack([angles % 360.0, (angles + 180.0) % 360.0], axis=-1).reshape(len(angles), 4)
    transposed = np.broadcast_to(np.array([False, False, True, True]), turned.shape)
    query_axis, query_radius = principal_axes(second_moments(np.stack([grid.mask for grid in queries])))
    axis, radius = principal_axes(second_moments(np.stack([grid.mask for grid in pairs.unique])))
    turn = (query_axis[pairs.query] - axis[pairs.candidate])[:, None]
    gyration = np.sqrt(query_radius[pairs.query] / np.maximum(radius[pairs.candidate], 1e-6))[:, None]
    in_place = in_place_scales[:, None]
    untransposed = np.zeros((len(angles), _HYPOTHESES - 4), dtype=bool)  # the principal axes' two and the rest
    scale = np.concatenate([np.repeat(scales, 2, axis=-1), gyration, gyration], axis=1)
    scale = np.where((scale >= SCALE_RANGE[0]) & (scale <= SCALE_RANGE[1]), scale, 1.0)
    sweep_angle, sweep_scale = turned[:, 0].copy(), scale[:, 0].copy()
    query_images, candidate_images = (np.stack([grid.image for grid in grids]) for grids in (queries, pairs.unique))
    chosen = np.flatnonzero(swept)
    if len(chosen):
        found = swept_turns(query_images, candidate_images, pairs.query[chosen], pairs.candidate[chosen])
        sweep_angle[chosen], sweep_scale[chosen] = found
    angle = np.concatenate([turned, turn % 360.0, (turn + 180.0) % 360.0], axis=1)
    linear = _turns(angle.ravel(), scale.ravel()).reshape(len(angles), -1, 2, 2)
    matched = _moment_maps(second_moments(query_images)[pairs.query], second_moments(candidate_images)[pairs.candidate])
    matched = np.where(_scales_within(matched)[:, None, None], matched, linear[:, 4])
    swept_linear = _turns(sweep_angle, sweep_scale)
    in_place_linear = _turns(np.zeros(len(in_place)), in_place[:, 0])
    stacked = np.concatenate([linear, matched[:, None], swept_linear[:, None], in_place_linear[:, None]], axis=1)
    return np.concatenate([transposed, untransposed], axis=1).ravel(), stacked.reshape(-1, 2, 2)


def _flow_refined(
    images: np.ndarray, masks: np.ndarray, unique: np.ndarray, pairs: _Pairs, linear: np.ndarray
) -> np.ndarray:
    """float64 [P, 2, 2]: each pair's linear map ``linear`` [P, 2, 2] refined by the affine map that best fits (least
    squares over the two foregrounds' overlap) the optical flow of its candidate (``unique`` [U, 2, GRID, GRID], images
    and masks), so mapped and moved by phase correlation, onto its query (``images``, ``masks`` [Q, GRID, GRID]). The
    second moments give a stretch only up to a turn they cannot see and a few per cent off where the field of view
    cuts the anatomy; a copy's near-exact correlation needs the map to a fraction of a grid pixel. A refined map that
    scales outside SCALE_RANGE, or whose overlap is under a quarter of the grid, is left as it was."""
    moved, moved_masks = _warped(unique[pairs.candidate], _inverse_maps(np.zeros(len(linear), bool), linear), 1)
    shifts = _phase_peaks(_whitened(_rfft2(images))[pairs.query] * _whitened(_rfft2(moved)).conj(), (GRID, GRID))
    moved, moved_masks = _shifted(moved, shifts), _shifted(moved_masks, shifts)
    flows = batched_ilk(images[pairs.query], moved, num_warp=BEND_WARPS).astype(np.float64)
    weight = (masks[pairs.query] & moved_masks).reshape(len(linear), -1).astype(np.float64)
    columns, rows = (ramp.reshape(-1).numpy().astype(np.float64) * (GRID - 1) / 2.0 for ramp in _base_grid())
    design = np.stack([columns, rows, np.ones_like(columns)], axis=1)  # [GRID², 3], about the grid centre
    targets = np.stack([columns + flows[:, 1].reshape(len(linear), -1), rows + flows[:, 0].reshape(len(linear), -1)])
    normal = np.einsum("pk,ki,kj->pij", weight, design, design) + 1e-9 * np.eye(3)
    fitted = np.linalg.solve(normal, np.einsum("pk,ki,dpk->pid", weight, design, targets))[:, :2].transpose(0, 2, 1)
    usable = (weight.sum(axis=1) >= GRID * GRID / 4) & (np.abs(np.linalg.det(fitted)) > 1e-6)
    refined = np.linalg.inv(np.where(usable[:, None, None], fitted, np.eye(2))) @ linear
    kept = usable & _scales_within(refined)
    return np.where(kept[:, None, None], refined, linear)


def _scales_within(linear: np.ndarray) -> np.ndarray:
    """bool [n]: whether both scales (singular values) of each linear map [n, 2, 2] lie in SCALE_RANGE."""
    singular = np.linalg.svd(linear, compute_uv=False)
    return ((singular >= SCALE_RANGE[0]) & (singular <= SCALE_RANGE[1])).all(axis=1)


def second_moments(weights: np.ndarray) -> np.ndarray:
    """float64 [n, 2, 2]: the covariance of the pixel positions of each image of a stack [n, rows, columns] (a mask,
    or intensities), weighted by its values, in the (column, row) coordinates of :func:`_transform`."""
    weight = weights.astype(np.float64)
    total = np.maximum(weight.sum(axis=(1, 2)), 1.0)
    rows, columns = (np.arange(size, dtype=np.float64) for size in weight.shape[1:])
    by_row, by_column = weight.sum(axis=2), weight.sum(axis=1)
    row, column = by_row @ rows / total, by_column @ columns / total
    row_var = by_row @ (rows * rows) / total - row**2
    column_var = by_column @ (columns * columns) / total - column**2
    covariance = np.einsum("nij,i,j->n", weight, rows, columns) / total - row * column
    return np.stack([np.stack([column_var, covariance], axis=-1), np.stack([covariance, row_var], axis=-1)], axis=1)


def principal_axes(moments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per mask's second moments [n, 2, 2] (:func:`second_moments`): the angle of its principal axis in degrees, in
    the (column, row) coordinates of :func:`_transform` (so a candidate turned by the difference of two masks' angles
    has its axis along the query's), and its mean squared distance from its centroid (radius of gyration squared)."""
    column_var, covariance, row_var = moments[:, 0, 0], moments[:, 0, 1], moments[:, 1, 1]
    return np.degrees(0.5 * np.arctan2(2.0 * covariance, column_var - row_var)), row_var + column_var


def _moment_maps(query: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """float64 [n, 2, 2]: per pair, the linear map (column, row coordinates) that carries the candidate foreground's
    second moments ``candidate`` [n, 2, 2] onto the query's ``query`` [n, 2, 2] and is nearest the identity: Σq^½ R
    Σc^-½ with the rotation R that maximises its trace (every R gives the query's moments; the trace picks the one
    that neither turns nor reflects). A copy stretched by different factors along the rows and columns, or sheared,
    keeps neither its principal axes' turn nor one scale; its foreground's second moments carry the stretch."""
    query_root, candidate_root = _matrix_roots(query, 0.5), _matrix_roots(candidate, -0.5)
    product = candidate_root @ query_root  # trace(R M) is largest at the angle below
    angle = np.arctan2(product[:, 0, 1] - product[:, 1, 0], product[:, 0, 0] + product[:, 1, 1])
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.array([[cos, -sin], [sin, cos]]).transpose(2, 0, 1)
    return query_root @ rotation @ candidate_root


def _matrix_roots(symmetric: np.ndarray, power: float) -> np.ndarray:
    """float64 [n, 2, 2]: each symmetric matrix [n, 2, 2] to the ``power``, its eigenvalues kept from 1 (grid
    pixels squared) up: an empty or one-pixel-wide mask's moments give no stretch."""
    values, vectors = np.linalg.eigh(symmetric)
    return (vectors * np.maximum(values, 1.0)[:, None, :] ** power) @ vectors.transpose(0, 2, 1)


def _in_place(queries: Sequence[Grid], pairs: _Pairs) -> tuple[np.ndarray, np.ndarray]:
    """The in-place hypothesis of each pair: the candidate neither turned nor flipped, each pixel at the
    same place in the field of view of the query (the spectra of a partial copy mix two slices and can
    mislead the rotation and scale estimate; a generator keeps what it copies where it was). Fields of
    view of different sizes are matched by their areas' ratio, about their centres. Returns its grid
    scale [P] (about the grid centre) and the translation (row, col) [P, 2] that then puts each pixel in
    place (grid pixels, fractions included: the two grids are cut at different places of their slices)."""

    def frames(grids: Sequence[Grid]) -> tuple[np.ndarray, ...]:
        # Per grid: grid pixels per slice pixel, its slice's area, and its slice's centre on the grid (row, col),
        # as _grid_of maps slice pixels.
        scale = np.array([GRID / grid.side for grid in grids], dtype=np.float64)
        corner = np.array([grid.corner for grid in grids], dtype=np.float64)
        centre = (np.array([grid.foreground.shape for grid in grids], dtype=np.float64) - 1.0) / 2.0
        area = np.array([grid.foreground.size for grid in grids], dtype=np.float64)
        return scale, area, (centre - corner + 0.5) * scale[:, None] - 0.5

    query_scale, query_area, query_centre = (part[pairs.query] for part in frames(queries))
    candidate_scale, candidate_area, candidate_centre = (part[pairs.candidate] for part in frames(pairs.unique))
    scales = np.sqrt(query_area / np.maximum(candidate_area, 1.0)) * query_scale / candidate_scale
    # Scaled about the grid centre, the candidate's centre goes to the query's centre once translated by this.
    middle = (GRID - 1) / 2.0
    offsets = query_centre - middle - scales[:, None] * (candidate_centre - middle)
    return scales, offsets


def _aligned(
    images: np.ndarray, unique: np.ndarray, pairs: _Pairs, transposed: np.ndarray, linear: np.ndarray
) -> tuple:
    """Every hypothesis applied to the candidates' images and masks (``unique`` [U, 2, GRID, GRID]): the turned
    and scaled candidates' images and masks moved by the whole-pixel translation that phase correlation finds
    against its query (of the query images [Q, GRID, GRID]; ``shifts`` int [P * _HYPOTHESES, 2]), and the
    cross-power spectra that gave it (:func:`_refined_shifts`). Returns (images, masks, shifts, cross, and the
    turned and scaled candidates' images and masks before they were moved)."""
    sampled = (np.arange(len(pairs.query))[:, None] * _HYPOTHESES + _SAMPLED).ravel()
    maps = _inverse_maps(transposed[sampled], linear[sampled])
    turned, turned_masks = (_with_twins(stack) for stack in _warped(unique[pairs.candidate], maps, len(_SAMPLED)))
    reference = _whitened(_rfft2(images))[np.repeat(pairs.query, _HYPOTHESES)]
    cross = reference * _whitened(_rfft2(turned)).conj()
    shifts = _phase_peaks(cross, (GRID, GRID))
    return _shifted(turned, shifts), _shifted(turned_masks, shifts), shifts, cross, turned, turned_masks


def _moved_shifts(
    images: np.ndarray, turned: np.ndarray, pairs: _Pairs, guided: np.ndarray, moves: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Whole-pixel translations [G, 2] of the in-place candidates of the ``guided`` pairs [G] to where the region
    search saw their copies (``moves`` [G, 6], :func:`_moved_in_place`), and the cross-power spectra that gave them.
    The whole slices' phase correlation of a moved patch is ruled by the rest of the two slices (a host's anatomy,
    in place), so the two are compared in Gaussian windows about their two tiles, and the peak is taken within
    MOVED_SEARCH of the tiles' move."""
    at = guided * _HYPOTHESES + IN_PLACE
    query = _whitened(_rfft2(images[pairs.query[guided]] * _window(moves[:, 2:4])))
    cross = query * _whitened(_rfft2(turned[at] * _window(moves[:, 4:6]))).conj()
    return _peaks_near(cross, moves[:, :2]), cross


def _window(centres: np.ndarray) -> np.ndarray:
    """float32 [n, GRID, GRID] Gaussian windows of sigma MOVED_WINDOW about ``centres`` [n, 2] (row, col; grid
    pixels)."""
    ramp = np.arange(GRID, dtype=np.float32)
    rows = np.exp(-0.5 * ((ramp[None, :] - centres[:, :1]) / MOVED_WINDOW) ** 2)
    cols = np.exp(-0.5 * ((ramp[None, :] - centres[:, 1:]) / MOVED_WINDOW) ** 2)
    return (rows[:, :, None] * cols[:, None, :]).astype(np.float32)


def _tile_moves(places: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """[P, 6] per pair: the translation (row, col; grid pixels) that puts its candidate, at its in-place ``scales``
    [P], where the region search saw it (``places`` [P, 4]: the centres of the query's tile and of the candidate's,
    fractions of their squares, which the grids' squares approximate), the query tile's centre on the query's grid
    and the candidate tile's centre on the scaled candidate's; nan where the pair has no places."""
    middle = (GRID - 1) / 2.0
    query, candidate = places[:, :2] * GRID - 0.5, places[:, 2:] * GRID - 0.5
    scaled = middle + scales[:, None] * (candidate - middle)
    return np.concatenate([query - scaled, query, scaled], axis=1)


def _moved_in_place(places: np.ndarray, scales: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """:func:`_tile_moves` of the pairs, nan where the pair has no places or where the tiles' translation lies within
    MOVED_SEARCH of the in-place one (``offsets`` [P, 2]): a copy kept in place is left to phase correlation."""
    moves = _tile_moves(places, scales)
    moved = np.abs(moves[:, :2] - offsets).max(axis=1) > MOVED_SEARCH  # False where nan
    return np.where(moved[:, None], moves, np.nan)


def _moved_near(
    images: np.ndarray, turned: np.ndarray, pairs: _Pairs, near: np.ndarray, moves: np.ndarray, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The pairs among ``near`` [N] (seen in place by the region tiles, :func:`_seen_in_place`) whose in-place
    candidate, compared with the query in windows about the two tiles (``moves`` [N, 6], :func:`_tile_moves`), peaks
    more than IN_PLACE_SNAP from its in-place translation ``offsets`` [N, 2], and those peaks refined [n, 2]. A patch
    pasted a little off its place (less than MOVED_SEARCH, which the tiles cannot tell from in place) lies there."""
    if not len(near):
        return near, np.zeros((0, 2))
    shifts, cross = _moved_shifts(images, turned, pairs, near, moves)
    fine = _refined_shifts(cross, shifts)
    off = np.abs(fine - offsets).max(axis=1) > IN_PLACE_SNAP
    return near[off], fine[off]


def _peaks_near(cross: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """int [n, 2] whole-pixel shifts, as :func:`_phase_peaks` finds them from cross-power spectra [n, ...], but
    each the peak within MOVED_SEARCH of its target [n, 2], and unwrapped to the target's side: the surface is
    periodic, and a region moved by more than half the grid is still moved that far."""
    correlation = np.abs(_irfft2(cross, (GRID, GRID)))
    out = np.empty((len(cross), 2), dtype=np.int64)
    for k, (surface, target) in enumerate(zip(correlation, targets)):
        # The shifts within reach of the target on each axis, and the surface row (column) each one reads.
        near = [np.arange(math.ceil(t - MOVED_SEARCH), math.floor(t + MOVED_SEARCH) + 1) for t in target]
        window = surface[np.ix_(near[0] % GRID, near[1] % GRID)]
        r, c = np.unravel_index(np.argmax(window), window.shape)
        out[k] = near[0][r], near[1][c]
    return out


def _periodic_gap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| (grid pixels, elementwise) on the periodic phase-correlation surface."""
    return np.abs((np.asarray(a) - b + GRID / 2) % GRID - GRID / 2)


def _wrapped_distance(shifts: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """[n] the largest per-axis distance between translations ``shifts`` and ``offsets`` [n, 2] (grid pixels) on the
    periodic phase-correlation surface."""
    return _periodic_gap(shifts, offsets).max(axis=1)


def _peaks_away(cross: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """int [n, 2] whole-pixel shifts, as :func:`_phase_peaks` finds them from cross-power spectra [n, ...] and wraps
    them, but each the peak farther than MOVED_SEARCH from its in-place translation ``offsets`` [n, 2]."""
    correlation = np.abs(_irfft2(cross, (GRID, GRID)))
    lags = np.arange(GRID)
    lags = np.where(lags > GRID // 2, lags - GRID, lags)
    near = [_periodic_gap(lags[None, :], offsets[:, axis, None]) <= MOVED_SEARCH for axis in (0, 1)]
    correlation[near[0][:, :, None] & near[1][:, None, :]] = -1.0
    flat = correlation.reshape(len(correlation), -1).argmax(axis=1)
    return lags[np.stack(np.unravel_index(flat, (GRID, GRID)), axis=1)]


def _agreement_moves(
    images: np.ndarray, masks: np.ndarray, moving: np.ndarray, moving_masks: np.ndarray, shifts: np.ndarray
) -> np.ndarray:
    """[n, 6] per moving image and its whole-pixel shift [n, 2] onto its query image (stacks [n, GRID, GRID]), as
    :func:`_moved_in_place` gives a moved copy: the shift, the centre (row, col) of where the two agree once moved
    (local correlation above AGREEMENT over both foregrounds, weighted by how far above) on the query's grid, and that
    centre on the moving image's; nan where they agree nowhere. Phase correlation's surface is periodic, so a region
    moved by more than half the grid peaks where one moved less the other way: the shift is also tried one grid side
    the other way on either axis (where that leaves at least a quarter of the side shared), and the one with the most
    agreement is kept."""
    tried = [
        [(r, c) for r in _both_ways(int(row)) for c in _both_ways(int(col))] for row, col in np.asarray(shifts).tolist()
    ]
    owner = np.repeat(np.arange(len(tried)), [len(t) for t in tried])
    flat = np.array([t for ways in tried for t in ways], dtype=np.int64).reshape(-1, 2)
    placed, placed_masks = _shifted(moving[owner], flat), _shifted(moving_masks[owner], flat) > 0.5
    correlation = local_correlation(images[owner], placed, (masks[owner] > 0.5) & placed_masks)
    weight = np.maximum(correlation - AGREEMENT, 0.0)
    total = weight.sum(axis=(1, 2))
    out = np.full((len(tried), 6), np.nan)
    ramp = np.arange(GRID, dtype=np.float64)
    start = 0
    for k, ways in enumerate(tried):
        best = start + int(np.argmax(total[start : start + len(ways)]))
        start += len(ways)
        out[k, :2] = flat[best]
        if total[best] > 0:
            centre = np.array([weight[best].sum(axis=1) @ ramp, weight[best].sum(axis=0) @ ramp]) / total[best]
            out[k, 2:] = np.concatenate([centre, centre - flat[best]])
    return out


def _both_ways(shift: int) -> list[int]:
    """A whole-pixel shift on one axis of the periodic grid, and the same one grid side the other way where that
    leaves at least a quarter of the side shared."""
    other = shift - GRID * int(np.sign(shift))
    return [shift, other] if shift and abs(other) <= GRID - GRID // 4 else [shift]


def _with_twins(sampled: np.ndarray) -> np.ndarray:
    """[P * _HYPOTHESES, GRID, GRID]: the images of every hypothesis of each pair, given those of its
    :data:`_SAMPLED` ones [P * len(_SAMPLED), GRID, GRID]. A twin's inverse map is its first's negated (a turn by
    180° more, no translation), so it samples each pixel where its first samples the pixel mirrored through the
    grid centre: the first's image reversed along both axes (equal up to the rounding of the sampling positions)."""
    per = sampled.reshape(-1, len(_SAMPLED), GRID, GRID)
    out = np.empty((len(per), _HYPOTHESES, GRID, GRID), dtype=sampled.dtype)
    out[:, _SAMPLED] = per
    out[:, _TWINS] = per[:, np.searchsorted(_SAMPLED, _TWINS - 1), ::-1, ::-1]
    return out.reshape(-1, GRID, GRID)


def _refined_shifts(cross: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """float [n, 2] translations (row, col) registering turned candidates onto their query images to
    1 / SUBPIXEL grid pixel, given their cross-power spectra [n, GRID, GRID // 2 + 1] (:func:`_aligned`): the
    phase-normalised cross-correlation evaluated on that lattice within one pixel of its whole-pixel peak
    ``shifts`` [n, 2], by matrix products with the spectrum (the upsampled cross-correlation of
    Guizar-Sicairos et al., 2008, that scikit-image's ``phase_cross_correlation(upsample_factor=SUBPIXEL)``
    uses). A copy whose two grids were cut from its slice at different places lies a fraction of a pixel
    off, which lowers its local correlations."""
    n = len(cross)
    if n == 0:
        return np.zeros((0, 2))
    rows, cols = np.fft.fftfreq(GRID, 1.0 / GRID), np.arange(GRID // 2 + 1)
    # The whole-pixel peak moved to the origin (a phase ramp), then the lattice about it (fixed matrices).
    at_peak = (
        np.exp(2j * np.pi / GRID * shifts[:, 0, None] * rows)[:, :, None]
        * np.exp(2j * np.pi / GRID * shifts[:, 1, None] * cols)[:, None, :]
    )
    down, across = _lattice()
    centred = (cross * at_peak.astype(np.complex64)).transpose(1, 0, 2).reshape(GRID, -1)
    surface = (down @ centred).reshape(len(down), n, -1).transpose(1, 0, 2) @ across.T  # [n, lattice, lattice]
    best = np.abs(surface.real).reshape(n, -1).argmax(axis=1)
    steps = np.arange(-SUBPIXEL, SUBPIXEL + 1) / SUBPIXEL
    return shifts + steps[np.stack(np.unravel_index(best, surface.shape[1:]), axis=1)]


@lru_cache(maxsize=1)
def _lattice() -> tuple[np.ndarray, np.ndarray]:
    """complex64 [lattice, GRID] and [lattice, GRID // 2 + 1]: the inverse DFT along rows and along the half
    spectrum's columns at offsets -1 ... 1 in steps of 1 / SUBPIXEL (the half spectrum's inner columns stand
    for their conjugate twins too, so they count twice in the real part)."""
    steps = np.arange(-SUBPIXEL, SUBPIXEL + 1) / SUBPIXEL
    down = np.exp(2j * np.pi / GRID * steps[:, None] * np.fft.fftfreq(GRID, 1.0 / GRID))
    columns = np.arange(GRID // 2 + 1)
    across = np.exp(2j * np.pi / GRID * steps[:, None] * columns) * np.where(columns % (GRID // 2) == 0, 1.0, 2.0)
    return down.astype(np.complex64), across.astype(np.complex64)


def pair_chunks(sizes: Sequence[int], limit: int = CHUNK_PAIRS) -> list[range]:
    """Consecutive runs of queries with ``sizes`` candidates each, at most ``limit`` pairs a run (a
    query with more candidates makes a run of its own)."""
    runs, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        if total + size > limit and i > start:
            runs.append(range(start, i))
            start, total = i, 0
        total += size
    return [*runs, range(start, len(sizes))] if sizes else runs


def verify_batch(
    queries: Sequence[Grid],
    candidates: Sequence[Sequence[Grid]],
    chunk_pairs: int = CHUNK_PAIRS,
    places: Sequence[Sequence[np.ndarray]] | None = None,
    bend: Sequence[Sequence[bool]] | None = None,
) -> list[list[Verification]]:
    """Verify every query against its own candidates (in order), as :func:`verify` does each pair:
    the pairs of consecutive queries are batched, ``chunk_pairs`` at most at a time. ``places``: per candidate,
    the region search's two tiles [4] (``region_search.RegionHits``; nan, or None for all, where there are none),
    which place a moved copy's in-place hypothesis (:func:`_moved_in_place`). ``bend``: per candidate, whether it
    may be a whole-slice copy bent or warped: its bent score is sought (:func:`_bent`) and the centroid sweep
    proposes a turn (``centroid_sweep``; all when None); where not, neither, and the bent score is the verified
    score."""
    if places is None:
        places = [[np.full(4, np.nan)] * len(listed) for listed in candidates]
    if bend is None:
        bend = [[True] * len(listed) for listed in candidates]
    out: list[list[Verification]] = []
    for run in pair_chunks([len(listed) for listed in candidates], chunk_pairs):
        out += _verify_chunk(
            [queries[i] for i in run], [candidates[i] for i in run], [places[i] for i in run], [bend[i] for i in run]
        )
    return out


def _verify_chunk(
    queries: Sequence[Grid],
    candidates: Sequence[Sequence[Grid]],
    places: Sequence[Sequence[np.ndarray]],
    bend: Sequence[Sequence[bool]],
) -> list[list[Verification]]:
    """One chunk of :func:`verify_batch`: the rotation, scale and translation estimates and the warps of every pair and
    hypothesis are batched; each pair's best hypothesis by global correlation, its in-place one and, for a pair
    ``bend`` marks, the centroid sweep's (:func:`_scored_hypotheses`), and for a pair whose copy the region search
    saw moved its in-place one moved there (:func:`_moved_shifts`), or, saw in place while phase correlation put it
    elsewhere, its in-place one exactly in place (:func:`_seen_in_place`), are scored by :func:`_agreements`, and
    the highest scoring one is kept. The in-place hypothesis moved to its phase correlation's strongest peak away
    from in place, and for a pair seen in place to the peak near the tiles' move where that is off in place
    (:func:`_moved_near`), count only by their near-exact part at the slice's own resolution
    (:func:`_with_moved_native_part`). The pairs that ``bend`` marks and that score at least BEND_GATE are bent too
    (:func:`_bent`)."""
    asked = [i for i, listed in enumerate(candidates) if len(listed)]
    out: list[list[Verification]] = [[] for _ in queries]
    if not asked:
        return out
    used, pairs = [queries[i] for i in asked], _Pairs.of([candidates[i] for i in asked])
    in_place_scales, in_place_offsets = _in_place(used, pairs)
    tiles = np.array([pair for i in asked for pair in places[i]], dtype=np.float64).reshape(-1, 4)
    moves = _moved_in_place(tiles, in_place_scales, in_place_offsets)
    wanted = np.array([wants for i in asked for wants in bend[i]], dtype=bool)
    transposed, linear = _hypotheses(used, pairs, in_place_scales, wanted)
    images, masks = np.stack([q.image for q in used]), np.stack([q.mask for q in used])
    unique = np.stack([np.stack([g.image, g.mask]) for g in pairs.unique]).astype(np.float32)
    matched = np.arange(len(pairs.query)) * _HYPOTHESES + MOMENTS
    linear[matched] = _flow_refined(images, masks, unique, pairs, linear[matched])
    moved, moved_masks, shifts, cross, turned, turned_masks = _aligned(images, unique, pairs, transposed, linear)
    in_place = np.arange(len(pairs.query)) * _HYPOTHESES + IN_PLACE
    owner = np.repeat(pairs.query, _HYPOTHESES)
    ranks = _global_correlations(images[owner], masks[owner], moved, moved_masks).reshape(-1, _HYPOTHESES)
    pair_of, scored = _scored_hypotheses(ranks, wanted)
    fine = _refined_shifts(cross[scored], shifts[scored])
    # An in-place hypothesis whose whole-pixel translation lies within a pixel of its exact one is put exactly there.
    offsets = in_place_offsets[scored // _HYPOTHESES]
    snap = (scored % _HYPOTHESES == IN_PLACE) & (np.abs(shifts[scored] - offsets).max(axis=1) <= IN_PLACE_SNAP)
    fine[snap] = offsets[snap]
    # A pair whose copy the region search saw in place, phase correlation elsewhere, also scores it exactly in place.
    put_back = _seen_in_place(tiles, moves)[scored // _HYPOTHESES] & (scored % _HYPOTHESES == IN_PLACE) & ~snap
    if put_back.any():
        pair_of = np.concatenate([pair_of, scored[put_back] // _HYPOTHESES])
        scored = np.concatenate([scored, scored[put_back]])
        fine = np.concatenate([fine, offsets[put_back]])
    # A pair whose copy the region search saw moved also scores its in-place hypothesis moved there.
    guided = np.flatnonzero(np.isfinite(moves[:, 0]))
    if len(guided):
        moved_by, moved_cross = _moved_shifts(images, turned, pairs, guided, moves[guided])
        pair_of = np.concatenate([pair_of, guided])
        scored = np.concatenate([scored, guided * _HYPOTHESES + IN_PLACE])
        fine = np.concatenate([fine, _refined_shifts(moved_cross, moved_by)])
    # Every pair also tries its in-place hypothesis where its phase correlation peaks farthest from in place: the
    # strongest peak away from in place, on the side of the periodic surface where the two agree, refined in windows
    # about where they agree. A region copied and moved (a pasted patch) correlates there, however a host's anatomy
    # rules the rest of the slices. This move counts only by its near-exact part at the slice's own resolution
    # (:func:`_with_moved_native_part`): a look-alike moved there can agree loosely, a copy is reproduced (§7.45).
    away = np.where(
        (_wrapped_distance(shifts[in_place], in_place_offsets) <= MOVED_SEARCH)[:, None],
        _peaks_away(cross[in_place], in_place_offsets),
        shifts[in_place],
    )
    found_moves = _agreement_moves(
        images[pairs.query], masks[pairs.query], turned[in_place], turned_masks[in_place], away
    )
    roaming = np.flatnonzero(np.isfinite(found_moves[:, 2]))
    first_away = len(scored)
    if len(roaming):
        roamed_by, roamed_cross = _moved_shifts(images, turned, pairs, roaming, found_moves[roaming])
        pair_of = np.concatenate([pair_of, roaming])
        scored = np.concatenate([scored, in_place[roaming]])
        fine = np.concatenate([fine, _refined_shifts(roamed_cross, roamed_by)])
    # A pair whose copy the region tiles saw in place also tries its in-place hypothesis at the peak near the tiles'
    # move, in windows about them, where that is off in place: a patch pasted a little off its place. It counts only by
    # its near-exact part at the slice's own resolution, as the move away from in place does.
    near = np.flatnonzero(_seen_in_place(tiles, moves))
    nudged, nudged_by = _moved_near(
        images, turned, pairs, near, _tile_moves(tiles[near], in_place_scales[near]), in_place_offsets[near]
    )
    pair_of = np.concatenate([pair_of, nudged])
    scored = np.concatenate([scored, in_place[nudged]])
    fine = np.concatenate([fine, nudged_by])
    maps = _inverse_maps(transposed[scored], linear[scored], fine)
    placed, placed_masks = _warped(unique[pairs.candidate[scored // _HYPOTHESES]], maps, 1)
    queries_at = owner[scored]
    structured = _two_dimensional(images)[queries_at]  # once per query, not per scored hypothesis
    areas = np.abs(np.linalg.det(linear[scored]))
    whole = unique[pairs.candidate[scored // _HYPOTHESES], 1].sum(axis=(1, 2)) * areas
    scores, copied, reproduced = _agreements(
        images[queries_at], masks[queries_at], placed, placed_masks, structured, whole
    )
    # Per pair: its first scored unless another scores higher; the moment-matched map, which has the most freedom,
    # keeps a tie only against none (a partial copy's mixed moments put it a little off a copy's in-place map, and
    # the near-exact part of a copied half scores 1 under both).
    chosen = np.full(len(ranks), -1, dtype=np.intp)
    moved_only: list[list[int]] = [[] for _ in ranks]  # per pair: its hypotheses counted by their near-exact part
    for s, p in enumerate(pair_of):
        if s >= first_away:
            moved_only[p].append(s)
            continue
        if chosen[p] < 0 or scores[s] > scores[chosen[p]]:
            chosen[p] = s
        elif scores[s] == scores[chosen[p]] and scored[chosen[p]] % _HYPOTHESES == MOMENTS:
            chosen[p] = s
    most_reproduced = np.zeros(len(ranks))
    np.maximum.at(most_reproduced, pair_of[:first_away], reproduced[:first_away])
    bent = scores[chosen].astype(np.float64)
    gated = np.flatnonzero((bent >= BEND_GATE) & wanted)
    if len(gated):
        rows, at = chosen[gated], queries_at[chosen[gated]]
        moved_on, moved_on_masks = _bent(images[at], masks[at], placed[rows], placed_masks[rows])
        bent_scores, _, _ = _agreements(images[at], masks[at], moved_on, moved_on_masks, structured[rows], whole[rows])
        bent[gated] = np.maximum(bent[gated], bent_scores)
    owners = queries_at[chosen]
    likeness = _global_correlations(
        images[owners], masks[owners] & copied[chosen], placed[chosen], placed_masks[chosen]
    )
    to_query = [np.linalg.inv(_grid_of(query)) for query in used]
    from_candidate = [_grid_of(grid) for grid in pairs.unique]

    def alignment_of(s: int, q: int, c: int) -> Alignment:
        # The s-th scored hypothesis's map from the candidate's slice pixels to the query's.
        h = scored[s]
        on_grid = _transform(linear[h], (float(fine[s, 0]), float(fine[s, 1])))
        matrix = _slice_map(to_query[q], from_candidate[c], bool(transposed[h]), on_grid)
        return Alignment(bool(transposed[h]), *_turn_and_scale(linear[h]), matrix)

    for p, (q, c) in enumerate(zip(pairs.query, pairs.candidate)):
        query, candidate = used[q], pairs.unique[c]
        mask = _to_slice(copied[chosen[p]], query)
        score = float(scores[chosen[p]])
        found = Verification(
            score,
            alignment_of(chosen[p], q, c),
            mask,
            bounding_box(mask),
            float(most_reproduced[p]),
            float(bent[p]),
            on_grid=score,
            likeness=float(likeness[p]),
        )
        result = found
        if _checked_natively(score, reproduced[chosen[p]]):
            result = _with_native_part(found, query, candidate)
        for a in moved_only[p]:
            if _checked_natively(scores[a]):
                result = _with_moved_native_part(
                    result, query, candidate, alignment_of(a, q, c), _to_slice(copied[a], query)
                )
        out[asked[q]].append(result)
    return out


def _checked_natively(score: float, reproduced: float = 0.0) -> bool:
    """Whether a scored hypothesis is checked at the query slice's own resolution (:func:`native_part`): its grid
    score reaches NATIVE_GATE, or some of its grid pixels are reproduced near-exactly (``reproduced`` > 0, its
    near-exact part on the grid; a pair's chosen hypothesis passes it, the moves that count only by their near-exact
    part do not, method.md §7.50). Fine texture copied in place can agree on the 64-pixel grid too little to reach
    the gate while a few of its grid pixels correlate near-exactly."""
    return bool(score >= NATIVE_GATE or reproduced > 0.0)


def _with_native_part(found: Verification, query: Grid, candidate: Grid) -> Verification:
    """A verification with its near-exact part raised to :func:`native_part` where that is higher, its score and bent
    score with it; its copy mask becomes the native region where it had none."""
    if found.reproduced >= 1.0:  # the part is at most 1
        return found
    part, region = native_part(query, candidate, found.alignment, found.mask)
    if part <= found.reproduced:
        return found
    mask = found.mask if found.mask.any() else region
    return replace(
        found,
        score=max(found.score, part),
        mask=mask,
        box=bounding_box(mask),
        reproduced=part,
        bent=max(found.bent, part),
    )


def _with_moved_native_part(
    found: Verification, query: Grid, candidate: Grid, moved: Alignment, copied: np.ndarray
) -> Verification:
    """``found``, or where it is higher, the near-exact part at the query's own resolution (:func:`native_part`) of the
    candidate carried by the ``moved`` alignment (the in-place hypothesis moved to its phase correlation's strongest
    peak away from in place, whose grid copy mask is ``copied``), as the pair's verification: that alignment, the part
    as its score and near-exact part, its region as the copy mask; the bent score at least that part."""
    if found.score >= 1.0:  # the part is at most 1
        return found
    part, region = native_part(query, candidate, moved, copied)
    if part <= found.score:
        return found
    return Verification(
        part, moved, region, bounding_box(region), part, max(found.bent, part), found.on_grid, found.likeness
    )


def native_part(
    query: Grid, candidate: Grid, alignment: Alignment, copied: np.ndarray | None = None
) -> tuple[float, np.ndarray]:
    """The near-exact part at the query slice's own resolution, and its region bool [rows, cols] of the query.

    The candidate's own pixels (``Grid.unit``) are carried onto the query's by ``alignment.matrix``, then moved by the
    translation that phase correlation at the slice's resolution finds in the copied region (``copied``, the grid's
    copy mask; the two foregrounds' overlap where it is empty or None), when that is at most NATIVE_SHIFT pixels: the
    grid's alignment is exact to a fraction of a grid pixel, several of the slice's, and a noisy copy's pixels
    correlate near-exactly only within a fraction of one. The part is the largest region, more than a pixel inside
    both foregrounds, whose local correlation (Gaussian windows of NATIVE_WINDOW pixels) is at least EXACT where
    neither slice's structure is one straight edge (a smooth ramp is one at this scale; noise added to the query
    alone would hide it there): its share of the smaller foreground (at least half the query's field
    of view: a small foreground's few near-exact pixels are look-alike anatomy as often as not) over NATIVE_SHARE, at
    most 1."""
    to_candidate = np.linalg.inv(alignment.matrix)[[1, 0, 2]][:, [1, 0, 2]]  # query (row, col, 1) -> candidate's
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
    box = _widened(bounds, _reach(NATIVE_WINDOW) + 1, fixed.shape)
    fixed, moved, overlap = fixed[box], moved[box], overlap[box]
    correlation = local_correlation(fixed[None], moved[None], overlap[None], NATIVE_WINDOW, _filtered)
    exact = _closed(correlation >= EXACT) & _shrunk(overlap[None])
    if exact.any():  # the structure tensors only where some pixel correlates near-exactly (the same result)
        exact &= _two_dimensional(np.stack([fixed, moved]), NATIVE_WINDOW, _filtered).all(axis=0, keepdims=True)
    if not exact.any():
        return 0.0, largest
    largest[box] = _largest_regions(exact)[0]
    candidate_pixels = float(candidate.foreground.sum()) * abs(float(np.linalg.det(alignment.matrix[:2, :2])))
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
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    if len(rows) < 2 or len(cols) < 2:
        return np.zeros(2)
    box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    taper = _filtered_in_box(region.astype(np.float32), NATIVE_TAPER, box)
    weight = max(float(taper.sum()), 1e-6)
    a, b = fixed[box], moved[box]
    a, b = (a - float((a * taper).sum()) / weight) * taper, (b - float((b * taper).sum()) / weight) * taper
    shift, _, _ = phase_cross_correlation(a, b, upsample_factor=NATIVE_SUBPIXEL, normalization=None)
    return np.zeros(2) if np.abs(shift).max() > NATIVE_SHIFT else np.asarray(shift, dtype=np.float64)


def _reach(sigma: float) -> int:
    """Pixels an ``ndimage.gaussian_filter`` of ``sigma`` reads on either side (its default truncation at 4 sigma)."""
    return int(4.0 * sigma + 0.5)


def _widened(bounds: tuple[int, int, int, int], margin: int, shape: tuple[int, ...]) -> tuple[slice, slice]:
    """The box ``bounds`` (row0, col0, row1, col1; ends exclusive) widened by ``margin`` pixels, cut to ``shape``."""
    (top, left, bottom, right), (rows, cols) = bounds, shape
    return np.s_[max(top - margin, 0) : min(bottom + margin, rows), max(left - margin, 0) : min(right + margin, cols)]


def _filtered_in_box(image: np.ndarray, sigma: float, box: tuple[slice, slice]) -> np.ndarray:
    """``ndimage.gaussian_filter(image, sigma)[box]``, filtering only the box and the filter's reach about it (the
    same values: each pixel sums the same neighbours in the same order)."""
    wide = _widened((box[0].start, box[1].start, box[0].stop, box[1].stop), _reach(sigma), image.shape)
    inner = tuple(slice(b.start - w.start, b.stop - w.start) for b, w in zip(box, wide))
    return ndimage.gaussian_filter(image[wide], sigma)[inner]


def _filtered(stack: np.ndarray, sigma: float) -> np.ndarray:
    """``ndimage.gaussian_filter`` of every image of a stack [..., rows, cols] (at a slice's own size, cheaper than
    :func:`_smoothed`'s matrix products)."""
    return ndimage.gaussian_filter(stack, (0,) * (stack.ndim - 2) + (sigma, sigma))


def _bent(
    query: np.ndarray, query_masks: np.ndarray, placed: np.ndarray, placed_masks: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Aligned candidates' images and masks [n, GRID, GRID] bent onto their queries' (the same shapes): each one's
    optical flow onto its query, averaged in Gaussian windows of BEND_SIGMA over the two foregrounds' overlap and cut
    to BEND_MAX pixels, applied bilinearly, zeros outside (the bent mask above one half)."""
    flows = batched_ilk(query, placed, num_warp=BEND_WARPS)
    overlap = (query_masks & placed_masks).astype(np.float32)[:, None]
    flows = _smoothed(flows * overlap, BEND_SIGMA, "constant") / np.maximum(
        _smoothed(overlap, BEND_SIGMA, "constant"), 1e-3
    )
    flows *= np.minimum(1.0, BEND_MAX / np.maximum(np.hypot(flows[:, 0], flows[:, 1]), 1e-6))[:, None]
    columns, rows = (ramp.reshape(GRID, GRID).numpy() for ramp in _base_grid())
    to_unit = 2.0 / (GRID - 1)
    sampling = np.stack([columns + flows[:, 1] * to_unit, rows + flows[:, 0] * to_unit], axis=-1)
    with torch.no_grad():
        moved = torch.nn.functional.grid_sample(
            torch.from_numpy(np.stack([placed, placed_masks], axis=1).astype(np.float32)),
            torch.from_numpy(sampling.astype(np.float32)),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=True,
        ).numpy()
    return moved[:, 0], moved[:, 1] > 0.5


def _seen_in_place(places: np.ndarray, moves: np.ndarray) -> np.ndarray:
    """bool [P]: the pairs whose region tiles (``places`` [P, 4]) put the copy within MOVED_SEARCH of its in-place
    alignment (``moves`` [P, 6] from :func:`_moved_in_place`, nan there). The whole slices' phase correlation can put
    such a pair's in-place hypothesis far off, ruled by the rest of the slices (a host's anatomy; method.md §7.28)."""
    return np.isfinite(places).all(axis=1) & ~np.isfinite(moves[:, 0])


def _scored_hypotheses(ranks: np.ndarray, swept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The hypotheses scored by :func:`_agreements`, given their global correlations [P, _HYPOTHESES] and the pairs
    the centroid sweep proposed a turn for (``swept`` [P]): (pair [S], hypothesis [S], an index into the chunk's flat
    hypotheses), each pair's best-ranked first (the sweep's hypothesis not among those ranked), then its in-place
    hypothesis when that is not the best-ranked, then, for a swept pair, the sweep's. The whole slice decides the
    global correlation, so a partial copy's in-place alignment can rank low on it and still agree best where it
    copies; the sweep's hypothesis is scored beside the best-ranked, not instead of it (method.md §7.54)."""
    ranked = ranks.copy()
    ranked[:, SWEPT] = -np.inf
    best = np.argmax(ranked, axis=1)  # the first of equal ranks
    second = np.flatnonzero(best != IN_PLACE)
    third = np.flatnonzero(swept)
    pair_of = np.concatenate([np.arange(len(ranks)), second, third])
    chosen = np.concatenate([best, np.full(len(second), IN_PLACE), np.full(len(third), SWEPT)])
    order = np.argsort(pair_of, kind="stable")
    return pair_of[order], pair_of[order] * _HYPOTHESES + chosen[order]


def verify_many(query: Grid, candidates: Sequence[Grid]) -> list[Verification]:
    """Verify ``query`` against several candidates at once, in order (:func:`verify_batch` of one query)."""
    return verify_batch([query], [candidates])[0]


def verify(query: Grid, candidate: Grid) -> Verification:
    """Align ``candidate`` onto ``query`` (every hypothesis, translation by phase correlation) and keep
    the alignment with the highest agreement score; the copy mask is given in query pixels."""
    return verify_many(query, [candidate])[0]


def grid_places(places: np.ndarray, query: Grid, candidate: Grid) -> np.ndarray:
    """Tile centres ``places`` [4] (row, col of the query's, then of the candidate's), given as fractions of each
    slice's whole field of view centred in a square (``preprocess.framed``), as fractions of the two grids'
    squares (which :func:`verify_batch`'s ``places`` are)."""
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


def in_place_square(query: Grid, candidate: Grid, places: np.ndarray | None = None) -> tuple[tuple[int, int], int]:
    """The candidate's grid square (corner (row, col), side) carried in place into the query slice's pixels: fields
    of view of different sizes matched by their areas' ratio about their centres, as :func:`_in_place` maps them.
    Where the region search's two tiles (``places`` [4], fractions of the two grids' squares as :func:`verify_batch`
    takes them) put the candidate's tile more than MOVED_SEARCH query grid pixels from where that map puts it, the
    square moves with the tile."""
    ratio = math.sqrt(query.foreground.size / max(candidate.foreground.size, 1))
    query_centre = (np.array(query.foreground.shape, dtype=np.float64) - 1.0) / 2.0
    candidate_centre = (np.array(candidate.foreground.shape, dtype=np.float64) - 1.0) / 2.0
    corner = query_centre + ratio * (np.array(candidate.corner, dtype=np.float64) - candidate_centre)
    if places is not None and np.isfinite(places).all():
        query_tile = np.array(query.corner) + np.asarray(places[:2]) * query.side
        candidate_tile = np.array(candidate.corner) + np.asarray(places[2:]) * candidate.side
        move = query_tile - (query_centre + ratio * (candidate_tile - candidate_centre))
        if np.abs(move).max() > MOVED_SEARCH * query.side / GRID:
            corner += move
    return (int(round(corner[0])), int(round(corner[1]))), max(1, int(round(ratio * candidate.side)))


def _grid_of(grid: Grid) -> np.ndarray:
    """[3, 3] map from slice pixels (column, row, 1) to grid pixels (resize maps pixel centres)."""
    k = GRID / grid.side
    (top, left) = grid.corner
    return np.array([[k, 0, (0.5 - left) * k - 0.5], [0, k, (0.5 - top) * k - 0.5], [0, 0, 1]])


def _slice_map(to_query: np.ndarray, from_candidate: np.ndarray, transposed: bool, on_grid: np.ndarray) -> np.ndarray:
    """[3, 3] candidate slice pixels -> query slice pixels, through the grids (column, row, 1), given
    the inverse of the query's :func:`_grid_of` and the candidate's."""
    swap = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]]) if transposed else np.eye(3)
    return to_query @ on_grid @ swap @ from_candidate


@lru_cache(maxsize=256)
def _nearest_rows(side: int) -> np.ndarray:
    """int [side]: the grid row (or column) each of ``side`` slice pixels takes in a nearest-neighbour
    resize from GRID (skimage's ``resize(order=0)`` is separable: resizing the row numbers gives it)."""
    ramp = np.arange(GRID, dtype=np.float64)[:, None]
    return resize(ramp, (side, 1), order=0, anti_aliasing=False)[:, 0].astype(np.intp)


def _to_slice(grid_mask: np.ndarray, query: Grid) -> np.ndarray:
    """A grid mask carried back to the query slice's own pixels: bool [rows, cols]."""
    nearest = _nearest_rows(query.side)
    square = grid_mask.take(nearest, axis=0).take(nearest, axis=1)
    out = np.zeros_like(query.foreground)
    (top, left), (h, w) = query.corner, out.shape
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + query.side, h), min(left + query.side, w)
    out[r0:r1, c0:c1] = square[r0 - top : r1 - top, c0 - left : c1 - left]
    return out & query.foreground


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding box (row0, col0, row1, col1), ends exclusive, of a bool mask; None when empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def verify_candidates(query: np.ndarray, candidates: list[np.ndarray]) -> list[Verification]:
    """Verify a raw query slice [rows, cols] against raw candidate slices (any shapes), in order."""
    return verify_many(to_grid(query), [to_grid(candidate) for candidate in candidates])
