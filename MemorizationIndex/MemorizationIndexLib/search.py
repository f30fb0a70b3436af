"""Exact nearest-neighbour search over per-block FAISS inner-product indexes."""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from .scoring import aggregate


def build_flat_index(vectors: np.ndarray) -> faiss.Index:
    """Exact inner-product index over unit vectors (inner product = cosine)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


@dataclass
class Neighbours:
    """Search result for n queries: paper similarity plus the top-k references by aggregated score."""

    similarity: np.ndarray  # [n] geometric mean over blocks of the per-block maximum cosine
    ids: np.ndarray  # [n, k] reference vector ids, best first (-1 where fewer candidates)
    scores: np.ndarray  # [n, k] aggregated similarity of the query to each of those references


def search_blocks(indexes: dict[str, faiss.Index], queries: dict[str, np.ndarray], k: int = 5) -> Neighbours:
    """Search every block's index; rank the union of per-block candidates by aggregated cosine."""
    blocks = list(indexes)
    n = len(next(iter(queries.values())))
    k_search = min(k, indexes[blocks[0]].ntotal)
    per_block_ids, per_block_max = [], []
    for block in blocks:
        sims, ids = indexes[block].search(np.ascontiguousarray(queries[block], dtype=np.float32), k_search)
        per_block_ids.append(ids)
        per_block_max.append(sims[:, 0])
    similarity = aggregate(np.stack(per_block_max, axis=1))
    candidates = np.concatenate(per_block_ids, axis=1)
    out_ids = np.full((n, k), -1, dtype=np.int64)
    out_scores = np.full((n, k), np.nan, dtype=np.float32)
    for row in range(n):
        unique = np.unique(candidates[row][candidates[row] >= 0])
        cosines = np.stack(
            [indexes[block].reconstruct_batch(unique) @ queries[block][row] for block in blocks], axis=1
        )
        scores = aggregate(cosines)
        order = np.lexsort((unique, -scores))[:k]
        out_ids[row, : len(order)] = unique[order]
        out_scores[row, : len(order)] = scores[order]
    return Neighbours(similarity=similarity, ids=out_ids, scores=out_scores)


def max_similarity(indexes: dict[str, faiss.Index], queries: dict[str, np.ndarray]) -> np.ndarray:
    """Paper similarity only (geometric mean of per-block maximum cosines), for calibration."""
    per_block = [indexes[b].search(np.ascontiguousarray(queries[b], dtype=np.float32), 1)[0][:, 0] for b in indexes]
    return aggregate(np.stack(per_block, axis=1))
