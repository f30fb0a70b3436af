"""The audit's second stage: candidate training slices from three views of every query slice, and
pixel verification of the query against each (docs/method.md §7).

The global search ranks references by pooled features, which miss transposed, quarter-turned and
heavily noised copies. Each query is therefore also searched as a transposed and as a smoothed
view; the candidates of the three views are merged by rank (each view gets its share), and every
candidate is aligned to the query and scored by :mod:`verification`. The same function serves
the audit (against a loaded index) and the verified null at build time (against each split's
reference), so the null goes through exactly the audit's pipeline.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .embedding import Cancelled, embed_slices
from .encoders.base import Encoder
from .preprocess import PreprocessSettings
from .search import Neighbours
from .verification import Grid, Verification, pair_chunks, to_grids, verify_batch

VIEWS = ("as-cut", "transposed", "smoothed")
SMOOTH_SIGMA = 2.0  # pixels; the smoothed view finds heavily noised copies (method.md §7.2)
DEFAULT_CANDIDATES = 6  # candidates verified per query slice
SEARCH_DEPTH = 5  # hits searched per candidate wanted: an original's flipped and turned copies share it

Searcher = Callable[[dict[str, np.ndarray], int], Neighbours]  # raw features, depth -> hits
GridSource = Callable[[Sequence[int]], dict[int, Grid]]  # original rows -> their grids


@dataclass(frozen=True)
class Verified:
    """The best verified candidate of one query slice: ``row`` is its original reference row (-1 and
    score 0 when there was no candidate)."""

    score: float
    row: int
    result: Verification | None


def other_views(slices: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The transposed views of the slices, then their smoothed views (2n slices)."""
    transposed = [np.ascontiguousarray(np.asarray(s).T) for s in slices]
    smoothed = [ndimage.gaussian_filter(np.asarray(s, dtype=np.float32), SMOOTH_SIGMA) for s in slices]
    return transposed + smoothed


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
    :func:`search_depth` deep) merged with the searches of the transposed and smoothed views."""
    n = len(slices)
    if n == 0:
        return np.zeros((0, k), dtype=np.int64)
    raw = embed_slices(encoder, other_views(slices), settings, batch_size=batch_size, cancel=cancel)
    found = search(raw, search_depth(k))
    transposed = Neighbours(found.similarity[:n], found.ids[:n], found.scores[:n])
    smoothed = Neighbours(found.similarity[n:], found.ids[n:], found.scores[n:])
    return shortlist([view_hits(view, original_row) for view in (as_cut, transposed, smoothed)], k)


def verify_slices(
    slices: Sequence[np.ndarray],
    shortlisted: np.ndarray,
    grids: GridSource,
    settings: PreprocessSettings,
    cancel: threading.Event | None = None,
) -> list[Verified]:
    """Verify every slice against its shortlisted rows [n, k]; keep the best candidate of each. The
    slices are verified in chunks of batched pairs (``verification.pair_chunks``); ``cancel`` is
    checked before each."""
    reference = grids(sorted({int(r) for r in shortlisted.ravel() if r >= 0}))
    usable = [[int(r) for r in rows if r >= 0 and int(r) in reference] for rows in shortlisted]
    asked = [i for i, rows in enumerate(usable) if rows]
    out = [Verified(0.0, -1, None)] * len(slices)
    for run in pair_chunks([len(usable[i]) for i in asked]):
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        chosen = [asked[j] for j in run]
        queries = to_grids([slices[i] for i in chosen], settings)
        for i, results in zip(chosen, verify_batch(queries, [[reference[r] for r in usable[i]] for i in chosen])):
            top = int(np.argmax([r.score for r in results]))
            out[i] = Verified(float(results[top].score), usable[i][top], results[top])
    return out


def grids_of_slices(slices: Sequence[np.ndarray], settings: PreprocessSettings) -> GridSource:
    """A grid source over slices held in memory (row = position), each grid made once."""
    made: dict[int, Grid] = {}

    def source(rows: Sequence[int]) -> dict[int, Grid]:
        missing = list(dict.fromkeys(row for row in rows if row not in made))
        made.update(zip(missing, to_grids([slices[row] for row in missing], settings)))
        return {row: made[row] for row in rows}

    return source
