"""Pairwise verification: does a query slice reproduce (part of) a candidate reference slice?

The global search proposes candidates; each is aligned to the query on a coarse square grid and
the aligned overlap is scored. The alignment covers an optional transpose followed by a rotation of
any angle (every flip and 90° turn is one of these), a scale and a translation: rotation and scale
come from the log-polar magnitude spectra (Fourier–Mellin: scikit-image's ``phase_cross_correlation``
of log-polar maps), translation from phase correlation. The score is the share of the smaller
foreground in which the local correlation of rank-equalised intensities (Gaussian windows) is high:
rank equalisation removes monotone intensity changes, local windows tolerate bias fields, and pixels
that are background in either slice (zero-filled bands, empty margins) never count as agreement.
The largest agreeing region is the copy mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage
from skimage.exposure import equalize_hist
from skimage.filters import difference_of_gaussians, window
from skimage.registration import phase_cross_correlation
from skimage.transform import SimilarityTransform, resize, warp

from .preprocess import PreprocessSettings, scaled_foreground

GRID = 64  # side of the working grid in pixels (alignment and scoring)
SPECTRUM_GRID = 128  # side of the grid whose spectrum gives rotation and scale
SHORTLIST = 2  # hypotheses per candidate scored by local correlation (ranked by global correlation)
WINDOW_SIGMA = 2.0  # local-correlation window (grid pixels)
AGREEMENT = 0.7  # local correlation above which a pixel agrees
SCALE_RANGE = (0.75, 1.35)  # scales outside are not proposed by the log-polar estimate
_POLAR_ROWS = 360  # one row per degree; the magnitude spectrum repeats after 180 rows
_POLAR_INNER = SPECTRUM_GRID // 8  # log-polar columns of the lowest frequencies, left out
_MIN_VARIANCE = 1e-3  # local variance below this (flat tissue or background) carries no evidence


@dataclass(frozen=True)
class Grid:
    """A slice cropped to its foreground, centred in a square and resized to the working grid.

    image: float32 [GRID, GRID], foreground rank-equalised into (0, 1], background 0.
    mask: bool [GRID, GRID], the foreground.
    polar: float32 [2, 180, SPECTRUM_GRID - SPECTRUM_GRID // 8] log-polar log-magnitude spectra of
        the slice as is and transposed (:func:`_log_polar`).
    foreground: bool [rows, cols], the slice's own foreground (after the background floor).
    corner: (row, col) of the square's first pixel in slice pixels; side: its side in slice pixels.
    """

    image: np.ndarray
    mask: np.ndarray
    polar: np.ndarray
    foreground: np.ndarray
    corner: tuple[int, int]
    side: int


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

    score: share of the smaller foreground of the two aligned slices in which they agree, in [0, 1].
    mask: bool [rows, cols] of the query: the copied region (empty when none).
    box: (row0, col0, row1, col1) of the mask in query pixels (ends exclusive), None when empty.
    """

    score: float
    alignment: Alignment
    mask: np.ndarray
    box: tuple[int, int, int, int] | None


def to_grid(slice2d: np.ndarray, settings: PreprocessSettings = PreprocessSettings()) -> Grid:
    """Robust-scale a raw 2D slice [rows, cols], crop it to the rows and columns holding foreground
    (so that the anatomy, not the field of view, fills the grid), centre it in a square and resize."""
    unit = scaled_foreground(np.asarray(slice2d, dtype=np.float32), settings)
    foreground = unit > 0
    rows, cols = np.flatnonzero(foreground.mean(axis=1) >= 0.01), np.flatnonzero(foreground.mean(axis=0) >= 0.01)
    if len(rows) < 2 or len(cols) < 2:
        rows, cols = np.arange(unit.shape[0]), np.arange(unit.shape[1])
    h, w = rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0]
    side = int(max(h, w))
    top, left = (side - h) // 2, (side - w) // 2
    square = np.zeros((side, side), dtype=np.float32)
    square[top : top + h, left : left + w] = unit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    small = resize(square, (GRID, GRID), order=1, anti_aliasing=True).astype(np.float32)
    mask = ndimage.gaussian_filter(small, 1.0) > 0.05
    image = np.zeros_like(small)
    if mask.any():
        image[mask] = equalize_hist(small, nbins=64, mask=mask)[mask] * 0.99 + 0.01
    fine = resize(square, (SPECTRUM_GRID, SPECTRUM_GRID), order=1, anti_aliasing=True)
    polar = np.stack([_log_polar(fine), _log_polar(fine.T)]).astype(np.float32)
    return Grid(image, mask, polar, foreground, (int(rows[0] - top), int(cols[0] - left)), side)


@lru_cache(maxsize=1)
def _spectrum_tools() -> tuple[np.ndarray, np.ndarray]:
    """Hann window [SPECTRUM_GRID, SPECTRUM_GRID] and the log-polar sampling coordinates
    [2, 180, SPECTRUM_GRID - _POLAR_INNER] (row, col) of the centred spectrum: one row per degree,
    radii growing geometrically from 1 to SPECTRUM_GRID / 2 over SPECTRUM_GRID columns."""
    centre = SPECTRUM_GRID // 2
    angles = np.deg2rad(np.arange(_POLAR_ROWS // 2) * 360.0 / _POLAR_ROWS)[:, None]
    radii = np.exp(np.arange(_POLAR_INNER, SPECTRUM_GRID) * math.log(centre) / SPECTRUM_GRID)[None, :]
    coords = np.stack([centre + radii * np.sin(angles), centre + radii * np.cos(angles)])
    return window("hann", (SPECTRUM_GRID, SPECTRUM_GRID)), coords


def _log_polar(image: np.ndarray) -> np.ndarray:
    """Log-polar map (see :func:`_spectrum_tools`) of the log-magnitude spectrum of a band-passed,
    Hann-windowed [SPECTRUM_GRID, SPECTRUM_GRID] image: rotating the image shifts it along rows,
    scaling along columns, translating leaves it unchanged."""
    hann, coords = _spectrum_tools()
    spectrum = np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(difference_of_gaussians(image, 0.5, 6.0) * hann))))
    return ndimage.map_coordinates(spectrum, coords, order=1)


def _rotation_scale(query_polar: np.ndarray, candidate_polar: np.ndarray) -> tuple[float, float]:
    """Rotation (degrees, modulo 180) and image scale taking the candidate onto the query."""
    shift = phase_cross_correlation(query_polar, candidate_polar)[0]
    angle = float(shift[0]) * 360.0 / _POLAR_ROWS
    # The spectrum scales inversely to the image.
    scale = math.exp(-float(shift[1]) * math.log(SPECTRUM_GRID // 2) / SPECTRUM_GRID)
    return angle, scale


def _transform(angle: float, scale: float, shift: tuple[float, float] = (0.0, 0.0)) -> SimilarityTransform:
    """Grid-pixel map of rotating by ``angle`` degrees and scaling about the centre, then shifting."""
    centre = (GRID - 1) / 2.0
    to_origin = SimilarityTransform(translation=(-centre, -centre))
    turn = SimilarityTransform(scale=scale, rotation=math.radians(angle))
    back = SimilarityTransform(translation=(centre + shift[1], centre + shift[0]))
    return SimilarityTransform((to_origin + turn + back).params)


def _warped(grid: Grid, transposed: bool, angle: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The candidate's image and mask turned and scaled about the grid centre (quarter turns at
    scale 1 exactly)."""
    image = grid.image.T if transposed else grid.image
    mask = grid.mask.T if transposed else grid.mask
    if scale == 1.0 and angle % 90 == 0:
        turns = int(-angle // 90) % 4
        return np.rot90(image, turns), np.rot90(mask, turns)
    inverse = _transform(angle, scale).inverse
    moved = warp(image, inverse, order=1, cval=0.0, preserve_range=True).astype(np.float32)
    return moved, warp(mask.astype(np.float32), inverse, order=1, cval=0.0, preserve_range=True) > 0.5


def local_correlation(a: np.ndarray, b: np.ndarray, weight: np.ndarray, sigma: float = WINDOW_SIGMA) -> np.ndarray:
    """Gaussian-windowed correlation of two [n, m] images over the pixels where ``weight`` is set.

    Windows are normalised by the weight they hold, so pixels outside ``weight`` never contribute;
    where either image is locally flat the correlation is 0 (no evidence)."""
    w = weight.astype(np.float32)

    def mean(x: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(x * w, sigma) / np.maximum(ndimage.gaussian_filter(w, sigma), 1e-6)

    ma, mb = mean(a), mean(b)
    va, vb = mean(a * a) - ma * ma, mean(b * b) - mb * mb
    cov = mean(a * b) - ma * mb
    informative = (va > _MIN_VARIANCE) & (vb > _MIN_VARIANCE) & weight
    return np.where(informative, cov / np.sqrt(np.maximum(va * vb, 1e-12)), 0.0).astype(np.float32)


def _global_correlation(query: Grid, moved: np.ndarray, moved_mask: np.ndarray) -> float:
    """Pearson correlation of the aligned images over the overlap, weighted by the overlap's share
    of the query foreground (ranks hypotheses cheaply)."""
    overlap = query.mask & moved_mask
    if overlap.sum() < 3:
        return -1.0
    with np.errstate(invalid="ignore", divide="ignore"):  # a constant overlap has no correlation (nan -> 0)
        r = np.corrcoef(query.image[overlap], moved[overlap])[0, 1]
    return float(np.nan_to_num(r) * overlap.sum() / max(query.mask.sum(), 1))


def _agreement(query: Grid, moved: np.ndarray, moved_mask: np.ndarray) -> tuple[float, np.ndarray]:
    """Score and copy mask (grid pixels) of an aligned candidate. The score divides the largest
    agreeing region by the smaller of the two foregrounds (the most two slices can share), so that
    an alignment that overlaps the slices only in a corner cannot score high."""
    overlap = query.mask & moved_mask
    if overlap.sum() < GRID * GRID // 50:
        return 0.0, np.zeros_like(overlap)
    agree = ndimage.binary_closing(local_correlation(query.image, moved, overlap) >= AGREEMENT) & overlap
    labels, count = ndimage.label(agree)
    if count == 0:
        return 0.0, agree
    largest = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    return float(largest.sum() / min(query.mask.sum(), moved_mask.sum())), largest


def _hypotheses(query: Grid, candidate: Grid) -> list[tuple[bool, float, float]]:
    """(transposed, angle, scale) to try: per transpose, the log-polar rotation estimate and its
    180° twin (the magnitude spectrum cannot tell them apart) at the estimated scale (1 outside
    SCALE_RANGE)."""
    found = []
    for transposed in (False, True):
        angle, scale = _rotation_scale(query.polar[0], candidate.polar[int(transposed)])
        scale = scale if SCALE_RANGE[0] <= scale <= SCALE_RANGE[1] else 1.0
        found += [(transposed, angle % 360.0, scale), (transposed, (angle + 180.0) % 360.0, scale)]
    return found


def verify(query: Grid, candidate: Grid) -> Verification:
    """Align ``candidate`` onto ``query`` (every hypothesis, translation by phase correlation) and keep
    the alignment with the highest agreement score; the copy mask is given in query pixels."""
    aligned = []
    for transposed, angle, scale in _hypotheses(query, candidate):
        moved, moved_mask = _warped(candidate, transposed, angle, scale)
        shift = tuple(float(s) for s in phase_cross_correlation(query.image, moved, normalization="phase")[0])
        moved, moved_mask = ndimage.shift(moved, shift, order=0), ndimage.shift(moved_mask, shift, order=0)
        rank = _global_correlation(query, moved, moved_mask)
        aligned.append((rank, (transposed, angle, scale, shift), moved, moved_mask))
    aligned.sort(key=lambda item: -item[0])
    best: tuple[float, Alignment, np.ndarray] | None = None
    for _, (transposed, angle, scale, shift), moved, moved_mask in aligned[:SHORTLIST]:
        score, copied = _agreement(query, moved, moved_mask)
        if best is None or score > best[0]:
            matrix = _slice_map(query, candidate, transposed, _transform(angle, scale, shift).params)
            best = (score, Alignment(transposed, angle, scale, matrix), copied)
    score, alignment, copied = best
    mask = _to_slice(copied, query)
    return Verification(score, alignment, mask, bounding_box(mask))


def _grid_of(grid: Grid) -> np.ndarray:
    """[3, 3] map from slice pixels (column, row, 1) to grid pixels (resize maps pixel centres)."""
    k = GRID / grid.side
    (top, left) = grid.corner
    return np.array([[k, 0, (0.5 - left) * k - 0.5], [0, k, (0.5 - top) * k - 0.5], [0, 0, 1]])


def _slice_map(query: Grid, candidate: Grid, transposed: bool, on_grid: np.ndarray) -> np.ndarray:
    """[3, 3] candidate slice pixels -> query slice pixels, through the grids (column, row, 1)."""
    swap = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]]) if transposed else np.eye(3)
    return np.linalg.inv(_grid_of(query)) @ on_grid @ swap @ _grid_of(candidate)


def _to_slice(grid_mask: np.ndarray, query: Grid) -> np.ndarray:
    """A grid mask carried back to the query slice's own pixels: bool [rows, cols]."""
    square = resize(grid_mask.astype(np.float32), (query.side, query.side), order=0, anti_aliasing=False) > 0.5
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
    grid = to_grid(query)
    return [verify(grid, to_grid(candidate)) for candidate in candidates]
