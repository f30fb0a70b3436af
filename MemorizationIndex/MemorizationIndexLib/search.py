"""Nearest-neighbour search over per-block FAISS inner-product indexes, exact or IVF + exact re-ranking.

Two index kinds hold the whitened, unit-norm vectors of one block:

* ``flat``: ``IndexFlatIP``, exhaustive exact search (cost linear in the reference size).
* ``ivf``: ``IndexIVFFlat`` (inner product) with a direct map. The inverted lists keep the
  vectors in full float32, so every candidate is re-ranked with its exact cosine; only the
  candidate set is approximate (the ``nprobe`` nearest cells are scanned). Memory is the raw
  vector bytes plus 16 bytes per vector (list id + direct map), e.g. 1.05x for 80-dim blocks.

``auto`` picks ``ivf`` above :data:`AUTO_IVF_MIN_VECTORS` vectors, else ``flat``.

Whatever the kind, :func:`search_blocks` re-ranks the union of the per-block candidates with
exact float32 cosines recomputed from the stored vectors; the paper similarity is the geometric
mean over blocks of the per-block maximum of those cosines. A query's result therefore depends
only on the query row and on its candidate set: a flat and an ivf index give bit-identical
results whenever the ivf candidates contain the flat ones (as for near-duplicates).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np

from .scoring import aggregate

FLAT = "flat"
IVF = "ivf"
AUTO = "auto"
INDEX_KINDS: tuple[str, ...] = (AUTO, FLAT, IVF)
AUTO_IVF_MIN_VECTORS = 200_000  # auto: ivf when the reference has more vectors than this
DEFAULT_NPROBE = 16
MIN_TRAIN_PER_LIST = 39  # FAISS k-means wants at least this many training points per centroid
TRAIN_PER_LIST = 64
RERANK_CHUNK = 1024  # query rows re-ranked at once (bounds the gathered candidate vectors)
CONFIG_KIND = {FLAT: "flat-ip", IVF: "ivf-flat-ip"}  # the index_kind written in config.json


def resolve_index_kind(kind: str, n_vectors: int) -> str:
    """``flat`` or ``ivf`` for a requested kind (``auto``, ``flat``, ``ivf``) and reference size."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; choose one of {', '.join(INDEX_KINDS)}")
    if kind == AUTO:
        return IVF if n_vectors > AUTO_IVF_MIN_VECTORS else FLAT
    return kind


def ivf_nlist(n_vectors: int) -> int:
    """Number of IVF cells: the power of two nearest sqrt(n), at least 1, with >= 39 points per cell."""
    nlist = 2 ** max(0, round(math.log2(max(math.sqrt(n_vectors), 1.0))))
    while nlist > 1 and n_vectors < MIN_TRAIN_PER_LIST * nlist:
        nlist //= 2
    return nlist


def build_flat_index(vectors: np.ndarray) -> faiss.Index:
    """Exact inner-product index over unit vectors (inner product = cosine)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def build_ivf_index(
    vectors: np.ndarray, *, nlist: int | None = None, nprobe: int = DEFAULT_NPROBE, seed: int = 0
) -> faiss.Index:
    """IVF index with full float32 vectors in its lists and a direct map (for exact re-ranking).

    The coarse quantizer is trained by k-means on a seeded sample of 64 vectors per cell.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    nlist = ivf_nlist(n) if nlist is None else int(nlist)
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.cp.niter = 10
    index.cp.max_points_per_centroid = TRAIN_PER_LIST
    sample = min(n, TRAIN_PER_LIST * nlist)
    train = vectors if sample == n else vectors[np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))]
    index.train(train)
    for start in range(0, n, 1 << 18):
        index.add(vectors[start : start + (1 << 18)])
    index.make_direct_map()
    index.nprobe = min(nprobe, nlist)
    return index


def build_block_index(vectors: np.ndarray, kind: str, *, nprobe: int = DEFAULT_NPROBE, seed: int = 0) -> faiss.Index:
    """An index of ``kind`` (``flat`` or ``ivf``; resolve ``auto`` first) over one block's vectors."""
    if kind == FLAT:
        return build_flat_index(vectors)
    if kind == IVF:
        return build_ivf_index(vectors, nprobe=nprobe, seed=seed)
    raise ValueError(f"index kind must be {FLAT!r} or {IVF!r} here, not {kind!r}")


def index_kind_of(index: faiss.Index) -> str:
    """``flat`` or ``ivf`` for a FAISS index object."""
    return IVF if isinstance(faiss.downcast_index(index), faiss.IndexIVF) else FLAT


def describe_index(index: faiss.Index) -> dict:
    """Kind and parameters of an index (for config.json)."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIVF):
        return {"kind": IVF, "nlist": int(index.nlist), "nprobe": int(index.nprobe)}
    return {"kind": FLAT}


def prepare_loaded(index: faiss.Index, nprobe: int | None = None) -> faiss.Index:
    """Make a freshly read index searchable with re-ranking (direct map, nprobe); returns the same object.

    (A ``downcast_index`` proxy does not own the C++ index, so the caller keeps the original.)
    """
    typed = faiss.downcast_index(index)
    if isinstance(typed, faiss.IndexIVF):
        if typed.direct_map.type == faiss.DirectMap.NoMap:
            typed.make_direct_map()
        if nprobe is not None:
            typed.nprobe = min(int(nprobe), int(typed.nlist))
    return index


def vector_bytes(index: faiss.Index) -> int:
    """Bytes the index spends on vectors and their bookkeeping (excludes the small quantizer)."""
    index = faiss.downcast_index(index)
    raw = index.ntotal * index.d * 4
    if isinstance(index, faiss.IndexIVF):
        return raw + index.ntotal * 16 + index.nlist * index.d * 4
    return raw


def grouped_search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``index.search(queries, k)`` for many queries: the same scores and ids [n, k] (missing: -FLT_MAX and -1).

    An inner-product ``IndexIVFFlat`` scans each query's cells one query at a time; here the queries that probe the
    same cell are scored against its vectors together (``faiss.knn``, one matrix product per cell), about 3x faster
    for the patch search's hundreds of thousands of queries (docs/performance.md). Other indexes search as they are.
    """
    typed = faiss.downcast_index(index)
    if not isinstance(typed, faiss.IndexIVFFlat) or typed.metric_type != faiss.METRIC_INNER_PRODUCT:
        return index.search(queries, k)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    probes = int(typed.nprobe)
    _, cells = typed.quantizer.search(queries, probes)
    scores = np.full((len(queries), probes * k), -np.finfo(np.float32).max, dtype=np.float32)
    ids = np.full((len(queries), probes * k), -1, dtype=np.int64)
    lists = typed.invlists
    for probe in range(probes):
        cell_of = cells[:, probe]
        order = np.argsort(cell_of, kind="stable")
        bounds = np.searchsorted(cell_of[order], np.arange(typed.nlist + 1))
        for cell in np.flatnonzero(np.diff(bounds)):
            size = int(lists.list_size(int(cell)))
            if size == 0:
                continue
            rows = order[bounds[cell] : bounds[cell + 1]]
            stored = faiss.rev_swig_ptr(lists.get_codes(int(cell)), size * typed.d * 4).view(np.float32)
            found, at = faiss.knn(queries[rows], stored.reshape(size, typed.d), min(k, size), metric=typed.metric_type)
            named = faiss.rev_swig_ptr(lists.get_ids(int(cell)), size)[np.maximum(at, 0)]
            columns = np.s_[probe * k : probe * k + found.shape[1]]
            scores[rows, columns], ids[rows, columns] = found, np.where(at >= 0, named, -1)
    if probes > 1:
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        scores, ids = np.take_along_axis(scores, best, axis=1), np.take_along_axis(ids, best, axis=1)
    return scores, ids


@dataclass
class Neighbours:
    """Search result for n queries: paper similarity plus the top-k references by aggregated score."""

    similarity: np.ndarray  # [n] geometric mean over blocks of the per-block maximum cosine
    ids: np.ndarray  # [n, k] reference vector ids, best first (-1 where fewer candidates)
    scores: np.ndarray  # [n, k] aggregated similarity of the query to each of those references


def block_candidates(indexes: dict[str, faiss.Index], queries: dict[str, np.ndarray], k: int) -> np.ndarray:
    """Per-block top-k ids of every query, concatenated over blocks: [n, n_blocks * k] (-1 = none)."""
    blocks = list(indexes)
    k_search = max(1, min(k, indexes[blocks[0]].ntotal))
    found = [indexes[b].search(np.ascontiguousarray(queries[b], dtype=np.float32), k_search)[1] for b in blocks]
    return np.concatenate(found, axis=1)


def rerank(candidates: np.ndarray, queries: dict[str, np.ndarray], fetch, k: int) -> Neighbours:
    """Exact re-ranking of candidate ids.

    candidates: [n, m] reference ids (-1 = none, duplicates allowed).
    fetch(block, ids): float32 [len(ids), d] stored vectors of sorted unique ids.
    The similarity is the geometric mean over blocks of the maximum candidate cosine per block;
    the top-k are the candidates with the largest aggregated cosine (ties: smaller id first).
    """
    blocks = list(queries)
    n = len(candidates)
    similarity = np.zeros(n, dtype=np.float64)
    out_ids = np.full((n, k), -1, dtype=np.int64)
    out_scores = np.full((n, k), np.nan, dtype=np.float32)
    for start in range(0, n, RERANK_CHUNK):
        rows = slice(start, min(start + RERANK_CHUNK, n))
        ids = np.sort(candidates[rows], axis=1)
        valid = ids >= 0
        valid[:, 1:] &= ids[:, 1:] != ids[:, :-1]
        unique = np.unique(ids[valid])
        if unique.size == 0:
            continue
        position = np.searchsorted(unique, np.where(valid, ids, unique[0]))
        cosines = np.empty(ids.shape + (len(blocks),), dtype=np.float32)
        for j, block in enumerate(blocks):
            stored = np.ascontiguousarray(fetch(block, unique), dtype=np.float32)
            query = np.ascontiguousarray(queries[block][rows], dtype=np.float32)
            cosines[:, :, j] = np.einsum("ncd,nd->nc", stored[position], query)
        masked = np.where(valid[:, :, None], cosines, -np.inf)
        similarity[rows] = aggregate(masked.max(axis=1))
        scores = np.where(valid, aggregate(cosines), -np.inf)
        order = np.lexsort((ids, -scores), axis=1)[:, :k]
        top_ids = np.take_along_axis(ids, order, axis=1)
        top_scores = np.take_along_axis(scores, order, axis=1)
        top_valid = np.take_along_axis(valid, order, axis=1)
        width = order.shape[1]
        out_ids[rows, :width] = np.where(top_valid, top_ids, -1)
        out_scores[rows, :width] = np.where(top_valid, top_scores, np.nan)
    return Neighbours(similarity=similarity, ids=out_ids, scores=out_scores)


def index_fetcher(indexes: dict[str, faiss.Index]):
    """fetch(block, ids) reading the stored vectors of ``indexes`` (flat or ivf with direct map)."""
    return lambda block, ids: indexes[block].reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))


def search_blocks(indexes: dict[str, faiss.Index], queries: dict[str, np.ndarray], k: int = 5) -> Neighbours:
    """Search every block's index; re-rank the union of per-block candidates exactly."""
    candidates = block_candidates(indexes, queries, k)
    return rerank(candidates, {b: queries[b] for b in indexes}, index_fetcher(indexes), k)


def max_similarity(indexes: dict[str, faiss.Index], queries: dict[str, np.ndarray]) -> np.ndarray:
    """Paper similarity only (geometric mean of per-block maximum cosines), for calibration."""
    per_block = [indexes[b].search(np.ascontiguousarray(queries[b], dtype=np.float32), 1)[0][:, 0] for b in indexes]
    return aggregate(np.stack(per_block, axis=1))


def tile_margins(scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Margins [tiles, depth]: each query tile's hit cosines (``scores``, best first; ``ids`` -1 where there is
    no hit) less the tile's deepest hit, i.e. how far a hit stands above the tile's typical neighbours; -inf where
    there is no hit. A tile of background or generic tissue is about as near many training tiles as its best one,
    a copied tile far nearer its source (docs/method.md §7.23)."""
    found = ids >= 0
    deepest = np.min(np.where(found, scores, np.inf), axis=1, keepdims=True)
    return np.where(found, scores - deepest, -np.inf)
