"""The audit's second stage: candidate training slices of every query slice, and pixel verification
of the query against each (docs/method.md §7).

The global search ranks references by pooled features. Re-oriented copies (transposed, turned by
90°) are found there because the index holds those copies of every training slice
(``transforms.REFERENCE_COPIES``); heavily noised copies are not, so a noisy query slice is also
searched as a smoothed view, and the candidates of the two searches are merged by rank (each gets
its share). Clean slices, the common case, cost no extra forward pass (§7.9). Every candidate is
aligned to the query and scored by :mod:`verification`. The same function serves the audit (against
a loaded index) and the verified null at build time (against each split's reference), so the null
goes through exactly the audit's pipeline.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .embedding import Cancelled, embed_slices
from .encoders.base import Encoder
from .pixel_threads import thread_map
from .preprocess import PreprocessSettings, scale_unit
from .search import Neighbours
from .transforms import REFERENCE_COPIES
from .verification import NOISE_TARGET, Grid, Verification, pair_chunks, to_grids, verify_batch

VIEWS = ("as-cut", "smoothed-if-noisy")
SMOOTH_SIGMA = 2.0  # pixels; the smoothed view finds heavily noised copies (method.md §7.2)
# White-noise level (unit intensities) from which a slice is also searched smoothed: twice the level that
# verification smooths down to. Clean brain and spine slices read at most 0.018 (method.md §7.9).
NOISY = 2.0 * NOISE_TARGET
DEFAULT_CANDIDATES = 6  # candidates verified per query slice
SEARCH_DEPTH = len(REFERENCE_COPIES)  # hits searched per candidate wanted: an original's copies share it

Searcher = Callable[[dict[str, np.ndarray], int], Neighbours]  # raw features, depth -> hits
GridSource = Callable[[Sequence[int]], dict[int, Grid]]  # original rows -> their grids (thread-safe)


@dataclass(frozen=True)
class Verified:
    """The best verified candidate of one query slice: ``row`` is its original reference row (-1 and
    score 0 when there was no candidate)."""

    score: float
    row: int
    result: Verification | None


def noisy_slices(slices: Sequence[np.ndarray], settings: PreprocessSettings) -> np.ndarray:
    """Positions of the slices whose white-noise level (``verification.noise_level``) is at least
    :data:`NOISY`: at least half their neighbour differences reach the median step of such noise
    (counted, which is several times cheaper than the median itself)."""
    step = NOISY * 0.6745 * math.sqrt(2.0)
    noisy = []
    for position, image in enumerate(slices):
        unit = scale_unit(np.asarray(image, dtype=np.float32), settings)
        rows, cols = np.abs(np.diff(unit, axis=0)), np.abs(np.diff(unit, axis=1))
        if np.count_nonzero(rows >= step) + np.count_nonzero(cols >= step) >= (rows.size + cols.size) / 2:
            noisy.append(position)
    return np.asarray(noisy, dtype=np.int64)


def smoothed_view(slice2d: np.ndarray) -> np.ndarray:
    """The slice smoothed by a Gaussian of SMOOTH_SIGMA pixels."""
    return ndimage.gaussian_filter(np.asarray(slice2d, dtype=np.float32), SMOOTH_SIGMA)


def search_depth(k: int) -> int:
    """How many reference vectors to search per view to find ``k`` distinct originals."""
    return max(1, k) * SEARCH_DEPTH


def view_hits(found: Neighbours, original_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A view's search hits as (original rows [n, m], scores [n, m]); -1 and -inf where none."""
    originals = np.append(np.asarray(original_row, dtype=np.int64), -1)
    return originals[found.ids], np.nan_to_num(found.scores.astype(np.float64), nan=-np.inf)


def shortlist(hits: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> np.ndarray:
    """[n, k] distinct original rows taken from the views in turn, best remaining first (-1 = none),
    so that no view's ranking crowds out another's."""
    n = len(hits[0][0])
    out = np.full((n, k), -1, dtype=np.int64)
    for i in range(n):
        ranked = []
        for rows, scores in hits:
            order = np.argsort(-scores[i], kind="stable")
            ranked.append(list(dict.fromkeys(int(r) for r in rows[i][order] if r >= 0)))
        chosen: list[int] = []
        for position in range(max(len(r) for r in ranked)):
            for view in ranked:
                if position < len(view) and view[position] not in chosen and len(chosen) < k:
                    chosen.append(view[position])
        out[i, : len(chosen)] = chosen
    return out


def candidates(
    encoder: Encoder,
    slices: Sequence[np.ndarray],
    as_cut: Neighbours,
    search: Searcher,
    original_row: np.ndarray,
    settings: PreprocessSettings,
    *,
    k: int = DEFAULT_CANDIDATES,
    batch_size: int = 32,
    cancel: threading.Event | None = None,
) -> np.ndarray:
    """[n, k] candidate original rows of the slices: ``as_cut`` (the audit's own search, at least
    :func:`search_depth` deep), merged for noisy slices with the search of their smoothed view."""
    n = len(slices)
    if n == 0:
        return np.zeros((0, k), dtype=np.int64)
    hits = [view_hits(as_cut, original_row)]
    noisy = noisy_slices(slices, settings)
    if len(noisy):
        views = [smoothed_view(slices[i]) for i in noisy]
        raw = embed_slices(encoder, views, settings, batch_size=batch_size, cancel=cancel)
        rows, scores = view_hits(search(raw, search_depth(k)), original_row)
        all_rows = np.full((n, rows.shape[1]), -1, dtype=np.int64)
        all_scores = np.full((n, rows.shape[1]), -np.inf)
        all_rows[noisy], all_scores[noisy] = rows, scores
        hits.append((all_rows, all_scores))
    return shortlist(hits, k)


def verify_slices(
    slices: Sequence[np.ndarray],
    shortlisted: np.ndarray,
    grids: GridSource,
    settings: PreprocessSettings,
    cancel: threading.Event | None = None,
) -> list[Verified]:
    """Verify every slice against its shortlisted rows [n, k]; keep the best candidate of each. The
    slices are verified in chunks of batched pairs (``verification.pair_chunks``) on the pixel-work
    threads (:mod:`pixel_threads`), each chunk asking ``grids`` for its reference grids, so that one
    thread makes grids while another verifies pairs; ``cancel`` is checked before each chunk."""
    listed = [[int(r) for r in rows if r >= 0] for rows in shortlisted]
    asked = [i for i, rows in enumerate(listed) if rows]

    def verify_chunk(run: range) -> dict[int, Verified]:
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        reference = grids(sorted({r for j in run for r in listed[asked[j]]}))
        usable = {asked[j]: [r for r in listed[asked[j]] if r in reference] for j in run}
        chosen = [i for i, rows in usable.items() if rows]
        queries = to_grids([slices[i] for i in chosen], settings)
        verified = {}
        for i, results in zip(chosen, verify_batch(queries, [[reference[r] for r in usable[i]] for i in chosen])):
            top = int(np.argmax([r.score for r in results]))
            verified[i] = Verified(float(results[top].score), usable[i][top], results[top])
        return verified

    out = [Verified(0.0, -1, None)] * len(slices)
    for verified in thread_map(verify_chunk, pair_chunks([len(listed[i]) for i in asked])):
        for i, best in verified.items():
            out[i] = best
    return out


def grids_of_slices(slices: Sequence[np.ndarray], settings: PreprocessSettings) -> GridSource:
    """A thread-safe grid source over slices held in memory (row = position), each grid made once."""
    made: dict[int, Grid] = {}
    lock = threading.Lock()

    def source(rows: Sequence[int]) -> dict[int, Grid]:
        with lock:
            missing = list(dict.fromkeys(row for row in rows if row not in made))
            made.update(zip(missing, to_grids([slices[row] for row in missing], settings)))
            return {row: made[row] for row in rows}

    return source
