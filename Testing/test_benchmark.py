"""The detection benchmark: metrics, augmentations, the by-subject protocol, baselines and a small real run."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from scipy import ndimage

from MemorizationIndexLib import augment_geometry as geometry
from MemorizationIndexLib import augment_intensity as intensity
from MemorizationIndexLib import augment_partial as partial
from MemorizationIndexLib.augment import (
    ALL_CONDITIONS,
    CHAIN_FAMILIES,
    CONDITIONS,
    GENERATOR_CONDITIONS,
    augment_condition,
    augment_slice,
)
from MemorizationIndexLib.baselines import (
    auprc,
    auroc,
    auth_pct,
    ct_score,
    fid,
    kid,
    kmeans,
    vendi,
)
from MemorizationIndexLib.benchmark import run_benchmark
from MemorizationIndexLib.benchmark_data import DatasetSpec, prepare_dataset, split_subjects
from MemorizationIndexLib.benchmark_stages import (
    COPY_COLUMNS,
    TwoStage,
    by_copied_anatomy,
    copied_anatomy,
    made_of,
)
from MemorizationIndexLib.cli import main
from MemorizationIndexLib.errors import UserError
from MemorizationIndexLib.patch_search import PATCH_CANDIDATES
from MemorizationIndexLib.pearson import max_pixel_correlation, pixel_correlation
from MemorizationIndexLib.preprocess import PreprocessSettings, scale_unit
from MemorizationIndexLib.region_search import NATIVE_ONLY_CANDIDATES, REGION_CANDIDATES
from MemorizationIndexLib.second_stage import DEFAULT_CANDIDATES, Verified
from MemorizationIndexLib.transforms import rotate
from MemorizationIndexLib.volumes import image_slices, read_image, resolve_axis

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
    assert np.allclose(turned, np.rot90(square, k=1), atol=1e-5) or np.allclose(
        turned, np.rot90(square, k=-1), atol=1e-5
    )
    small = rotate(image, 4.0)
    assert (
        small.shape == image.shape and small.min() >= 0.0 and small.max() <= image.max() + 1e-6
    )  # bilinear: no overshoot


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


def test_two_stage_score_follows_the_flag_and_breaks_its_ties():
    flag_p = np.array([1.0, 1.0, 1.0, 1e-6, 1.0, 0.5])
    verified = [Verified(v, -1, None) for v in (0.10, 0.15, 0.10, 0.05, 0.10, 0.0)]
    similarity = np.array([0.30, 0.20, 0.40, 0.10, 0.30, 0.90])
    shortlisted = np.zeros((6, 1), dtype=np.int64)
    stage = TwoStage(flag_p, flag_p < 1e-3, verified, shortlisted, similarity, np.zeros((6, 1), dtype=bool))
    order = np.argsort(-stage.score, kind="stable")
    assert order.tolist() == [3, 5, 1, 2, 0, 4]  # flag_p first, then the verified score, then the similarity
    assert stage.score[0] == stage.score[4]  # equal in all three keys: tied


def test_partial_copies_are_binned_by_the_anatomy_they_carry():
    query = np.zeros((10, 10), np.float32)
    query[:4, :5] = 0.5  # 20 anatomy pixels
    query[:4, 5:] = 0.05  # under the anatomy floor
    truth = np.zeros((10, 10), bool)
    truth[:6, :8] = True  # covers 20 anatomy pixels (and 12 below the floor, 16 of background)
    assert copied_anatomy(truth, query) == pytest.approx(0.2)
    assert copied_anatomy(np.zeros_like(truth), query) == 0.0

    def row(dataset, carried, flagged, rank, iou):
        return {
            "dataset": dataset,
            "copied_anatomy": carried,
            "flagged": flagged,
            "source_rank": rank,
            "copy_box_iou": iou,
        }

    rows = [
        row("brain", 0.004, False, "", 0.0),
        row("brain", 0.015, True, 2, 0.7),
        row("brain", 0.01, False, 9, 0.2),  # a bin's lower edge belongs to it
        row("brain", 0.4, True, 1, 0.9),
        row("brain", "", True, 1, ""),  # not a partial copy
        row("spine", 0.05, True, 1, 0.5),
    ]
    bins = by_copied_anatomy(rows)
    assert [(b["dataset"], b["from"], b["to"]) for b in bins] == [
        ("brain", 0.0, 0.01),
        ("brain", 0.01, 0.02),
        ("brain", 0.05, None),
        ("spine", 0.05, None),
    ]  # empty bins are left out
    assert [(b["copies"], b["flagged"], b["listed"], b["located"]) for b in bins] == [
        (1, 0, 0, 0),
        (2, 1, 2, 1),
        (1, 1, 1, 1),
        (1, 1, 1, 1),
    ]


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
    prepared = prepare_dataset(
        DatasetSpec("spine", [str(p) for p in spine]),
        slices_per_split=20,
        levels=levels,
        conditions=("clean", "vflip"),
        seed=3,
    )
    assert not set(prepared.reference_provenance.subject) & set(prepared.test_slice_subjects)
    assert set(prepared.reference_subjects).isdisjoint(prepared.test_subjects)
    assert prepared.n == 20 and len(prepared.reference_slices) == 20
    assert [prepared.n_duplicates(level) for level in levels] == [2, 5, 10]
    assert (
        len(prepared.duplicate_rows) == 10 and len(set(prepared.duplicate_rows.tolist())) == 10
    )  # without replacement
    assert len(set(prepared.replaced_positions.tolist())) == 10
    for condition in ("clean", "vflip"):
        assert len(prepared.queries[condition]) == 20 + 10
    first_dup = prepared.queries["clean"][20]
    assert np.array_equal(prepared.queries["vflip"][20], first_dup[::-1])


def test_knee_pattern_groups_echoes_into_two_subjects(shared_data):
    prepared = prepare_dataset(
        DatasetSpec("knee", [str(shared_data / "knee")], r"(pykneer-s01|pymskt-s02)"),
        slices_per_split=10,
        levels=(0.3,),
        conditions=("clean",),
        seed=0,
    )
    assert sorted(prepared.reference_subjects + prepared.test_subjects) == ["pykneer-s01", "pymskt-s02"]
    assert any("1 reference subject(s) vs 1 test subject(s)" in note for note in prepared.notes)


def test_cli_rejects_bad_input(tmp_path, capsys):
    assert main(["benchmark", "--dataset", "nopath", "--out", str(tmp_path / "o")]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err
    assert main(["benchmark", "--dataset", "a=/does/not/exist", "--levels", "0.5,2", "--out", str(tmp_path / "o")]) == 2
    capsys.readouterr()
    assert (
        main(["benchmark", "--dataset", "a=x", "--conditions", "clean,blur,sharpen", "--out", str(tmp_path / "o")]) == 2
    )
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "unknown condition(s) sharpen;" in error and "half" in error
    assert main(["benchmark", "--dataset", "a=x", "--subject-pattern", "b=(.*)", "--out", str(tmp_path / "o")]) == 2


@pytest.mark.parametrize(
    ("command", "option", "value", "expected"),
    [
        ("benchmark", "--batch-size", "0", "must be 1 or more (got 0)"),
        ("benchmark", "--seed", "-1", "must be 0 or more (got -1)"),
        ("build-index", "--seed", "-2", "must be 0 or more (got -2)"),
    ],
)
def test_cli_rejects_bad_numbers_before_any_work(shared_data, tmp_path, capsys, command, option, value, expected):
    """A batch size under 1 or a negative seed is a user mistake: one usage error and exit 2 before any file is read
    or written (it used to end in an "internal error" once the data was read and embedded)."""
    knee = str(shared_data / "knee")
    given = ["--dataset", f"knee={knee}"] if command == "benchmark" else [knee]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exited:
        main([command, *given, option, value, "--out", str(out)])
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.endswith(f"argument {option}: {expected}"), error
    assert not out.exists()


# ---------------------------------------------------------------- a small real run


def test_small_real_benchmark_run(shared_data, tmp_path):
    out = tmp_path / "bench"
    spine = ",".join(str(p) for p in sorted((shared_data / "spine" / "myosegmentum").glob("*.nii.gz"))[:8])
    code = main(
        [
            "benchmark",
            "--dataset",
            f"spine={spine}",
            "--out",
            str(out),
            "--slices-per-split",
            "40",
            "--conditions",
            "clean,hflip,half",
            "--levels",
            "0.3",
            "--seed",
            "1",
            "--no-verification",
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["seed"] == 1 and results["settings"]["conditions"] == ["clean", "hflip", "half"]
    assert "--no-verification" in results["command"] and not results["settings"]["verification"]["used"]
    assert results["machine"]["cpu_cores"] == os.cpu_count() and results["machine"]["numpy"] == np.__version__
    assert results["two_stage"] == [] and results["datasets"][0]["verified_null"] is None
    per = [r for r in results["per_sample"] if r["condition"] != "half"]
    assert {r["method"] for r in per} == {"mi", "mi_paper", "cosine_raw", "pixel_corr"}
    for row in per:
        assert set(row) == {"dataset", "condition", "level", "method", "auroc", "auprc", "n_dup", "n_novel"}
        assert row["n_dup"] == 12 and row["n_novel"] == 28
    mi = {r["condition"]: r for r in per if r["method"] == "mi"}
    assert mi["clean"]["auroc"] >= 0.99 and mi["clean"]["auprc"] >= 0.95
    assert mi["hflip"]["auroc"] >= 0.99  # flipped references are indexed
    assert {r["metric"] for r in results["set_level"]} >= {
        "mean_mi",
        "mean_oni",
        "flagged_fraction",
        "ct_score",
        "auth_pct",
        "fid",
        "kid",
        "vendi",
    }
    assert {(r["condition"], r["level"]) for r in results["provenance"]} == {
        ("clean", 0.3),
        ("hflip", 0.3),
        ("half", 0.3),
    }
    assert all(r["top1_accuracy"] >= 0.99 for r in results["provenance"] if r["condition"] != "half")
    assert {r["condition"] for r in results["set_level"]} == {"clean", "hflip"}  # Table 1-3 layouts: the paper's only
    assert [r["method"] for r in results["per_sample"] if r["condition"] == "half"] == ["mi"]
    pooled = [(r["group"], r["n_novel_scored"]) for r in results["false_positive_rate"]]
    assert pooled == [("paper", 80), ("generator", 40)]
    half = [r for r in results["copies"] if r["condition"] == "half"][0]
    assert half["n_duplicates"] == 12 and 0.0 <= half["flagged"] <= 1.0
    markdown = (out / "results.md").read_text()
    assert "memorization-index benchmark --dataset" in markdown and "Table 4" in markdown
    assert f"min on {results['machine']['cpu']} ({os.cpu_count()} cores" in markdown  # the run's machine is named
    table4 = markdown.split("## Sample-level detection, AUROC")[1].split("##")[0]
    assert "| hflip |" in table4 and "half" not in table4
    generator = markdown.split("## Generator-like conditions")[1]
    assert "| spine | half |" in generator and "U[0.3, 0.6]" in generator
    assert "## Both stages" not in markdown


def test_small_real_benchmark_measures_both_stages(shared_data, tmp_path, encoder):
    """The shipped pipeline on a tiny real run: a verified null from the reference pixels, both stages on every
    query; clean copies are flagged with their true source, few novel slices are. The verified null holds every
    reference slice once (24 here), so the bounds on novel slices are loose."""
    spine = [str(p) for p in sorted((shared_data / "spine" / "myosegmentum").glob("*.nii.gz"))[:12]]
    results = run_benchmark(
        [DatasetSpec("spine", spine)],
        tmp_path / "bench",
        encoder=encoder,
        levels=(0.5,),
        conditions=("clean", "transpose", "half"),
        slices_per_split=24,
        seed=1,
        alpha=0.01,
    )
    info = results["datasets"][0]
    assert info["verified_null"]["n"] >= 20 and 0 < info["verified_null"]["threshold"] <= 1
    verification = results["settings"]["verification"]
    assert verification["used"] and verification["k"] == DEFAULT_CANDIDATES
    assert verification["region_candidates"] == REGION_CANDIDATES
    assert verification["patch_candidates"] == PATCH_CANDIDATES
    assert verification["native_only_candidates"] == NATIVE_ONLY_CANDIDATES
    two = {r["condition"]: r for r in results["two_stage"]}
    assert set(two) == {"clean", "transpose", "half"}
    for row in two.values():
        assert row["n_duplicates"] == 12 and row["n_novel"] == 24 and row["dataset"] == "spine"
        for key in ("flagged", "false_positive_rate", "candidate_recall"):
            assert 0.0 <= row[key] <= 1.0
        assert row["top1_flagged"] is None or 0.0 <= row["top1_flagged"] <= 1.0
    assert two["clean"]["flagged"] == 1.0 and two["clean"]["top1_flagged"] == 1.0
    assert two["clean"]["candidate_recall"] == 1.0 and two["transpose"]["candidate_recall"] == 1.0
    # measured: no novel slice flagged in any of the three conditions; half copies 10 of 12
    assert all(row["false_positive_rate"] <= 0.1 for row in two.values())
    assert {"located", "box_iou_mean", "mask_iou_mean"} <= set(two["half"]) and "located" not in two["clean"]
    assert all(0.0 <= two["half"][key] <= 1.0 for key in ("located", "box_iou_mean", "mask_iou_mean"))
    auc = {r["condition"]: r["auroc"] for r in results["per_sample"] if r["method"] == "two_stage"}
    assert set(auc) == {"clean", "transpose", "half"} and all(0.0 <= a <= 1.0 for a in auc.values())
    assert auc["clean"] >= 0.9
    markdown = (tmp_path / "bench" / "results.md").read_text()
    table = markdown.split("## Both stages")[1].split("\n## ")[0]
    assert "| spine | clean |" in table and "| spine | half |" in table
    assert "copy_rows" not in json.loads((tmp_path / "bench" / "results.json").read_text())
    with open(tmp_path / "bench" / "copies.csv", newline="") as handle:
        copies = list(csv.DictReader(handle))
    assert tuple(copies[0]) == COPY_COLUMNS and len(copies) == 3 * 12
    for condition, row in two.items():
        mine = [c for c in copies if c["condition"] == condition]
        assert [int(c["copy"]) for c in mine] == list(range(12)) and {c["dataset"] for c in mine} == {"spine"}
        assert sum(c["flagged"] == "True" for c in mine) == row["n_flagged"]
        assert np.mean([c["source_rank"] != "" for c in mine]) == row["candidate_recall"]
        assert all(float(c["flag_p"]) < 0.01 for c in mine if c["flagged"] == "True")
        assert all((c["copy_box_iou"] != "") == (condition == "half") for c in mine)
        assert all((c["copied_anatomy"] != "") == (condition == "half") for c in mine)
    halves = [c for c in copies if c["condition"] == "half"]
    assert all(
        0.0 < float(c["copied_anatomy"]) <= 0.5 for c in halves
    )  # a half carries anatomy, at most half the slice
    bins = results["partial_by_anatomy"]
    assert {b["dataset"] for b in bins} == {"spine"} and sum(b["copies"] for b in bins) == 12
    assert sum(b["flagged"] for b in bins) == two["half"]["n_flagged"]
    assert "## Partial copies by the anatomy they carry" in markdown
    clean = [c for c in copies if c["condition"] == "clean"]
    assert all(c["verified_is_source"] == "True" and c["source_file"] == c["verified_file"] for c in clean)
    assert all(set(json.loads(c["edit"])) == {"parameter"} for c in clean)
    assert all(set(json.loads(c["edit"])) == {"half"} for c in copies if c["condition"] == "half")
    assert "two_stage mean / min" in markdown.split("## Sample-level detection, AUROC")[1].split("\n## ")[0]


# ---------------------------------------------------------------- generator-like conditions (second group)


@pytest.fixture(scope="module")
def brain_pair(shared_data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A real axial brain slice, its neighbour slice and another person's slice, all [0, 1]."""
    stacks = []
    for subject in ("sub-01", "sub-02"):
        image = read_image(shared_data / "brain" / "ds002748" / f"{subject}_T1w.nii.gz")
        stacks.append(image_slices(image, resolve_axis(image, "auto")))
    k = len(stacks[0]) // 2
    settings = PreprocessSettings()
    return (
        scale_unit(stacks[0][k], settings),
        scale_unit(stacks[0][k + 1], settings),
        scale_unit(stacks[1][len(stacks[1]) // 2], settings),
    )


def _draws(condition: str, x: np.ndarray, n: int, seed: int = 0, **kwargs) -> list:
    rng = np.random.default_rng(seed)
    return [augment_condition(x, condition, rng, **kwargs) for _ in range(n)]


def test_generator_condition_names():
    assert GENERATOR_CONDITIONS == (
        "shift_fill",
        "shift_crop",
        "zoom_in",
        "zoom_out",
        "stretch",
        "rot_large",
        "rot90",
        "transpose",
        "elastic",
        "rician",
        "bias",
        "gamma",
        "blur",
        "lowres",
        "interp",
        "half",
        "quarter",
        "paste",
        "chain",
    )
    assert ALL_CONDITIONS == CONDITIONS + GENERATOR_CONDITIONS and len(set(ALL_CONDITIONS)) == len(ALL_CONDITIONS)


def test_every_generator_condition_is_seeded_in_range_and_unit_valued(brain_pair):
    x, neighbour, other = brain_pair
    for condition in GENERATOR_CONDITIONS:
        first = _draws(condition, x, 3, seed=11, other=other, neighbour=neighbour)
        again = _draws(condition, x, 3, seed=11, other=other, neighbour=neighbour)
        for a, b in zip(first, again, strict=True):
            assert np.array_equal(a.image, b.image) and a.parameters == b.parameters, condition
            assert a.image.dtype == np.float32 and a.image.min() >= 0.0 and a.image.max() <= 1.0, condition
            assert (a.copy_mask is not None) == (condition in ("half", "quarter", "paste")), condition
        other_seed = _draws(condition, x, 3, seed=12, other=other, neighbour=neighbour)
        assert any(a.parameters != b.parameters for a, b in zip(first, other_seed, strict=True)), condition


def test_parameters_stay_in_their_ranges():
    x = np.random.default_rng(0).uniform(size=(24, 20)).astype(np.float32)
    ranges = {
        "shift_fill": ("fraction", geometry.SHIFT_FRACTION),
        "zoom_in": ("factor", geometry.ZOOM_IN),
        "zoom_out": ("factor", geometry.ZOOM_OUT),
        "elastic": ("max_displacement", geometry.ELASTIC_DISPLACEMENT),
        "rician": ("sigma", intensity.RICIAN_SIGMA),
        "bias": ("amplitude", intensity.BIAS_AMPLITUDE),
        "gamma": ("gamma", intensity.GAMMA),
        "blur": ("sigma", intensity.BLUR_SIGMA),
        "lowres": ("factor", intensity.RESOLUTION_FACTOR),
        "interp": ("weight", partial.NEIGHBOUR_WEIGHT),
    }
    for condition, (key, (low, high)) in ranges.items():
        values = np.array([a.parameters[key] for a in _draws(condition, x, 200, neighbour=x)])
        assert values.min() >= low and values.max() <= high, condition
        assert values.min() < low + 0.15 * (high - low) and values.max() > high - 0.15 * (high - low), condition
    angles = np.array([a.parameters["degrees"] for a in _draws("rot_large", x, 200)])
    assert np.all((np.abs(angles) >= 10) & (np.abs(angles) <= 30)) and (angles < 0).any() and (angles > 0).any()
    for a in _draws("shift_crop", x, 100):
        assert 0.75 <= a.parameters["keep_h"] <= 0.95 and 0.75 <= a.parameters["keep_w"] <= 0.95
    for a in _draws("paste", x, 100, other=x):
        assert 0.3 <= a.parameters["side_h"] <= 0.6 and 0.3 <= a.parameters["side_w"] <= 0.6
    stretches = [a.parameters for a in _draws("stretch", x, 200)]
    for key, (low, high) in (("scale_rows", geometry.STRETCH_SCALE), ("scale_cols", geometry.STRETCH_SCALE)):
        values = np.array([p[key] for p in stretches])
        assert values.min() >= low and values.max() <= high and values.min() < 0.83 and values.max() > 1.2, key
    shears = np.array([p["shear"] for p in stretches])
    assert np.all(np.abs(shears) <= 0.15) and shears.min() < -0.12 and shears.max() > 0.12


def test_translation_shifts_content_and_zero_fills(brain_pair):
    x = brain_pair[0]
    h, w = x.shape
    for a in _draws("shift_fill", x, 20):
        dy, dx = int(a.parameters["dy"]), int(a.parameters["dx"])
        assert 0.05 * min(h, w) - 1 <= np.hypot(dy, dx) <= 0.20 * max(h, w) + 1
        moved = a.image[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)]
        assert np.array_equal(moved, x[max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)])
        band = np.ones_like(x, dtype=bool)
        band[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = False
        assert band.any() and np.all(a.image[band] == 0.0)


def test_crop_is_a_window_of_the_slice(brain_pair):
    x = brain_pair[0]
    for a in _draws("shift_crop", x, 10):
        top, left = int(a.parameters["top"]), int(a.parameters["left"])
        ch, cw = a.image.shape
        assert ch < x.shape[0] and cw < x.shape[1]
        assert np.array_equal(a.image, x[top : top + ch, left : left + cw])


def test_zoom_scales_about_the_centre(brain_pair):
    point = np.zeros((41, 41), np.float32)
    point[10, 20] = 1.0  # 10 rows above the centre (20, 20)
    for factor, row in ((1.5, 5), (0.5, 15)):
        assert np.unravel_index(np.argmax(geometry.zoom(point, factor)), point.shape) == (row, 20)
    x = brain_pair[0]
    for a in _draws("zoom_out", x, 5):
        border = int(np.floor(x.shape[0] * (1 - a.parameters["factor"]) / 2)) - 1
        assert border > 0 and np.all(a.image[:border] == 0) and np.all(a.image[-border:] == 0)
    assert np.allclose(geometry.zoom(x, 1.0), x, atol=1e-6)


def test_stretch_scales_each_axis_and_shears_about_the_centre(brain_pair):
    point = np.zeros((41, 41), np.float32)
    point[10, 30] = 1.0  # 10 rows above and 10 columns right of the centre (20, 20)
    moved = geometry.linear_map(point, np.array([[1.2, 0.0], [0.1, 0.9]]))
    assert np.unravel_index(np.argmax(moved), point.shape) == (8, 28)  # row 20 - 12, column 20 + 9 - 1
    x = brain_pair[0]
    for a in _draws("stretch", x, 5):
        p = a.parameters
        expected = geometry.linear_map(x, np.array([[p["scale_rows"], 0.0], [p["shear"], p["scale_cols"]]]))
        assert a.image.shape == x.shape and np.array_equal(a.image, expected)
        height, height0 = (np.ptp(np.flatnonzero(image.sum(axis=1) > 0)) for image in (a.image, x))
        assert height < height0 if p["scale_rows"] < 0.95 else height >= height0 - 1  # the head's height follows


def test_quarter_turns_and_transposes_are_exact(brain_pair):
    x = brain_pair[0]
    turns = set()
    for a in _draws("rot90", x, 30):
        k = int(a.parameters["quarter_turns"])
        turns.add(k)
        assert np.array_equal(a.image, np.rot90(x, k))
    assert turns == {1, 2, 3}
    kinds = set()
    for a in _draws("transpose", x, 20):
        anti = bool(a.parameters["anti_diagonal"])
        kinds.add(anti)
        assert a.image.shape == x.shape[::-1]
        assert np.array_equal(a.image, x[::-1, ::-1].T if anti else x.T)
    assert kinds == {False, True}


def test_large_rotation_is_undone_by_the_opposite_rotation(brain_pair):
    x = brain_pair[0]
    for a in _draws("rot_large", x, 3):
        back = rotate(a.image, -a.parameters["degrees"])
        inner = (slice(x.shape[0] // 4, 3 * x.shape[0] // 4), slice(x.shape[1] // 4, 3 * x.shape[1] // 4))
        assert np.corrcoef(back[inner].ravel(), x[inner].ravel())[0, 1] > 0.95
        assert np.corrcoef(a.image[inner].ravel(), x[inner].ravel())[0, 1] < 0.9


def test_elastic_warp_is_a_small_smooth_deformation(brain_pair):
    x = brain_pair[0]
    for a in _draws("elastic", x, 3):
        assert not np.allclose(a.image, x)
        assert np.corrcoef(a.image.ravel(), x.ravel())[0, 1] > 0.6
        assert abs(a.image.mean() - x.mean()) < 0.05  # moves pixels, keeps the intensities


def test_rician_noise_statistics():
    rng = np.random.default_rng(5)
    flat = np.full((300, 300), 0.5, np.float32)
    for _ in range(3):
        out, params = intensity.rician(flat, rng)
        sigma = params["sigma"]
        assert np.mean(out.astype(np.float64) ** 2) == pytest.approx(0.25 + 2 * sigma**2, rel=0.02)  # E[M²] = A² + 2σ²
        dark, params = intensity.rician(np.zeros((300, 300), np.float32), rng)
        rayleigh_mean = params["sigma"] * np.sqrt(np.pi / 2)
        assert dark.min() >= 0 and dark.mean() == pytest.approx(rayleigh_mean, rel=0.03)


def test_photometric_edits(brain_pair):
    x = brain_pair[0]
    for a in _draws("gamma", x, 5):
        assert np.allclose(a.image, x ** a.parameters["gamma"], atol=1e-6)
    for a in _draws("blur", x, 3):
        assert np.allclose(a.image, ndimage.gaussian_filter(x, a.parameters["sigma"]), atol=1e-6)
    for a in _draws("bias", x, 5):
        inside = x > 0.2
        ratio = a.image[inside] / x[inside]
        spread = np.exp(2 * a.parameters["amplitude"])  # the field spans at most exp(±a)
        assert ratio.max() / ratio.min() <= spread * 1.001 and ratio.max() / ratio.min() > 1.2

    def detail(image):
        return np.abs(np.diff(image, axis=1)).mean()

    for a in _draws("lowres", x, 3):
        assert a.image.shape == x.shape and detail(a.image) < 0.8 * detail(x)


def test_interpolation_blends_with_the_neighbour(brain_pair):
    x, neighbour, _ = brain_pair
    for a in _draws("interp", x, 5, neighbour=neighbour):
        t = a.parameters["weight"]
        assert np.allclose(a.image, (1 - t) * x + t * neighbour, atol=1e-6)
    with pytest.raises(ValueError, match="neighbour"):
        augment_condition(x, "interp", np.random.default_rng(0))
    with pytest.raises(ValueError, match="shape"):
        augment_condition(x, "interp", np.random.default_rng(0), neighbour=x[:-1])


def test_partial_copy_masks_mark_exactly_the_copied_pixels(brain_pair):
    x, _, other = brain_pair
    host = geometry.resample_to(other, x.shape)
    for condition, share in (("half", 0.5), ("quarter", 0.25)):
        for a in _draws(condition, x, 8, other=other):
            mask = a.copy_mask
            assert mask.shape == x.shape and abs(mask.mean() - share) < 0.01
            assert np.array_equal(a.image[mask], x[mask]) and np.array_equal(a.image[~mask], host[~mask])
    for a in _draws("paste", x, 8, other=other):
        p = a.parameters
        rows, cols = np.flatnonzero(a.copy_mask.any(axis=1)), np.flatnonzero(a.copy_mask.any(axis=0))
        assert rows[0] == p["dst_top"] and cols[0] == p["dst_left"]
        assert a.copy_mask.sum() == len(rows) * len(cols)  # one rectangle
        source = x[
            int(p["src_top"]) : int(p["src_top"]) + len(rows), int(p["src_left"]) : int(p["src_left"]) + len(cols)
        ]
        assert np.array_equal(a.image[a.copy_mask].reshape(source.shape), source)
        assert np.array_equal(a.image[~a.copy_mask], host[~a.copy_mask])
    with pytest.raises(ValueError, match="another person"):
        augment_condition(x, "half", np.random.default_rng(0))


def test_partial_copies_carry_the_slices_anatomy(brain_pair):
    """A half, quarter or pasted region is drawn among those carrying at least MIN_COPIED_SHARE of the slice's
    anatomy, even for a slice whose anatomy lies in one corner (three quadrants empty); a slice without any region
    that does keeps the draw carrying the most."""
    x, _, other = brain_pair
    cornered = np.zeros_like(x)
    h, w = x.shape
    cornered[: h // 3, : w // 3] = x[h // 3 : 2 * (h // 3), w // 3 : 2 * (w // 3)]
    for image in (x, cornered):
        anatomy = image >= partial.ANATOMY
        for condition in ("half", "quarter", "paste"):
            for a in _draws(condition, image, 20, other=other):
                p = a.parameters
                if condition == "paste":
                    rows, cols = np.flatnonzero(a.copy_mask.any(axis=1)), np.flatnonzero(a.copy_mask.any(axis=0))
                    top, left = int(p["src_top"]), int(p["src_left"])
                    carried = anatomy[top : top + len(rows), left : left + len(cols)].sum()
                else:
                    carried = anatomy[a.copy_mask].sum()
                assert carried >= partial.MIN_COPIED_SHARE * anatomy.sum(), (condition, p)
    speck = np.zeros_like(x)
    speck[0, 0] = 1.0  # one pixel of anatomy: no region carries a tenth of it but the one holding it
    assert all(a.copy_mask[0, 0] for a in _draws("quarter", speck, 5, other=other))


def test_chain_applies_three_distinct_families(brain_pair):
    x = brain_pair[0]
    for a in _draws("chain", x, 10):
        families = a.parameters["families"].split("+")
        assert len(families) == 3 == len(set(families)) and set(families) <= set(CHAIN_FAMILIES)
        assert all(any(key.startswith(f"{f}.") for key in a.parameters) for f in families)
    with pytest.raises(ValueError, match="unknown condition"):
        augment_condition(x, "sharpen", np.random.default_rng(0))


def test_prepared_partial_copies_keep_truth_masks_and_paper_queries_do_not_change(shared_data):
    spine = [str(p) for p in sorted((shared_data / "spine" / "myosegmentum").glob("*.nii.gz"))[:6]]
    kwargs = {"slices_per_split": 12, "levels": (0.5,), "seed": 2}
    paper_only = prepare_dataset(DatasetSpec("spine", spine), conditions=("rot5", "noise02"), **kwargs)
    both = prepare_dataset(DatasetSpec("spine", spine), conditions=("rot5", "half", "interp", "noise02"), **kwargs)
    for condition in ("rot5", "noise02"):  # adding generator conditions leaves the paper's queries as they were
        pairs = zip(paper_only.queries[condition], both.queries[condition], strict=True)
        assert all(np.array_equal(a, b) for a, b in pairs)
    n, masks = both.n, both.copy_masks["half"]
    assert set(both.copy_masks) == {"half"} and len(masks) == n + len(both.duplicate_rows)
    assert not any(m.any() for m in masks[:n])  # novel rows copy nothing of the reference
    for row, mask in enumerate(masks[n:]):
        source = scale_unit(both.reference_slices[both.duplicate_rows[row]], PreprocessSettings())
        assert mask.shape == both.queries["half"][n + row].shape and mask.mean() == pytest.approx(0.5, abs=0.01)
        assert np.array_equal(both.queries["half"][n + row][mask], source[mask])
    assert all(0.2 <= p["weight"] <= 0.5 and p["neighbour"] in (-1, 1) for p in both.parameters["interp"])
    prov, settings = both.reference_provenance, PreprocessSettings()
    for row, original in enumerate(both.duplicate_rows):  # the recorded neighbour is the slice the copy is blended with
        image = read_image(prov.source[original])
        stack = image_slices(image, resolve_axis(image, "auto"))
        edit, k = both.parameters["interp"][n + row], prov.slice[original]
        blend = (1 - edit["weight"]) * scale_unit(stack[k], settings)
        blend += edit["weight"] * scale_unit(stack[k + edit["neighbour"]], settings)
        assert np.allclose(both.queries["interp"][n + row], blend, atol=1e-5)
        made = made_of((prov.source[original], k), edit)
        assert made == {(prov.source[original], k), (prov.source[original], k + edit["neighbour"])}
    assert made_of(("a.nii.gz", 3), {"weight": 0.3}) == {("a.nii.gz", 3)}  # other edits: the source alone


def test_pixel_correlation_of_two_images():
    rng = np.random.default_rng(4)
    a, b = rng.random((12, 9)), rng.random((12, 9))
    assert pixel_correlation(a, b) == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    assert pixel_correlation(a, 3.0 * a - 1.0) == pytest.approx(1.0)
    assert pixel_correlation(a, np.full_like(a, 2.0)) == 0.0  # a constant image correlates with nothing
