"""Translations on the grid: phase correlation's peak refined to a fraction of a pixel, the peaks near or away from a
pair's in-place translation, and the moves that put a moved region (a pasted patch) where the region search saw it
(method.md §7.18, §7.25, §7.45, §7.49).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .agreement import AGREEMENT, local_correlation
from .encoders.tiles import FINE_STEP
from .fourier import irfft2
from .grid_warps import shifted
from .slice_grid import GRID

SUBPIXEL = 10  # the scored hypotheses' translations are refined to 1 / SUBPIXEL grid pixel (:func:`refined_shifts`)
# Grid pixels about a moved region's place (the region search's two tiles, method.md §7.25) within which its
# in-place hypothesis takes its phase correlation's peak: one step of the fine tiles, the most two tiles on their
# lattices can be off the move they share
MOVED_SEARCH = GRID * FINE_STEP
# Grid pixels within which an in-place hypothesis's translation is in place: it is then put exactly there, and a
# move near the region tiles' that falls within it is not tried again (:func:`verification._moved_near`)
IN_PLACE_SNAP = 1.0
MOVED_WINDOW = GRID * FINE_STEP  # sigma (grid pixels) of the window about each of the two tiles they are compared in


def tile_windows(centres: np.ndarray) -> np.ndarray:
    """float32 [n, GRID, GRID] Gaussian windows of sigma MOVED_WINDOW about ``centres`` [n, 2] (row, col; grid
    pixels)."""
    ramp = np.arange(GRID, dtype=np.float32)
    rows = np.exp(-0.5 * ((ramp[None, :] - centres[:, :1]) / MOVED_WINDOW) ** 2)
    cols = np.exp(-0.5 * ((ramp[None, :] - centres[:, 1:]) / MOVED_WINDOW) ** 2)
    return (rows[:, :, None] * cols[:, None, :]).astype(np.float32)


def tile_moves(places: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """[P, 6] per pair: the translation (row, col; grid pixels) that puts its candidate, at its in-place ``scales``
    [P], where the region search saw it (``places`` [P, 4]: the centres of the query's tile and of the candidate's,
    fractions of their squares, which the grids' squares approximate), the query tile's centre on the query's grid
    and the candidate tile's centre on the scaled candidate's; nan where the pair has no places."""
    middle = (GRID - 1) / 2.0
    query, candidate = places[:, :2] * GRID - 0.5, places[:, 2:] * GRID - 0.5
    scaled = middle + scales[:, None] * (candidate - middle)
    return np.concatenate([query - scaled, query, scaled], axis=1)


def moved_in_place(places: np.ndarray, scales: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """:func:`tile_moves` of the pairs, nan where the pair has no places or where the tiles' translation lies within
    MOVED_SEARCH of the in-place one (``offsets`` [P, 2]): a copy kept in place is left to phase correlation."""
    moves = tile_moves(places, scales)
    moved = np.abs(moves[:, :2] - offsets).max(axis=1) > MOVED_SEARCH  # False where nan
    return np.where(moved[:, None], moves, np.nan)


def peaks_near(cross: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """int [n, 2] whole-pixel shifts, as :func:`fourier.phase_peaks` finds them from cross-power spectra [n, ...], but
    each the peak within MOVED_SEARCH of its target [n, 2], and unwrapped to the target's side: the surface is
    periodic, and a region moved by more than half the grid is still moved that far."""
    correlation = np.abs(irfft2(cross, (GRID, GRID)))
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


def wrapped_distance(shifts: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """[n] the largest per-axis distance between translations ``shifts`` and ``offsets`` [n, 2] (grid pixels) on the
    periodic phase-correlation surface."""
    return _periodic_gap(shifts, offsets).max(axis=1)


def peaks_away(cross: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """int [n, 2] whole-pixel shifts, as :func:`fourier.phase_peaks` finds them from cross-power spectra [n, ...] and
    wraps them, but each the peak farther than MOVED_SEARCH from its in-place translation ``offsets`` [n, 2]."""
    correlation = np.abs(irfft2(cross, (GRID, GRID)))
    lags = np.arange(GRID)
    lags = np.where(lags > GRID // 2, lags - GRID, lags)
    near = [_periodic_gap(lags[None, :], offsets[:, axis, None]) <= MOVED_SEARCH for axis in (0, 1)]
    correlation[near[0][:, :, None] & near[1][:, None, :]] = -1.0
    flat = correlation.reshape(len(correlation), -1).argmax(axis=1)
    return lags[np.stack(np.unravel_index(flat, (GRID, GRID)), axis=1)]


def agreement_moves(
    images: np.ndarray, masks: np.ndarray, moving: np.ndarray, moving_masks: np.ndarray, shifts: np.ndarray
) -> np.ndarray:
    """[n, 6] per moving image and its whole-pixel shift [n, 2] onto its query image (stacks [n, GRID, GRID]), as
    :func:`moved_in_place` gives a moved copy: the shift, the centre (row, col) of where the two agree once moved
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
    placed, placed_masks = shifted(moving[owner], flat), shifted(moving_masks[owner], flat) > 0.5
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


def refined_shifts(cross: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """float [n, 2] translations (row, col) registering turned candidates onto their query images to
    1 / SUBPIXEL grid pixel, given their cross-power spectra [n, GRID, GRID // 2 + 1] (:func:`verification._aligned`):
    the phase-normalised cross-correlation evaluated on that lattice within one pixel of its whole-pixel peak
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


def seen_in_place(places: np.ndarray, moves: np.ndarray) -> np.ndarray:
    """bool [P]: the pairs whose region tiles (``places`` [P, 4]) put the copy within MOVED_SEARCH of its in-place
    alignment (``moves`` [P, 6] from :func:`moved_in_place`, nan there). The whole slices' phase correlation can put
    such a pair's in-place hypothesis far off, ruled by the rest of the slices (a host's anatomy; method.md §7.28)."""
    return np.isfinite(places).all(axis=1) & ~np.isfinite(moves[:, 0])
