"""Off-domain inputs against small references (issue 12; docs/method.md §8), through the real audit.

Brain T1 slices of two people in no index against the demo's 3-subject diffusion/EPI index, and
lumbar-spine slices of two people in no index against a one-person knee index: the calibration does
not hold for these inputs, so the audit must say so and flag at most 1% of their slices. The same
spine people against a spine index keep ``holds`` True. The assertions on the audit's
``calibration`` block skip until the audit writes it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from MemorizationIndexLib.audit import audit_paths
from MemorizationIndexLib.calibration_check import ABOVE, check_calibration
from MemorizationIndexLib.index_build import BuildOptions, build_index
from MemorizationIndexLib.reference_index import ReferenceIndex
from MemorizationIndexLib.volumes import read_image

pytest.importorskip("dipy", reason="the demo's real MRI ships in the dipy package (make install has it)")

NEEDS_BLOCK = "needs the audit's calibration block (summary.json 'calibration', issue 12)"


def _audit(index: ReferenceIndex, paths: list[Path], out: Path, encoder) -> tuple[np.ndarray, dict]:
    """Audit ``paths`` against ``index``; the similarity of every scored slice and summary.json."""
    audits = audit_paths(index, paths, out, device=str(encoder.device))
    similarity = np.array([s.similarity for a in audits for s in a.scores])
    return similarity, json.loads((out / "summary.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def t1_against_demo(tmp_path_factory, shared_data, brain_subjects, encoder) -> tuple[ReferenceIndex, np.ndarray, dict]:
    """The demo's index (3 diffusion/EPI volumes, as `make demo` builds it) and brain T1 sub-23, sub-24 audited."""
    from MemorizationIndexLib.demo import make_demo_data

    folder = tmp_path_factory.mktemp("t1-demo")
    training, _, _ = make_demo_data(folder / "demo")
    index = build_index(training, folder / "index", BuildOptions(), encoder=encoder)
    people = [p for p in brain_subjects if p.name.startswith(("sub-23", "sub-24"))]
    assert len(people) == 2, "shared brain data lacks sub-23/sub-24"
    return (index, *_audit(index, people, folder / "audit", encoder))


@pytest.fixture(scope="module")
def spine_people(shared_data) -> list[Path]:
    paths = [shared_data / "spine" / "myosegmentum" / f"{n}.nii.gz" for n in ("20", "21")]
    assert all(p.is_file() for p in paths), f"shared spine data incomplete: {paths}"
    return paths


@pytest.fixture(scope="module")
def spine_against_knee(tmp_path_factory, shared_data, spine_people, encoder) -> tuple[ReferenceIndex, np.ndarray, dict]:
    """A knee index of one person (both DESS echoes of pyKNEEr s01 as one subject, every 3rd slice) and spine 20, 21
    audited. (Against a 3-volume knee index with the echoes as separate subjects the spine's bulk sat on the null,
    median z -0.03: the check cannot name that mismatch, and nothing was flagged; docs/method.md §8.)"""
    training = sorted((shared_data / "knee" / "pykneer-s01").glob("DESS_echo*.nii.gz"))
    assert len(training) == 2, f"shared knee data incomplete: {training}"
    folder = tmp_path_factory.mktemp("spine-knee")
    options = BuildOptions(slice_stride=3, subject_pattern=r"pykneer-s01")
    index = build_index(training, folder / "index", options, encoder=encoder)
    return (index, *_audit(index, spine_people, folder / "audit", encoder))


def test_t1_against_the_demo_index_does_not_hold(t1_against_demo):
    index, similarity, _ = t1_against_demo
    check = check_calibration(similarity, index.null_model)
    assert not check.holds and check.direction == ABOVE, check
    assert "far above the null" in check.reason and "contrast" in check.reason


def test_t1_against_the_demo_index_audit_says_so_and_flags_at_most_1_percent(t1_against_demo):
    _, _, summary = t1_against_demo
    if "calibration" not in summary:
        pytest.skip(NEEDS_BLOCK)
    assert summary["calibration"]["holds"] is False
    assert "contrast" in summary["calibration"]["reason"]
    assert summary["overall"]["flagged_fraction"] <= 0.01, summary["overall"]


def test_spine_against_a_knee_index_is_not_flagged(spine_against_knee):
    index, similarity, summary = spine_against_knee
    assert check_calibration(similarity, index.null_model).median_z < 0  # the spine sits below the knee's null
    assert summary["overall"]["flagged_fraction"] <= 0.01, summary["overall"]


def test_an_index_of_one_training_subject_is_said_to_have_nulls_that_run_low(spine_against_knee):
    """The knee index holds one person and no --holdout data: its nulls come from held-out splits of that person,
    which run low (docs/method.md §3), and the audit's summary says so."""
    _, _, summary = spine_against_knee
    assert summary["calibration"]["training_subjects"] == 1
    assert summary["calibration"]["few_training_subjects"] is True


def test_spine_against_a_knee_index_mismatch_is_named(spine_against_knee):
    """Since the index holds transposed and +/-90 degree copies (docs/method.md §7.9) the spine's
    similarities sit inside the null's limit (median z -0.86 against 1.04); its features lie
    outside the knee's (docs/method.md §8.1), and the audit says so."""
    index, _, summary = spine_against_knee
    assert index.null_energy is not None
    assert summary["calibration"]["holds"] is False
    reason = summary["calibration"]["reason"]
    assert "outside the reference" in reason and "contrast" in reason


def test_a_knee_copy_planted_among_the_spine_slices_is_still_found(spine_against_knee, spine_people, tmp_path, encoder):
    """A training slice of the knee (its central 224 x 224 pixels) in place of one slice of a spine volume: the
    volume still lies outside the knee's features, so nothing is flagged on the global score, but the copy is
    verified and flagged with its true source, and no other slice is."""
    import SimpleITK as sitk

    from MemorizationIndexLib.calibration_check import OUTSIDE
    from MemorizationIndexLib.volumes import image_slices, resolve_axis

    index, _, _ = spine_against_knee
    source = sorted(Path(s) for s in set(index.provenance.source))[0]
    knee_slice = image_slices(read_image(source), resolve_axis(read_image(source), index.axis))[39]
    spine = read_image(spine_people[0])
    volume = sitk.GetArrayFromImage(spine).astype(np.float32)
    rows, cols = volume.shape[1:]
    top, left = (knee_slice.shape[0] - rows) // 2, (knee_slice.shape[1] - cols) // 2
    volume[10] = knee_slice[top : top + rows, left : left + cols]
    planted = sitk.GetImageFromArray(volume)
    planted.CopyInformation(spine)
    sitk.WriteImage(planted, str(tmp_path / "planted.nii.gz"))
    [audit] = audit_paths(index, [tmp_path / "planted.nii.gz"], tmp_path / "audit", device=str(encoder.device))
    assert not audit.calibration.holds and audit.calibration.direction == OUTSIDE, audit.calibration
    flagged = [s for s in audit.scores if s.flagged]
    assert [s.slice for s in flagged] == [10]
    assert Path(flagged[0].copy_source) == source and flagged[0].copy_slice == 39


def test_small_spine_pieces_against_a_knee_index_named_together(spine_against_knee, spine_people, tmp_path, encoder):
    """Pieces of a spine volume too small to judge on their own (4 slices each) lie outside the knee's features
    together: the summary's line for all inputs together names it by the feature energy, and nothing is flagged."""
    import SimpleITK as sitk

    from MemorizationIndexLib.calibration_check import MIN_SLICES

    index, _, _ = spine_against_knee
    spine = read_image(spine_people[0])
    paths = []
    for start in range(0, spine.GetSize()[2] - 3, 4):
        path = tmp_path / f"piece-{start}.nii.gz"
        sitk.WriteImage(spine[:, :, start : start + 4], str(path))
        paths.append(path)
    audits = audit_paths(index, paths, tmp_path / "audit", device=str(encoder.device))
    assert all(len(a.scores) < MIN_SLICES and a.calibration.holds for a in audits)
    calibration = json.loads((tmp_path / "audit" / "summary.json").read_text(encoding="utf-8"))["calibration"]
    assert calibration["holds"] is False
    assert "all inputs together" in calibration["reason"] and "feature energy" in calibration["reason"]
    assert sum(a.flagged for a in audits) == 0


def test_the_same_spine_people_against_a_spine_index_hold(tmp_path, spine, spine_people, encoder):
    """In-domain novel people: each volume keeps ``holds`` True and none of its slices is flagged."""
    training = [spine[n] for n in ("01", "02", "03", "04", "05")]
    index = build_index(training, tmp_path / "index", BuildOptions(slice_stride=2), encoder=encoder)
    audits = audit_paths(index, spine_people, tmp_path / "audit", device=str(encoder.device))
    for audit in audits:
        check = check_calibration(np.array([s.similarity for s in audit.scores]), index.null_model)
        assert check.holds, (audit.volume, check)
        assert audit.calibration.holds, (audit.volume, audit.calibration)  # the features' energy too
        assert audit.flagged == 0, audit.volume
