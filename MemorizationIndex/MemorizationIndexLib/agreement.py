"""How well an aligned candidate agrees with its query on the grid: local correlation in Gaussian windows, the
largest agreeing region, and the region reproduced near-exactly (method.md §7.1, §7.16, §7.22).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
from scipy import ndimage

from .separable import gaussian_smoothed
from .slice_grid import GRID

Smoother = Callable[[np.ndarray, float], np.ndarray]  # (image stack, sigma) -> the stack filtered by that Gaussian
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
LOOSE_SHARE = "of the candidate's whole foreground at its scale"  # what loose agreement is a share of (agreements)
_MIN_VARIANCE = 1e-3  # local variance below this (flat tissue or background) carries no evidence


def local_correlation(
    a: np.ndarray, b: np.ndarray, weight: np.ndarray, sigma: float = WINDOW_SIGMA, smooth: Smoother | None = None
) -> np.ndarray:
    """Gaussian-windowed correlation of two [..., n, m] images over the pixels where ``weight`` is set.

    Windows are normalised by the weight they hold, so pixels outside ``weight`` never contribute;
    where either image is locally flat the correlation is 0 (no evidence). ``smooth``: the Gaussian filter of an
    image stack (:func:`separable.gaussian_smoothed` when None, for grids; :func:`native_check._filtered` for slices at
    their own size)."""
    w = weight.astype(np.float32)
    products = np.empty((6, *w.shape), dtype=np.float32)  # w, a w, b w, a² w, b² w, a b w
    products[0] = w
    for out, (x, y) in zip(products[1:], ((a, w), (b, w), (a, a), (b, b), (a, b))):
        np.multiply(x, y, out=out)
    products[3:] *= w
    sums = (smooth or gaussian_smoothed)(products, sigma)
    ma, mb, maa, mbb, mab = sums[1:] / np.maximum(sums[0], 1e-6)
    va, vb = maa - ma * ma, mbb - mb * mb
    cov = mab - ma * mb
    informative = (va > _MIN_VARIANCE) & (vb > _MIN_VARIANCE) & weight
    # Times the boolean rather than np.where, which costs ten times more on such masks; the same values.
    return cov / np.sqrt(np.maximum(va * vb, 1e-12)) * informative


def global_correlations(image: np.ndarray, mask: np.ndarray, moved: np.ndarray, moved_mask: np.ndarray) -> np.ndarray:
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


def agreements(
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
    - the largest region reproduced near-exactly (:func:`exact_regions`), over EXACT_SHARE and at most
      1: a copied quarter or patch scores by itself, not diluted by the rest of the slice (its share is of
      EXACT_FLOOR grid pixels at least: the grid enlarges a small foreground to its size).

    The copy mask is the largest agreeing region, or, when the near-exact share scores higher, the
    agreeing region that holds the near-exact one (its inset does not shrink the map). ``two_dimensional``:
    :func:`two_dimensional_pixels` of ``image`` (a caller scoring several hypotheses of one query makes it once per
    query)."""
    overlap = mask & moved_mask
    correlation = local_correlation(image, moved, overlap)
    agree = closed(correlation >= AGREEMENT) & overlap
    agree &= (overlap.sum(axis=(1, 2)) >= GRID * GRID // 50)[:, None, None]
    largest = largest_regions(agree)
    exact = exact_regions(correlation, overlap) & agree & two_dimensional
    some = exact.any(axis=(1, 2))  # most pairs have no near-exact pixel: only the others are labelled
    if some.any():
        exact[some] = largest_regions(exact[some])
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


def exact_regions(correlation: np.ndarray, overlap: np.ndarray) -> np.ndarray:
    """bool [n, GRID, GRID]: the pixels whose local correlation is at least EXACT (closed), more than
    EXACT_INSET pixels (4-connected steps) inside the overlap and the grid."""
    inside = overlap.copy()
    inside[:, [0, -1]] = False
    inside[:, :, [0, -1]] = False
    for _ in range(EXACT_INSET):
        inside = shrunk(inside)
    return closed(correlation >= EXACT) & inside


def two_dimensional_pixels(
    images: np.ndarray, sigma: float = WINDOW_SIGMA, smooth: Smoother | None = None
) -> np.ndarray:
    """bool [n, GRID, GRID]: the pixels of a stack of grid images whose local structure is not a single straight
    edge: the coherence ((λ1 − λ2) / (λ1 + λ2))² of the structure tensor (gradient products in Gaussian windows of
    ``sigma``) is below EXACT_COHERENCE (flat pixels count as two-dimensional: they carry no edge). ``smooth``: as
    :func:`local_correlation`'s (slices at their own size: :func:`native_check._filtered`)."""
    rows, cols = np.gradient(images, axis=(1, 2))
    rr, cc, rc = (smooth or gaussian_smoothed)(np.stack([rows * rows, cols * cols, rows * cols]), sigma)
    trace = rr + cc
    coherence = ((rr - cc) ** 2 + 4.0 * rc * rc) / np.maximum(trace * trace, 1e-12)
    return coherence < EXACT_COHERENCE


def closed(regions: np.ndarray) -> np.ndarray:
    """``ndimage.binary_closing`` (4-connected cross, zero border) of every image of a stack
    [n, rows, cols]: dilation, then erosion, which clears the image border."""
    grown = regions.copy()
    grown[:, 1:] |= regions[:, :-1]
    grown[:, :-1] |= regions[:, 1:]
    grown[:, :, 1:] |= regions[:, :, :-1]
    grown[:, :, :-1] |= regions[:, :, 1:]
    out = shrunk(grown)
    out[:, [0, -1]] = False
    out[:, :, [0, -1]] = False
    return out


def shrunk(regions: np.ndarray) -> np.ndarray:
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


def largest_regions(regions: np.ndarray) -> np.ndarray:
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


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding box (row0, col0, row1, col1), ends exclusive, of a bool mask; None when empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1
