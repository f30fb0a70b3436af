"""The detection benchmark: metrics, augmentations, the by-subject protocol, baselines and a small real run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from MemorizationIndexLib.augment import CONDITIONS, augment_slice
from MemorizationIndexLib.transforms import rotate
from MemorizationIndexLib.baselines import auprc, auroc, auth_pct, ct_score, fid, kid, kmeans, vendi
from MemorizationIndexLib.benchmark import DatasetSpec, prepare_dataset, split_subjects
from MemorizationIndexLib.cli import main
from MemorizationIndexLib.errors import UserError
from MemorizationIndexLib.pearson import max_pixel_correlation, pixel_correlation


# ---------------------------------------------------------------- metrics on hand-checkable inputs

def test_auroc_hand_computed():
    # pairs (pos > neg): 0.9>0.7, 0.9>0.85, 0.8>0.7, 0.8<0.85 -> 3/4
    assert auroc([0.9, 0.8], [0.7, 0.85]) == pytest.approx(0.75)
    assert auroc([1.0, 2.0], [0.0]) == 1.0
    assert auroc([0.0], [1.0, 2.0]) == 0.0
    assert auroc([0.5], [0.5]) == pytest.approx(0.5)  # a tie counts one half
    assert auroc([0.5, 0.7], [0.5, 0.1]) == pytest.approx((0.5 + 1 + 1 + 1) / 4)


def test_auprc_hand_computed():
    # ranking P(0.9) N(0.8) P(0.6) N(0.5): recall 0.5 at precision 1, recall 1 at precision 2/3
    assert auprc([0.9, 0.6], [0.8, 0.5]) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert auprc([0.9, 0.8], [0.1, 0.2, 0.3]) == pytest.approx(1.0)
    assert auprc([0.5], [0.5]) == pytest.approx(0.5)  # tied scores form one threshold
    assert auprc([0.1], [0.9, 0.8, 0.7]) == pytest.approx(0.25)


# ---------------------------------------------------------------- augmentations

@pytest.fixture()
def image() -> np.ndarray:
    rng = np.random.default_rng(3)
    img = np.zeros((40, 48), np.float32)
    img[8:30, 10:40] = rng.uniform(0.2, 1.0, size=(22, 30))
    return img


def test_condition_names():
    assert CONDITIONS == ("clean", "noise01", "noise02", "intensity", "rot3", "rot5", "hflip", "vflip")


def test_flips_are_exact(image):
    rng = np.random.default_rng(0)
    assert np.array_equal(augment_slice(image, "hflip", rng)[0], image[:, ::-1])
    assert np.array_equal(augment_slice(image, "vflip", rng)[0], image[::-1, :])
    assert np.array_equal(augment_slice(image, "clean", rng)[0], image)


def test_rotation_angles_within_bounds(image):
    for condition, limit in (("rot3", 3.0), ("rot5", 5.0)):
        rng = np.random.default_rng(1)
        angles = np.array([augment_slice(image, condition, rng)[1] for _ in range(200)])
        assert np.all(np.abs(angles) <= limit)
        assert np.abs(angles).max() > 0.8 * limit  # uses the whole range
        assert (angles < 0).any() and (angles > 0).any()


def test_rotation_geometry(image):
    assert np.allclose(rotate(image, 0.0), image, atol=1e-6)
    square = np.zeros((21, 21), np.float32)
    square[2:8, 10] = 1.0  # a vertical bar above the centre
    turned = rotate(square, 90.0)
    assert np.allclose(turned, np.rot90(square, k=1), atol=1e-5) or np.allclose(turned, np.rot90(square, k=-1), atol=1e-5)
    small = rotate(image, 4.0)
    assert small.shape == image.shape and small.min() >= 0.0 and small.max() <= image.max() + 1e-6  # bilinear: no overshoot


def test_noise_is_clipped_and_has_the_right_sigma(image):
    for condition, sigma in (("noise01", 0.01), ("noise02", 0.02)):
        out, param = augment_slice(np.full((200, 200), 0.5, np.float32), condition, np.random.default_rng(2))
        assert param == sigma and abs(out.std() - sigma) < 0.1 * sigma
        edge, _ = augment_slice(image, condition, np.random.default_rng(2))
        assert edge.min() >= 0.0 and edge.max() <= 1.0
        assert (edge == 0.0).any()  # background noise was clipped at 0


def test_intensity_scaling(image):
    rng = np.random.default_rng(4)
    for _ in range(20):
        out, factor = augment_slice(image, "intensity", rng)
        assert 0.9 <= factor <= 1.1
        assert np.allclose(out, image * factor)


def test_auroc_and_auprc_agree_with_scikit_learn_on_tied_scores():
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn (a test dependency) is not installed")
    rng = np.random.default_rng(7)
    for _ in range(300):
        positive = rng.integers(0, 6, size=rng.integers(1, 40)).astype(float)  # few levels: many ties
        negative = rng.integers(0, 6, size=rng.integers(1, 40)).astype(float)
        labels = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
        scores = np.r_[positive, negative]
        assert abs(auroc(positive, negative) - metrics.roc_auc_score(labels, scores)) < 1e-12
        assert abs(auprc(positive, negative) - metrics.average_precision_score(labels, scores)) < 1e-12


def test_faiss_kmeans_separates_clusters():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (100, 8)), rng.normal(10, 1, (100, 8))])
    centroids, labels = kmeans(x, 2, seed=0)
    assert centroids.shape == (2, 8) and sorted(np.bincount(labels)) == [100, 100]
    assert len(set(labels[:100])) == 1 and len(set(labels[100:])) == 1


# ---------------------------------------------------------------- set-level baselines

def test_set_level_baselines_behave():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(120, 6))
    heldout = rng.normal(size=(120, 6))
    copies = reference[:60] + rng.normal(scale=1e-3, size=(60, 6))
    far = rng.normal(size=(60, 6)) * 3 + 2
    # CT-score sign convention: copying (queries closer to the reference than held-out data) is negative
    assert ct_score(reference, heldout, copies, cells=3) < -3
    assert ct_score(reference, heldout, far, cells=3) > 3
    assert abs(ct_score(reference, heldout, rng.normal(size=(120, 6)), cells=3)) < 3
    assert auth_pct(reference, reference[:30]) == 0.0  # exact copies are inauthentic
    assert auth_pct(reference, far + 50) == 100.0
    assert fid(reference, reference) == pytest.approx(0.0, abs=1e-6)
    assert fid(reference, far) > fid(reference, heldout)
    assert kid(reference, far) > kid(reference, heldout)
    assert vendi(np.ones((10, 4))) == pytest.approx(1.0)
    assert vendi(np.eye(5)) == pytest.approx(5.0)


def test_pixel_correlation_is_pearson():
    rng = np.random.default_rng(1)
    refs = rng.uniform(size=(3, 8, 8))
    query = 2.0 * refs[1:2] + 0.5  # affine copy: correlation 1
    assert max_pixel_correlation(query, refs)[0] == pytest.approx(1.0)


# ---------------------------------------------------------------- protocol

def test_split_subjects_is_disjoint_and_seeded():
    subjects = [f"s{i:02d}" for i in range(11)]
    ref, test = split_subjects(subjects, seed=5, name="x")
    assert not set(ref) & set(test) and set(ref) | set(test) == set(subjects)
    assert len(ref) == 6 and len(test) == 5
    assert split_subjects(subjects, seed=5, name="x") == (ref, test)
    assert split_subjects(subjects, seed=6, name="x") != (ref, test)
    assert split_subjects(["a", "a", "b"], seed=0) in ((["a"], ["b"]), (["b"], ["a"]))
    with pytest.raises(UserError):
        split_subjects(["only", "only"], seed=0)


def test_prepare_dataset_splits_by_subject_with_exact_duplicate_counts(shared_data):
    spine = sorted((shared_data / "spine" / "myosegmentum").glob("*.nii.gz"))[:8]
    levels = (0.1, 0.25, 0.5)
    prepared = prepare_dataset(DatasetSpec("spine", [str(p) for p in spine]), slices_per_split=20, levels=levels, conditions=("clean", "vflip"), seed=3)
    assert not set(prepared.reference_provenance.subject) & set(prepared.test_slice_subjects)
    assert set(prepared.reference_subjects).isdisjoint(prepared.test_subjects)
    assert prepared.n == 20 and len(prepared.reference_slices) == 20
    assert [prepared.n_duplicates(level) for level in levels] == [2, 5, 10]
    assert len(prepared.duplicate_rows) == 10 and len(set(prepared.duplicate_rows.tolist())) == 10  # without replacement
    assert len(set(prepared.replaced_positions.tolist())) == 10
    for condition in ("clean", "vflip"):
        assert len(prepared.queries[condition]) == 20 + 10
    first_dup = prepared.queries["clean"][20]
    assert np.array_equal(prepared.queries["vflip"][20], first_dup[::-1])


def test_knee_pattern_groups_echoes_into_two_subjects(shared_data):
    prepared = prepare_dataset(
        DatasetSpec("knee", [str(shared_data / "knee")], r"(pykneer-s01|pymskt-s02)"), slices_per_split=10, levels=(0.3,), conditions=("clean",), seed=0,
    )
    assert sorted(prepared.reference_subjects + prepared.test_subjects) == ["pykneer-s01", "pymskt-s02"]
    assert any("1 reference subject(s) vs 1 test subject(s)" in note for note in prepared.notes)


def test_cli_rejects_bad_input(tmp_path, capsys):
    assert main(["benchmark", "--dataset", "nopath", "--out", str(tmp_path / "o")]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err
    assert main(["benchmark", "--dataset", "a=/does/not/exist", "--levels", "0.5,2", "--out", str(tmp_path / "o")]) == 2
    assert main(["benchmark", "--dataset", "a=x", "--conditions", "clean,blur", "--out", str(tmp_path / "o")]) == 2
    assert main(["benchmark", "--dataset", "a=x", "--subject-pattern", "b=(.*)", "--out", str(tmp_path / "o")]) == 2


# ---------------------------------------------------------------- a small real run

def test_small_real_benchmark_run(shared_data, tmp_path):
    out = tmp_path / "bench"
    spine = ",".join(str(p) for p in sorted((shared_data / "spine" / "myosegmentum").glob("*.nii.gz"))[:8])
    code = main(["benchmark", "--dataset", f"spine={spine}", "--out", str(out), "--slices-per-split", "40",
                 "--conditions", "clean,hflip", "--levels", "0.3", "--seed", "1"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["seed"] == 1 and results["settings"]["conditions"] == ["clean", "hflip"]
    per = results["per_sample"]
    assert {r["method"] for r in per} == {"mi", "mi_paper", "cosine_raw", "pixel_corr"}
    for row in per:
        assert set(row) == {"dataset", "condition", "level", "method", "auroc", "auprc", "n_dup", "n_novel"}
        assert row["n_dup"] == 12 and row["n_novel"] == 28
    mi = {r["condition"]: r for r in per if r["method"] == "mi"}
    assert mi["clean"]["auroc"] >= 0.99 and mi["clean"]["auprc"] >= 0.95
    assert mi["hflip"]["auroc"] >= 0.99  # flipped references are indexed
    assert {r["metric"] for r in results["set_level"]} >= {"mean_mi", "mean_oni", "flagged_fraction", "ct_score", "auth_pct", "fid", "kid", "vendi"}
    assert {(r["condition"], r["level"]) for r in results["provenance"]} == {("clean", 0.3), ("hflip", 0.3)}
    assert all(r["top1_accuracy"] >= 0.99 for r in results["provenance"])
    assert results["false_positive_rate"][0]["dataset"] == "spine" and 0.0 <= results["false_positive_rate"][0]["value"] <= 1.0
    markdown = (out / "results.md").read_text()
    assert "memorization-index benchmark --dataset" in markdown and "Table 4" in markdown


def test_pixel_correlation_of_two_images():
    rng = np.random.default_rng(4)
    a, b = rng.random((12, 9)), rng.random((12, 9))
    assert pixel_correlation(a, b) == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    assert pixel_correlation(a, 3.0 * a - 1.0) == pytest.approx(1.0)
    assert pixel_correlation(a, np.full_like(a, 2.0)) == 0.0  # a constant image correlates with nothing
