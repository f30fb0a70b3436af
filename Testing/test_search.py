"""Search: flat vs IVF with exact re-ranking, re-ranking exactness, index-kind choice, save/load."""

from __future__ import annotations

import numpy as np
import pytest

from MemorizationIndexLib import search
from MemorizationIndexLib.index_build import build_index_from_features
from MemorizationIndexLib.reference_index import EncoderInfo, Provenance, ReferenceIndex
from MemorizationIndexLib.scoring import aggregate

DIMS = {"stage4": 24, "stage5": 32, "stage6": 48}


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _low_rank(rng: np.random.Generator, n: int, d: int, rank: int = 8) -> np.ndarray:
    return (rng.standard_normal((n, rank)) @ rng.standard_normal((rank, d)) + 0.5 * rng.standard_normal((n, d))).astype(
        np.float32
    )


@pytest.fixture(scope="module")
def planted():
    """Whitened-like unit vectors, 200 planted near-duplicate queries and 100 novel queries."""
    rng = np.random.default_rng(1)
    n = 6000
    reference = {b: _unit(_low_rank(rng, n, d)) for b, d in DIMS.items()}
    sources = rng.choice(n, 200, replace=False)
    queries = {}
    for b, d in DIMS.items():
        copies = reference[b][sources] + 0.02 * rng.standard_normal((200, d)).astype(np.float32)
        queries[b] = np.concatenate([_unit(copies), _unit(_low_rank(rng, 100, d))])
    return reference, sources, queries


def _naive(vectors: dict[str, np.ndarray], queries: dict[str, np.ndarray], k: int):
    """Brute force in float64: per-block maximum and top-k by aggregated cosine over all references."""
    blocks = list(vectors)
    cosines = np.stack([queries[b].astype(np.float64) @ vectors[b].astype(np.float64).T for b in blocks], axis=2)
    similarity = aggregate(cosines.max(axis=1))
    scores = aggregate(cosines)
    return similarity, scores


def test_flat_search_matches_brute_force(planted):
    reference, _, queries = planted
    flat = {b: search.build_flat_index(v) for b, v in reference.items()}
    found = search.search_blocks(flat, queries, k=5)
    similarity, scores = _naive(reference, queries, 5)
    np.testing.assert_allclose(found.similarity, similarity, rtol=1e-5)
    # Re-ranking is exact: every reported score is the aggregated cosine of that reference.
    rows = np.arange(len(found.ids))[:, None]
    np.testing.assert_allclose(found.scores, scores[rows, found.ids], rtol=1e-5, atol=1e-6)
    assert np.all(np.diff(found.scores, axis=1) <= 1e-7)


def test_rerank_picks_best_of_union_and_breaks_ties_by_id():
    blocks = {"a": np.eye(4, dtype=np.float32), "b": np.eye(4, dtype=np.float32)}
    queries = {"a": np.array([[0.6, 0.8, 0, 0]], np.float32), "b": np.array([[0.8, 0.6, 0, 0]], np.float32)}

    def fetch(block, ids):
        return blocks[block][ids]

    found = search.rerank(np.array([[1, 0, 1, -1]]), queries, fetch, k=3)
    # rows 0 and 1 tie at sqrt(0.48); the smaller id comes first, then nothing (-1, nan).
    assert found.ids.tolist() == [[0, 1, -1]]
    assert found.scores[0, 0] == pytest.approx(np.sqrt(0.48), rel=1e-5)
    assert np.isnan(found.scores[0, 2])
    assert found.similarity[0] == pytest.approx(0.8, rel=1e-5)


def test_ivf_gives_flat_results_for_planted_duplicates(planted):
    reference, sources, queries = planted
    flat = {b: search.build_flat_index(v) for b, v in reference.items()}
    ivf = {b: search.build_ivf_index(v, nprobe=8) for b, v in reference.items()}
    assert all(search.index_kind_of(i) == search.IVF for i in ivf.values())
    exact = search.search_blocks(flat, queries, k=5)
    approx = search.search_blocks(ivf, queries, k=5)
    assert np.array_equal(exact.ids[:200, 0], sources)
    assert np.array_equal(approx.ids[:200, 0], sources)
    # Same candidates -> bit-identical similarity and scores (exact re-ranking of stored float32).
    assert np.array_equal(approx.similarity[:200], exact.similarity[:200])
    assert np.array_equal(approx.scores[:200, 0], exact.scores[:200, 0])
    # Novel queries: the approximate similarity never exceeds the exact one.
    assert np.all(approx.similarity[200:] <= exact.similarity[200:] + 1e-12)


def test_index_kind_auto_threshold():
    limit = search.AUTO_IVF_MIN_VECTORS
    assert search.resolve_index_kind("auto", limit) == "flat"
    assert search.resolve_index_kind("auto", limit + 1) == "ivf"
    assert search.resolve_index_kind("flat", 10 * limit) == "flat"
    assert search.resolve_index_kind("ivf", 100) == "ivf"
    with pytest.raises(ValueError):
        search.resolve_index_kind("hnsw", 100)
    assert search.ivf_nlist(1_000_000) == 1024
    assert search.ivf_nlist(200) == 4  # at least 39 training points per cell
    assert search.ivf_nlist(1) == 1


def _features_and_provenance(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    features = {b: _low_rank(rng, n, d) for b, d in DIMS.items()}
    provenance = Provenance()
    for row in range(n):
        provenance.append(f"/data/sub-{row % 20:02d}.nii.gz", row // 20, "axial", 0, "none", row, f"sub-{row % 20:02d}")
    return features, provenance


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_save_load_keeps_kind_and_results(tmp_path, kind):
    features, provenance = _features_and_provenance(3000)
    info = EncoderInfo("default", "default:224:stage4,stage5,stage6", "0" * 64, 224, tuple(DIMS))
    built = build_index_from_features(
        features, provenance, tmp_path / "index", encoder_info=info, null_splits=2, index_kind=kind
    )
    loaded = ReferenceIndex.load(tmp_path / "index")
    assert loaded.index_kind == kind
    assert loaded.config["index_kind"] == search.CONFIG_KIND[kind]
    assert all(search.index_kind_of(i) == kind for i in loaded.indexes.values())
    if kind == "ivf":
        assert loaded.config["ivf"]["nprobe"] == search.DEFAULT_NPROBE
        assert all(i.nprobe == search.DEFAULT_NPROBE for i in loaded.indexes.values())
    queries = loaded.whiten({b: f[:50] for b, f in features.items()})
    a, b = built.search(queries, k=3), loaded.search(queries, k=3)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.similarity, b.similarity)
    assert np.array_equal(b.ids[:, 0], np.arange(50))  # every reference row finds itself
    # Stored vectors are the whitened features, exactly (float32; no compression).
    rows = np.arange(0, 3000, 7)
    for block, index in loaded.indexes.items():
        np.testing.assert_array_equal(
            index.reconstruct_batch(rows), loaded.whiten({k: v[rows] for k, v in features.items()})[block]
        )


def test_auto_kind_in_build_uses_threshold(tmp_path, monkeypatch):
    features, provenance = _features_and_provenance(400, seed=2)
    info = EncoderInfo("default", "default:224:stage4,stage5,stage6", "0" * 64, 224, tuple(DIMS))
    monkeypatch.setattr(search, "AUTO_IVF_MIN_VECTORS", 399)
    index = build_index_from_features(features, provenance, tmp_path / "auto", encoder_info=info, null_splits=2)
    assert index.index_kind == "ivf"
    monkeypatch.setattr(search, "AUTO_IVF_MIN_VECTORS", 400)
    index = build_index_from_features(features, provenance, tmp_path / "auto2", encoder_info=info, null_splits=2)
    assert index.index_kind == "flat"


@pytest.mark.parametrize("probes", [1, 3])
def test_grouped_search_equals_the_index_own_search(probes):
    rng = np.random.default_rng(7)
    stored = rng.standard_normal((3000, 16)).astype(np.float32)
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    index = search.build_ivf_index(stored, nlist=60, nprobe=probes)
    queries = np.concatenate([stored[:50] + 0.01, rng.standard_normal((400, 16)).astype(np.float32)])
    expected_scores, expected_ids = index.search(queries, 70 * probes)  # deeper than some cells: some missing
    scores, ids = search.grouped_search(index, queries, 70 * probes)
    assert (expected_ids == -1).any()
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-6)
    flat = search.build_flat_index(stored)
    np.testing.assert_array_equal(search.grouped_search(flat, queries, 5)[1], flat.search(queries, 5)[1])
