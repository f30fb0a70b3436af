"""Detection metrics (AUROC, AUPRC) and the baselines the benchmark compares against.

Per-sample baseline: non-whitened feature cosine (the pixel-correlation baseline is in pearson.py).
Set-level baselines on feature vectors: FID, KID (cubic polynomial kernel), Vendi score,
AuthPct (Alaa et al. 2022) and the CT-score (Meehan et al. 2020), in numpy (k-means by FAISS).
"""

from __future__ import annotations

import faiss
import numpy as np

from .scoring import aggregate
from .whitening import l2_normalize

# ---------------------------------------------------------------- detection metrics


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties count 1/2."""
    pos = np.asarray(positive, dtype=np.float64).ravel()
    neg = np.asarray(negative, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    scores = np.concatenate([pos, neg])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties (1-based)
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + 1 + end) / 2.0
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def auprc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Average precision: sum over distinct thresholds (high to low) of ΔRecall × Precision."""
    pos = np.asarray(positive, dtype=np.float64).ravel()
    neg = np.asarray(negative, dtype=np.float64).ravel()
    if pos.size == 0:
        return float("nan")
    scores = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last_of_tie = np.concatenate([np.flatnonzero(np.diff(scores)), [len(scores) - 1]])
    tp = np.cumsum(labels)[last_of_tie]
    predicted = last_of_tie + 1.0
    precision = tp / predicted
    recall = tp / pos.size
    previous = np.concatenate([[0.0], recall[:-1]])
    return float(np.sum((recall - previous) * precision))


# ---------------------------------------------------------------- per-sample baselines


def raw_cosine_similarity(query: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> np.ndarray:
    """Geometric mean over blocks of the maximum non-whitened cosine to the reference."""
    per_block = [(l2_normalize(query[b]) @ l2_normalize(reference[b]).T).max(axis=1) for b in reference]
    return aggregate(np.stack(per_block, axis=1))


# ---------------------------------------------------------------- set-level baselines


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def fid(reference: np.ndarray, query: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets."""
    a, b = np.asarray(reference, np.float64), np.asarray(query, np.float64)
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _sqrt_psd(cov_a)
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_sqrt = np.sum(np.sqrt(np.clip(cross, 0.0, None)))
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt)


def kid(reference: np.ndarray, query: np.ndarray) -> float:
    """Unbiased squared MMD with the cubic polynomial kernel k(x, y) = (x·y / d + 1)^3."""
    a, b = np.asarray(reference, np.float64), np.asarray(query, np.float64)
    d = a.shape[1]
    m, n = len(a), len(b)
    k_aa = (a @ a.T / d + 1.0) ** 3
    k_bb = (b @ b.T / d + 1.0) ** 3
    k_ab = (a @ b.T / d + 1.0) ** 3
    term_a = (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
    term_b = (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
    return float(term_a + term_b - 2.0 * k_ab.mean())


def vendi(features: np.ndarray) -> float:
    """Vendi score: exp of the Shannon entropy of the eigenvalues of the cosine kernel / n."""
    x = l2_normalize(np.asarray(features, np.float64)).astype(np.float64)
    values = np.linalg.eigvalsh(x @ x.T / len(x))
    values = values[values > 1e-12]
    return float(np.exp(-np.sum(values * np.log(values))))


def _pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a**2).sum(axis=1)[:, None] + (b**2).sum(axis=1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.clip(sq, 0.0, None))


def auth_pct(reference: np.ndarray, query: np.ndarray) -> float:
    """AuthPct: percent of queries farther from their nearest reference t than t is from its own
    nearest other reference."""
    a, b = np.asarray(reference, np.float64), np.asarray(query, np.float64)
    ref_ref = _pairwise_distances(a, a)
    np.fill_diagonal(ref_ref, np.inf)
    own = ref_ref.min(axis=1)
    query_ref = _pairwise_distances(b, a)
    nearest = query_ref.argmin(axis=1)
    authentic = query_ref[np.arange(len(b)), nearest] > own[nearest]
    return float(100.0 * authentic.mean())


def kmeans(x: np.ndarray, k: int, seed: int = 0, iterations: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """FAISS k-means of the rows of ``x`` [n, d]: (centroids [k, d], labels [n]).

    The centroids are read back from the assignment index, not through ``faiss.Kmeans``: its
    conversion of FAISS vectors fails when SimpleITK's SWIG types were loaded first.
    """
    data = np.ascontiguousarray(x, dtype=np.float32)
    clustering = faiss.Clustering(data.shape[1], k)
    clustering.niter, clustering.seed = iterations, seed
    clustering.min_points_per_centroid, clustering.max_points_per_centroid = 1, max(256, len(data))
    assign = faiss.IndexFlatL2(data.shape[1])
    clustering.train(data, assign)
    _, labels = assign.search(data, 1)
    return assign.reconstruct_n(0, k).astype(np.float64), labels[:, 0].astype(np.int64)


def ct_score(
    reference: np.ndarray, heldout: np.ndarray, query: np.ndarray, cells: int = 5, min_per_cell: int = 5, seed: int = 0
) -> float:
    """Meehan et al. (2020) C_T: cell-weighted Mann-Whitney Z of query vs held-out distances to the reference.

    The reference is partitioned into ``cells`` k-means cells; in each cell, the distance of every
    held-out and query sample (assigned to its nearest centroid) to its nearest reference sample
    of that cell is computed, and Z_U compares them (positive: queries farther than real held-out
    data, negative: queries closer, i.e. copying). Cells with fewer than ``min_per_cell`` held-out
    or query samples are skipped; the rest are weighted by their share of held-out samples.
    """
    a, p, q = (np.asarray(v, np.float64) for v in (reference, heldout, query))
    cells = max(1, min(cells, len(a) // 2))
    centroids, ref_labels = kmeans(a, cells, seed=seed)
    p_labels = _pairwise_distances(p, centroids).argmin(axis=1)
    q_labels = _pairwise_distances(q, centroids).argmin(axis=1)
    total, weight = 0.0, 0.0
    for j in range(cells):
        cell_ref = a[ref_labels == j]
        p_cell, q_cell = p[p_labels == j], q[q_labels == j]
        if len(cell_ref) == 0 or len(p_cell) < min_per_cell or len(q_cell) < min_per_cell:
            continue
        dp = _pairwise_distances(p_cell, cell_ref).min(axis=1)
        dq = _pairwise_distances(q_cell, cell_ref).min(axis=1)
        m, n = len(dq), len(dp)
        # U counts pairs (q, p) with the query farther than the held-out sample (ties 1/2).
        u = auroc(dq, dp) * m * n
        z = (u - m * n / 2.0) / np.sqrt(m * n * (m + n + 1) / 12.0)
        share = len(p_cell) / len(p)
        total += share * z
        weight += share
    return float(total / weight) if weight > 0 else float("nan")
