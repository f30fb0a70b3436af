"""End to end on real brain MRI through the CLI: planted copies are found, other people are not."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MemorizationIndexLib.audit_output import SLICE_COLUMNS
from MemorizationIndexLib.augment import CONDITIONS, augment_slice
from MemorizationIndexLib.cli import main
from MemorizationIndexLib.preprocess import PreprocessSettings, scale_unit
from MemorizationIndexLib.reference_index import ReferenceIndex
from MemorizationIndexLib.volumes import image_slices, read_image

README = Path(__file__).resolve().parents[1] / "README.md"
TRAIN_SUBJECTS = 4
COPIES_PER_CONDITION = 5


@pytest.fixture(scope="module")
def brain_audit(tmp_path_factory: pytest.TempPathFactory, brain_subjects: list[Path]) -> dict:
    """Index 4 brain subjects, plant augmented copies of one of them, audit copies and 2 others."""
    work = tmp_path_factory.mktemp("brain")
    train, others = brain_subjects[:TRAIN_SUBJECTS], brain_subjects[TRAIN_SUBJECTS : TRAIN_SUBJECTS + 2]
    assert main(["build-index", *map(str, train), "--out", str(work / "index"), "--slice-stride", "3"]) == 0
    index = ReferenceIndex.load(work / "index")
    source = str(train[1].resolve())
    indexed = sorted(
        {
            s
            for src, s, f in zip(index.provenance.source, index.provenance.slice, index.provenance.flip)
            if src == source and f == "none"
        }
    )
    rng = np.random.default_rng(7)
    stack = image_slices(read_image(train[1]), 0)
    slices, truth = [], []
    for condition in CONDITIONS:
        for k in rng.choice(indexed, COPIES_PER_CONDITION, replace=False):
            slices.append(augment_slice(scale_unit(stack[k], PreprocessSettings()), condition, rng)[0])
            truth.append((condition, int(k)))
    copies = sitk.GetImageFromArray(np.stack(slices).astype(np.float32))
    copies.SetSpacing((0.87, 0.87, 1.0))
    sitk.WriteImage(copies, str(work / "copies.nii.gz"))
    warnings = io.StringIO()
    with contextlib.redirect_stderr(warnings):
        audited = main(
            [
                "audit",
                str(work / "index"),
                str(work / "copies.nii.gz"),
                *map(str, others),
                "--out",
                str(work / "audit"),
                "--no-report",
            ]
        )
    assert audited == 0
    with open(work / "audit" / "slices.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {
        "rows": rows,
        "truth": truth,
        "source": source,
        "copies": str(work / "copies.nii.gz"),
        "work": work,
        "summary": json.loads((work / "audit" / "summary.json").read_text()),
        "audit_stderr": warnings.getvalue(),
    }


def test_slices_csv_has_exactly_the_documented_columns(brain_audit: dict) -> None:
    with open(brain_audit["work"] / "audit" / "slices.csv", newline="") as handle:
        header = handle.readline().strip()
    assert header == ",".join(SLICE_COLUMNS)
    assert header.startswith("volume,slice,similarity,z,mi,oni,p_value,flagged,nn_source,nn_slice,verified_score,")
    assert "slices.csv`" in README.read_text(encoding="utf-8")


def test_planted_copies_are_flagged_with_their_true_source(brain_audit: dict) -> None:
    copies = {int(r["slice"]): r for r in brain_audit["rows"] if r["volume"] == brain_audit["copies"]}
    assert len(copies) == len(brain_audit["truth"])
    per_condition: dict[str, list[bool]] = {}
    for i, (condition, k) in enumerate(brain_audit["truth"]):
        row = copies[i]
        hit = row["flagged"] == "1" and row["nn_source"] == brain_audit["source"] and int(row["nn_slice"]) == k
        per_condition.setdefault(condition, []).append(hit)
    overall = np.mean([h for hits in per_condition.values() for h in hits])
    assert overall >= 0.9, per_condition
    for condition in ("clean", "intensity", "hflip", "vflip", "rot3", "rot5"):
        assert all(per_condition[condition]), (condition, per_condition[condition])


def test_other_people_are_rarely_flagged(brain_audit: dict) -> None:
    others = [r for r in brain_audit["rows"] if r["volume"] != brain_audit["copies"]]
    assert len(others) > 200
    assert np.mean([r["flagged"] == "1" for r in others]) <= 0.02


def test_an_index_of_four_subjects_is_said_to_have_nulls_that_run_low(brain_audit: dict) -> None:
    """Four training subjects and no --holdout data: the audit warns that its nulls run low (docs/method.md §3), on
    stderr and in summary.json."""
    calibration = brain_audit["summary"]["calibration"]
    assert calibration["training_subjects"] == TRAIN_SUBJECTS and calibration["few_training_subjects"] is True
    assert f"warning: only {TRAIN_SUBJECTS} training subject(s)" in brain_audit["audit_stderr"]
    assert "--holdout" in brain_audit["audit_stderr"]


def test_summary_reports_the_threshold_and_null(brain_audit: dict) -> None:
    summary = brain_audit["summary"]
    assert summary["index"]["null_type"] == "train-split"
    assert summary["threshold"]["alpha"] == 0.001
    assert 0.5 < summary["threshold"]["mi"] < 1.0
    assert len(summary["volumes"]) == 3
    assert summary["overall"]["slices_scored"] == sum(v["slices_scored"] for v in summary["volumes"])
    copies = next(v for v in summary["volumes"] if v["volume"] == brain_audit["copies"])
    assert copies["mean_mi"] > 0.9 and copies["flagged_fraction"] >= 0.9
