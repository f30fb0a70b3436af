"""Unit tests of the core maths: whitener, scores and calibration, manifest checks, axis choice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from MemorizationIndexLib.calibration import kept_out, split_groups, train_split_null
from MemorizationIndexLib.errors import UserError
from MemorizationIndexLib.index_build import build_index_from_features
from MemorizationIndexLib.machine_info import describe, machine
from MemorizationIndexLib.order_statistics import percentiles
from MemorizationIndexLib.preprocess import (
    PreprocessSettings,
    crop_foreground,
    prepare_batch,
    smoothing_matrix,
    to_square,
)
from MemorizationIndexLib.reference_index import EncoderInfo, Provenance, ReferenceIndex
from MemorizationIndexLib.scoring import NullModel, Threshold, aggregate, mi_from_z, oni_from_z
from MemorizationIndexLib.transforms import REFERENCE_COPIES, bilinear_weights, reference_copy, resize_bilinear, rotate
from MemorizationIndexLib.volume_cache import VOLUME_CACHE_SIZE
from MemorizationIndexLib.volumes import axis_name, read_image, resolve_axis
from MemorizationIndexLib.whitening import ShrinkageWhitener, l2_normalize, ledoit_wolf_shrinkage


def test_whitener_whitens_well_sampled_data() -> None:
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(8, 8))
    x = rng.normal(size=(20000, 8)) @ mixing + 3.0
    whitener = ShrinkageWhitener(shrinkage=0.0, eps=0.0).fit(x)
    white = (x - whitener.mean_) @ whitener.whitening_matrix_
    np.testing.assert_allclose(np.cov(white, rowvar=False, bias=True), np.eye(8), atol=1e-3)
    # ZCA: the whitening matrix is symmetric
    np.testing.assert_allclose(whitener.whitening_matrix_, whitener.whitening_matrix_.T, atol=1e-5)


def test_shrinkage_keeps_few_samples_well_conditioned() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 200))  # fewer samples than dimensions
    shrunk = ShrinkageWhitener().fit(x)
    raw = ShrinkageWhitener(shrinkage=0.0, eps=1e-6).fit(x)
    assert 0.5 < shrunk.shrinkage_ <= 1.0  # isotropic data: shrink strongly towards the identity
    assert np.linalg.cond(shrunk.whitening_matrix_) < 10
    assert np.linalg.cond(raw.whitening_matrix_) > 100  # the paper's raw ZCA amplifies empty directions


def test_ledoit_wolf_matches_formula_on_small_example() -> None:
    x = np.array([[1.0, 2.0], [2.0, 1.0], [3.0, 5.0], [0.0, -1.0]])
    centered = x - x.mean(axis=0)
    cov = centered.T @ centered / len(x)
    mu = np.trace(cov) / 2
    delta = np.sum((cov - mu * np.eye(2)) ** 2)
    beta = sum(np.sum((np.outer(r, r) - cov) ** 2) for r in centered) / len(x) ** 2
    assert ledoit_wolf_shrinkage(centered, cov) == pytest.approx(min(beta, delta) / delta)


def test_whitener_state_round_trip_and_unit_norm() -> None:
    x = np.random.default_rng(2).normal(size=(30, 5))
    whitener = ShrinkageWhitener().fit(x)
    again = ShrinkageWhitener.from_state(whitener.state())
    np.testing.assert_array_equal(whitener.transform(x), again.transform(x))
    np.testing.assert_allclose(np.linalg.norm(again.transform(x), axis=1), 1.0, atol=1e-5)
    assert np.all(l2_normalize(np.zeros((2, 3))) == 0)


def test_aggregate_is_geometric_mean_with_negative_cosines_clamped() -> None:
    assert aggregate(np.array([0.25, 1.0])) == pytest.approx(0.5, abs=1e-5)
    assert aggregate(np.array([-0.3, 0.9])) == pytest.approx(np.sqrt(1e-6 * (0.9 + 1e-6)), rel=1e-3)
    assert np.isfinite(aggregate(np.array([[-1.0, -1.0]]))).all()


def test_scores_follow_the_definitions() -> None:
    z = np.array([-2.0, 0.0, 3.0])
    np.testing.assert_allclose(mi_from_z(z), (1 + np.tanh(z)) / 2)
    np.testing.assert_allclose(oni_from_z(z), -np.tanh(z))
    np.testing.assert_allclose(mi_from_z(z), (1 - oni_from_z(z)) / 2)
    assert mi_from_z(0.0) == 0.5


def test_p_value_has_plus_one_correction_and_threshold_agrees() -> None:
    null = NullModel(np.arange(1, 1000, dtype=float) / 1000)  # 999 scores 0.001 .. 0.999
    assert null.p_value(np.array([2.0]))[0] == pytest.approx(1 / 1000)
    assert null.p_value(np.array([0.0]))[0] == pytest.approx(1.0)
    assert null.p_value(np.array([0.999]))[0] == pytest.approx(2 / 1000)
    threshold = null.threshold(0.01)
    probes = np.linspace(0.9, 1.0, 1001)
    flagged = null.p_value(probes) < 0.01
    np.testing.assert_array_equal(flagged, probes > threshold.similarity)
    assert threshold.mi == pytest.approx(mi_from_z((threshold.similarity - null.mean) / null.std))
    assert null.threshold(1e-4).similarity == float("inf")  # 999 scores cannot support alpha 1e-4


def test_threshold_dict_round_trip() -> None:
    for threshold in (NullModel(np.linspace(0.0, 1.0, 999)).threshold(0.01), NullModel(np.arange(9.0)).threshold(1e-4)):
        as_dict = threshold.to_dict()
        assert list(as_dict) == ["alpha", "similarity", "z", "mi", "oni"]
        assert Threshold.from_dict(json.loads(json.dumps(as_dict))) == threshold  # infinities too
    assert Threshold.from_dict({"alpha": "0.5", "similarity": 1, "z": 0, "mi": 0.5, "oni": 0}).alpha == 0.5
    with pytest.raises(KeyError):
        Threshold.from_dict({"alpha": 0.1})
    with pytest.raises(ValueError):
        Threshold.from_dict({"alpha": "x", "similarity": 1, "z": 0, "mi": 0.5, "oni": 0})


def _torch_resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(image))[None, None]
    return F.interpolate(tensor, size=shape, mode="bilinear", align_corners=False, antialias=True)[0, 0].numpy()


def test_bilinear_weights_are_torchs_antialiased_bilinear_exactly() -> None:
    for n_in, n_out in ((1, 5), (7, 3), (37, 224), (224, 224), (225, 224), (512, 224), (300, 96), (53, 20)):
        identity = torch.eye(n_in, dtype=torch.float64)
        assert np.array_equal(bilinear_weights(n_in, n_out), _torch_resize(identity, (n_out, n_in)))


def test_resize_bilinear_matches_torch_up_and_down() -> None:
    image = np.random.default_rng(1).random((37, 53)).astype(np.float32)
    for shape in ((64, 64), (20, 90), (5, 7), (37, 200)):
        resized = resize_bilinear(image, shape)
        assert resized.shape == shape and resized.dtype == np.float32
        np.testing.assert_allclose(resized, _torch_resize(image, shape), atol=1e-5)
    assert np.array_equal(resize_bilinear(image, image.shape), image)
    np.testing.assert_allclose(resize_bilinear(np.full((30, 40), 3.0), (7, 90)), 3.0, rtol=1e-6)  # no ringing
    with pytest.raises(ValueError, match="2D"):
        resize_bilinear(np.zeros((2, 3, 4)), (5, 5))


def test_smoothing_matrix_is_a_replicate_padded_gaussian_convolution() -> None:
    sigma, size = 3.0, 40
    radius = round(3 * sigma)
    taps = np.arange(-radius, radius + 1)
    kernel = np.exp(-(taps**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    column = np.random.default_rng(0).random(size)
    padded = np.concatenate([np.full(radius, column[0]), column, np.full(radius, column[-1])])
    expected = np.convolve(padded, kernel, mode="valid")
    matrix = smoothing_matrix(size, sigma).numpy()
    np.testing.assert_allclose(matrix @ column, expected, atol=1e-6)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 7, 200, 5000, 37000, 300000])
def test_percentiles_equal_numpy(n: int) -> None:
    rng = np.random.default_rng(n)
    arrays = [
        rng.normal(size=n).astype(np.float32),
        rng.integers(0, 3, n).astype(np.float32),
        np.r_[np.zeros(n - n // 50), rng.exponential(size=n // 50)],
    ]  # mostly background, ties
    for values in arrays:
        for ps in ([0.5, 99.5], [0.0, 100.0], [50.0], [0.01, 99.99]):
            np.testing.assert_allclose(percentiles(values, ps), np.percentile(values, ps), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="empty"):
        percentiles(np.zeros(0), [50.0])


def _prepare_step_by_step(slice2d: np.ndarray, size: int, settings: PreprocessSettings) -> np.ndarray:
    """The preprocessing written out one operation at a time (what prepare_batch folds into matrices)."""
    low, high = np.percentile(slice2d, [settings.low_percentile, settings.high_percentile])
    unit = np.clip((slice2d - low) / (high - low), 0, 1)
    unit = np.clip((unit - settings.background_floor) / (1 - settings.background_floor), 0, 1).astype(np.float32)
    square = torch.from_numpy(to_square(crop_foreground(unit)))[None, None]
    resized = F.interpolate(square, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0, 0]
    smooth = smoothing_matrix(size, settings.smoothing_sigma)
    return (smooth @ resized @ smooth.T).clamp(0, 1).numpy()


def test_prepare_batch_equals_the_step_by_step_preprocessing() -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:150, :90]
    head = ((yy - 70) ** 2 / 60**2 + (xx - 45) ** 2 / 30**2 < 1) * (100 + 20 * np.sin(xx / 4.0))
    slices = [
        head + rng.uniform(0, 5, head.shape),
        (head + rng.uniform(0, 5, head.shape)).T,  # tall, wide
        rng.random((37, 37)) * 50,
        np.pad(rng.random((20, 60)), 40) * 9,
    ]  # no background, small
    settings = PreprocessSettings()
    for size in (224, 96):
        batch = prepare_batch([s.astype(np.float32) for s in slices], size, settings)
        assert batch.shape == (len(slices), 1, size, size) and batch.dtype == np.float32
        for got, slice2d in zip(batch[:, 0], slices):
            np.testing.assert_allclose(
                got, _prepare_step_by_step(slice2d.astype(np.float32), size, settings), atol=2e-5
            )


def test_reference_copies_are_the_slice_its_flips_rotations_and_transposes() -> None:
    image = np.random.default_rng(0).random((20, 30)).astype(np.float32)
    assert REFERENCE_COPIES == ("none", "hflip", "vflip", "rot+4", "rot-4", "transpose", "rot+90", "rot-90")
    assert np.array_equal(reference_copy(image, "transpose"), image.T)
    square = np.zeros((9, 9), np.float32)
    square[0, 4] = 1.0  # top centre: rotate() and the quarter-turn copies agree on the sense of a turn
    for copy, degrees in (("rot+90", 90.0), ("rot-90", -90.0)):
        np.testing.assert_allclose(reference_copy(square, copy), rotate(square, degrees), atol=1e-5)
        assert reference_copy(image, copy).shape == (30, 20)
    assert np.array_equal(reference_copy(image, "none"), image)
    assert np.array_equal(reference_copy(image, "hflip"), image[:, ::-1])
    assert np.array_equal(reference_copy(image, "vflip"), image[::-1])
    np.testing.assert_allclose(reference_copy(image, "rot+4"), rotate(image, 4.0))
    np.testing.assert_allclose(reference_copy(image, "rot-4"), rotate(image, -4.0))
    assert not np.allclose(reference_copy(image, "rot+4"), reference_copy(image, "rot-4"))
    with pytest.raises(ValueError, match="unknown reference copy"):
        reference_copy(image, "rot+7")


def test_split_groups_uses_subjects_or_slabs() -> None:
    np.testing.assert_array_equal(split_groups(np.array(["b", "a", "b"])), [1, 0, 1])
    slabs = split_groups(np.array(["one"] * 40))
    assert len(np.unique(slabs)) == 10 and np.all(np.diff(slabs) >= 0)
    # Two volumes of one person (two echoes), 20 slices each, rows volume by volume, one volume reversed:
    # a slab holds the same slice positions of both volumes.
    places = np.array([[0, k] for k in range(20)] + [[1, k] for k in range(19, -1, -1)])
    by_position = split_groups(np.array(["one"] * 40), places)
    np.testing.assert_array_equal(by_position[:20], np.repeat(np.arange(10), 2))
    np.testing.assert_array_equal(by_position[20:], by_position[:20][::-1])
    np.testing.assert_array_equal(split_groups(np.array(["b", "a", "b"]), places[:3]), [1, 0, 1])  # subjects first
    codes = np.arange(10)
    np.testing.assert_array_equal(kept_out(np.array([0, 5]), codes, slabs=True), [-1, 0, 1, 4, 5, 6])
    np.testing.assert_array_equal(kept_out(np.array([0, 5]), codes, slabs=False), [0, 5])
    np.testing.assert_array_equal(kept_out(np.array([1]), np.arange(3), slabs=True), [1])  # else nothing is left
    few = split_groups(np.array(["one"] * 4), np.array([[0, k] for k in range(4)]))
    np.testing.assert_array_equal(few, [0, 1, 2, 3])  # slabs next to each other are numbered next to each other


def test_null_queries_never_see_their_own_subject() -> None:
    rng = np.random.default_rng(3)
    subjects = np.repeat(np.arange(6), 10)
    features = {"b": rng.normal(size=(60, 16)).astype(np.float32)}
    features["b"][10:20] = features["b"][0:10]  # subjects 0 and 1 are identical twins
    rows = np.arange(60)
    null, _, splits = train_split_null(
        features, rows, rows, subjects.astype(str), ShrinkageWhitener, n_splits=10, seed=0
    )
    assert splits >= 10 and len(null) >= 2000
    assert np.mean(null > 0.99) > 0.05  # twins are found across subjects...
    features["b"][10:20] = rng.normal(size=(10, 16))
    null, _, _ = train_split_null(features, rows, rows, subjects.astype(str), ShrinkageWhitener, n_splits=10, seed=0)
    assert np.max(null) < 0.99  # ...but a slice never matches itself


def test_null_queries_include_the_copies_of_held_out_slices() -> None:
    rng = np.random.default_rng(5)
    originals = np.arange(60)
    copies_of = np.r_[originals, originals]  # rows 60..119 are copies (e.g. flips) of rows 0..59
    features = {"b": rng.normal(size=(120, 16)).astype(np.float32)}
    subjects = np.repeat(np.arange(6), 10).astype(str)
    null, _, splits = train_split_null(features, originals, copies_of, subjects, ShrinkageWhitener, n_splits=10, seed=0)
    assert len(null) == splits * 20  # one held-out subject per split: its 10 slices and their 10 copies


def _tiny_index(tmp_path: Path) -> Path:
    rng = np.random.default_rng(4)
    provenance = Provenance()
    for row in range(40):
        provenance.append(f"/data/s{row // 10}.nii.gz", row % 10, "axial", 0, "none", row, f"s{row // 10}")
    info = EncoderInfo("default", "default:224:b", "0" * 64, 224, ("b",))
    build_index_from_features(
        {"b": rng.normal(size=(40, 8)).astype(np.float32)}, provenance, tmp_path / "index", encoder_info=info
    )
    return tmp_path / "index"


def test_index_from_features_round_trips(tmp_path: Path) -> None:
    index = ReferenceIndex.load(_tiny_index(tmp_path))
    assert index.n_reference_slices == 40 and index.null_type == "train-split"
    assert len(index.null_similarity) >= 2000
    assert not list(tmp_path.glob(".index.tmp-*"))


def test_reference_slices_keep_few_volumes_in_memory(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    volumes = [rng.random((4, 12, 10)).astype(np.float32) for _ in range(VOLUME_CACHE_SIZE + 2)]
    provenance = Provenance()
    for v, array in enumerate(volumes):
        path = tmp_path / f"v{v}.nii.gz"
        sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
        for k in range(len(array)):
            provenance.append(str(path), k, "axial", 0, "none", len(provenance), f"s{v}")
    info = EncoderInfo("default", "default:224:b", "0" * 64, 224, ("b",))
    features = {"b": rng.normal(size=(len(provenance), 8)).astype(np.float32)}
    index = ReferenceIndex.load(
        build_index_from_features(features, provenance, tmp_path / "index", encoder_info=info).path
    )
    for v, array in enumerate(volumes):
        got = index.reference_slice(str(tmp_path / f"v{v}.nii.gz"), 2)
        np.testing.assert_array_equal(got, array[2])
        assert got.base is None  # a copy: it does not keep the whole volume alive
    assert len(index._volume_cache) == VOLUME_CACHE_SIZE
    assert index.reference_slice(str(tmp_path / "v0.nii.gz"), 9) is None  # no such slice


@pytest.mark.parametrize("damage", ["checksum", "version", "missing", "truncated-faiss"])
def test_damaged_index_is_refused(tmp_path: Path, damage: str) -> None:
    path = _tiny_index(tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    if damage == "checksum":
        (path / "config.json").write_text((path / "config.json").read_text().replace('"axial"', '"auto"') + " ")
    elif damage == "version":
        manifest["format_version"] = 99
        (path / "manifest.json").write_text(json.dumps(manifest))
    elif damage == "missing":
        (path / "calibration.npz").unlink()
    else:
        data = (path / "index_b.faiss").read_bytes()
        (path / "index_b.faiss").write_bytes(data[: len(data) // 2])
        manifest["files"]["index_b.faiss"] = __import__("hashlib").sha256(data[: len(data) // 2]).hexdigest()
        (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError) as error:
        ReferenceIndex.load(path)
    assert "\n" not in str(error.value)


def test_existing_output_is_not_overwritten_silently(tmp_path: Path) -> None:
    path = _tiny_index(tmp_path)
    with pytest.raises(UserError, match="already exists"):
        _tiny_index(tmp_path)
    assert (path / "manifest.json").is_file()


def _image(size: tuple[int, int, int], spacing: tuple[float, float, float], direction: np.ndarray) -> sitk.Image:
    image = sitk.Image(list(size), sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetDirection(direction.flatten().tolist())
    return image


def test_axis_choice_in_patient_space() -> None:
    # Index axes permuted: i runs S-I, j runs L-R, k runs A-P (a coronal stack stored oddly).
    direction = np.array([[0.0, 1, 0], [0, 0, 1], [1, 0, 0]])
    image = _image((10, 12, 14), (1.0, 1.0, 3.0), direction)
    assert resolve_axis(image, "auto") == 0 and axis_name(image, 0) == "coronal"
    assert axis_name(image, resolve_axis(image, "axial")) == "axial" and resolve_axis(image, "axial") == 2
    assert axis_name(image, resolve_axis(image, "sagittal")) == "sagittal" and resolve_axis(image, "sagittal") == 1
    # oblique: rotated 20 degrees about the z axis; the axial choice is still k
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    oblique = _image((8, 8, 8), (1.0, 1.0, 1.0), np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]))
    assert resolve_axis(oblique, "axial") == 0 and resolve_axis(oblique, "auto") == 0


def test_axis_choice_on_sagittal_dicom_series(shared_data: Path) -> None:
    image = read_image(shared_data / "knee" / "pymskt-s02" / "dicom_MESE_echo1")
    array_axis = resolve_axis(image, "auto")
    assert image.GetSize()[2] == 24 and array_axis == 0  # 4 mm through-plane spacing
    assert axis_name(image, array_axis) == "sagittal"
    assert resolve_axis(image, "sagittal") == array_axis
    nifti = read_image(shared_data / "knee" / "pymskt-s02" / "MESE_echo1_TE6.3ms.nii.gz")
    assert axis_name(nifti, resolve_axis(nifti, "auto")) == "sagittal"
    assert axis_name(nifti, resolve_axis(nifti, "axial")) == "axial"


FAULTS_SCRIPT = """
import resource, sys
import torch
from MemorizationIndexLib.allocator import keep_freed_memory

def faults_of_64mb_blocks():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        torch.ones(16 << 20).sum()  # 64 MB of float32, as a CNN activation
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

plain = faults_of_64mb_blocks()
changed = keep_freed_memory()
print(changed, plain, faults_of_64mb_blocks())
"""


def test_keep_freed_memory_stops_page_faulting_large_blocks_again() -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "MemorizationIndex")}
    out = subprocess.run(
        [sys.executable, "-c", FAULTS_SCRIPT], capture_output=True, text=True, encoding="utf-8", env=env, check=True
    )
    changed, plain, kept = out.stdout.split()
    if changed != "True":
        pytest.skip("not glibc: keep_freed_memory changes nothing here")
    assert int(plain) > 200_000  # each fresh 64 MB block faults in its 16k pages
    assert int(kept) < int(plain) / 2  # most blocks reuse kept heap memory (a few may still grow it)


def test_a_single_persons_verified_null_keeps_the_slabs_next_to_the_held_out_one_out(monkeypatch) -> None:
    """One person, two volumes of 20 slices (slab = position // 2): a held-out slab is verified against
    neither its own slice positions, in either volume, nor the next slabs' (near-copies of its edge slices)."""
    import MemorizationIndexLib.verified_null as verified_null

    places = np.array([[0, k] for k in range(20)] + [[1, k] for k in range(20)])
    slab = places[:, 1] // 2
    splits: list[tuple[np.ndarray, np.ndarray]] = []

    def recorded(queries, features, reference_rows, *args, **kwargs):
        held = queries.features["b"][:, 0].astype(int)  # each row's feature is its row number
        splits.append((held, np.asarray(reference_rows)))
        return verified_null.VerifiedNull(*(np.zeros(len(held)) for _ in range(5)))

    monkeypatch.setattr(verified_null, "verify_against", recorded)
    features = {"b": np.arange(40, dtype=np.float32)[:, None].repeat(4, axis=1)}
    verified_null.split_verified_null(
        [np.zeros((4, 4))] * 40,
        features,
        np.arange(40),
        np.array(["one"] * 40),
        SimpleNamespace(places=places),
        None,
        None,
        None,
        query_fraction=0.1,
        seed=0,
        n_queries=40,
    )
    assert len(splits) >= 5
    for held, reference in splits:
        [out] = np.unique(slab[held])  # one slab of ten held out per split
        np.testing.assert_array_equal(reference, np.flatnonzero(np.abs(slab - out) > 1))


def test_machine_names_this_host_and_its_numeric_libraries():
    """Benchmarks record where they ran: this host's CPU and core count, and the versions of torch, FAISS and numpy."""
    info = machine()
    assert info["cpu_cores"] == os.cpu_count() and info["cpu"]
    assert (info["torch"], info["numpy"]) == (torch.__version__, np.__version__)
    assert info["torch_threads"] == torch.get_num_threads() and info["ram_gib"] > 0
    line = describe(info)
    assert line.startswith(f"{info['cpu']} ({os.cpu_count()} cores, ") and f"numpy {np.__version__}" in line
    assert (info["gpu"] or "no GPU") in line
