"""The Ray engine gives the single-machine results exactly (local Ray with 2 CPUs)."""

from __future__ import annotations

import json

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is optional: pip install 'memorization-index[ray]'")
pytest.importorskip("ray.data", reason="Ray Data is optional: pip install 'memorization-index[ray]'")

import SimpleITK as sitk

from MemorizationIndexLib import search
from MemorizationIndexLib.audit import audit_paths
from MemorizationIndexLib.index_build import BuildOptions, build_index
from MemorizationIndexLib.ray_engine import RaySearcher, build_index_ray, init_ray
from MemorizationIndexLib.reference_index import ReferenceIndex


@pytest.fixture(scope="module")
def local_ray():
    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def _volume(seed: int, n_slices: int = 6, size: int = 40) -> sitk.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    array = np.zeros((n_slices, size, size), np.float32)
    for k in range(n_slices):
        for _ in range(3):
            cy, cx, r = rng.uniform(8, size - 8, 2).tolist() + [rng.uniform(3, 9)]
            array[k] += ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) * rng.uniform(50, 200)
        array[k] += rng.uniform(0, 5, (size, size))
    return sitk.GetImageFromArray(array)


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("volumes")
    train = []
    for subject in range(4):
        path = folder / f"sub-{subject:02d}.nii.gz"
        sitk.WriteImage(_volume(subject), str(path))
        train.append(path)
    holdout = folder / "holdout.nii.gz"
    sitk.WriteImage(_volume(50), str(holdout))
    query = folder / "generated.nii.gz"
    copy = sitk.GetArrayFromImage(_volume(99))
    copy[:3] = sitk.GetArrayFromImage(_volume(1))[:3]  # three memorised slices
    sitk.WriteImage(sitk.GetImageFromArray(copy), str(query))
    return train, holdout, query


def test_ray_search_equals_local_search(local_ray):
    rng = np.random.default_rng(0)
    reference = {b: rng.standard_normal((3000, d)).astype(np.float32) for b, d in (("a", 16), ("b", 24))}
    reference = {b: v / np.linalg.norm(v, axis=1, keepdims=True) for b, v in reference.items()}
    queries = {
        b: np.concatenate(
            [
                v[:40] + 0.05 * rng.standard_normal((40, v.shape[1])).astype(np.float32),
                rng.standard_normal((20, v.shape[1])).astype(np.float32),
            ]
        )
        for b, v in reference.items()
    }
    queries = {b: (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32) for b, q in queries.items()}
    for build in (search.build_flat_index, search.build_ivf_index):
        indexes = {b: build(v) for b, v in reference.items()}
        flat = {b: search.build_flat_index(v) for b, v in reference.items()}
        expected = search.search_blocks(flat, queries, k=5)
        got = RaySearcher(indexes, n_shards=3)(queries, k=5)
        assert np.array_equal(got.ids, expected.ids)
        assert np.array_equal(got.similarity, expected.similarity)
        assert np.array_equal(got.scores, expected.scores, equal_nan=True)


def test_ray_build_and_audit_identical_to_local(local_ray, volumes, tmp_path):
    train, holdout, query = volumes
    # A holdout null keeps the test fast (the train-split null of a tiny set needs many splits).
    local = build_index(train, tmp_path / "local", BuildOptions(holdout_paths=[holdout]))
    remote = build_index_ray(train, tmp_path / "ray", BuildOptions(holdout_paths=[holdout], batch_size=7))

    def manifest(p):
        return json.loads((p / "manifest.json").read_text())["files"]

    # Bit-identical index files (features, whitening, FAISS index, calibration, provenance).
    assert manifest(local.path) == manifest(remote.path)
    a = audit_paths(tmp_path / "local", [query], tmp_path / "audit-local")
    b = audit_paths(tmp_path / "local", [query], tmp_path / "audit-ray", engine="ray")
    assert a[0].scores == b[0].scores and a[0].neighbours == b[0].neighbours
    for name in ("slices.csv", "neighbors.csv"):
        assert (tmp_path / "audit-local" / name).read_text() == (tmp_path / "audit-ray" / name).read_text()
    assert all(s.nn_source.endswith("sub-01.nii.gz") and s.nn_slice == s.slice for s in a[0].scores[:3])
    assert ReferenceIndex.load(tmp_path / "ray").n_reference_slices == local.n_reference_slices
