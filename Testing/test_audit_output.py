"""The audit output folder (audit_output.py): written rows, the checked reader, the evidence order."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pytest

from MemorizationIndexLib.audit_output import (
    NEIGHBOUR_COLUMNS,
    SLICE_COLUMNS,
    Neighbour,
    SliceScore,
    evidence_order,
    read_audit,
    write_audit,
)
from MemorizationIndexLib.errors import UserError
from MemorizationIndexLib.scoring import NullModel


@dataclass
class _Volume:
    volume: str
    scores: list[SliceScore]
    neighbours: dict[int, list[Neighbour]] = field(default_factory=dict)


def _score(k: int, mi: float, flip: str = "none", source: str = "t,1.nii.gz") -> SliceScore:
    z = float(np.arctanh(2 * mi - 1))
    return SliceScore(
        slice=k,
        similarity=0.5 + 0.123456789 * mi,
        z=z,
        mi=mi,
        oni=-float(np.tanh(z)),
        p_value=1 / 3,
        flagged=mi > 0.9,
        nn_source=source,
        nn_slice=2 * k,
        nn_flip=flip,
    )


def _volumes() -> list[_Volume]:
    a = _Volume("gen/a.nii.gz", [_score(0, 0.3), _score(3, 0.95, "hflip"), _score(4, 0.6, "rot-4")])
    b = _Volume('b "quoted".nrrd', [_score(1, 0.999999, "vflip", source="")])
    for v in (a, b):
        for s in v.scores:
            v.neighbours[s.slice] = [
                Neighbour(1, s.nn_source, s.nn_slice, s.nn_flip, s.similarity),
                Neighbour(2, "other.nii.gz", 7, "none", s.similarity / 2),
            ]
    return [a, b]


def _write(out: Path, volumes: list[_Volume] | None = None) -> dict:
    threshold = NullModel(np.linspace(0.0, 1.0, 99)).threshold(0.05)
    summary = {
        "index": {"path": "/idx"},
        "null": {"mean": 0.5, "std": 0.25, "n": 99},
        "threshold": threshold.to_dict(),
        "volumes": [{"volume": "gen/a.nii.gz"}],
    }
    write_audit(_volumes() if volumes is None else volumes, summary, np.linspace(0.0, 1.0, 99), out)
    return summary


def test_scores_round_trip_through_the_files(tmp_path: Path) -> None:
    summary = _write(tmp_path / "new" / "audit")
    read = read_audit(tmp_path / "new" / "audit")
    written = [(v.volume, s) for v in _volumes() for s in v.scores]
    assert [(r.volume, r.slice, r.nn_source, r.nn_slice, r.nn_flip, r.flagged) for r in read.rows] == [
        (volume, s.slice, s.nn_source, s.nn_slice, s.nn_flip, s.flagged) for volume, s in written
    ]
    for row, (_, score) in zip(read.rows, written):
        for name in ("similarity", "z", "mi", "oni", "p_value"):
            assert getattr(row, name) == pytest.approx(getattr(score, name), rel=1e-5)  # 6 significant digits
            assert getattr(row, name) == float(f"{getattr(score, name):.6g}")
    assert read.neighbours[("gen/a.nii.gz", 3)] == [
        Neighbour(1, "t,1.nii.gz", 6, "hflip", pytest.approx(0.6172839)),
        Neighbour(2, "other.nii.gz", 7, "none", pytest.approx(0.3086419)),
    ]
    assert read.summary == summary and asdict(read.threshold) == summary["threshold"]
    np.testing.assert_array_equal(read.null_similarity, np.linspace(0.0, 1.0, 99))
    lines = (tmp_path / "new" / "audit" / "slices.csv").read_text(encoding="utf-8").split("\n")
    assert lines[0] == ",".join(SLICE_COLUMNS) and lines[-1] == ""
    assert (
        lines[2] == 'gen/a.nii.gz,3,0.617284,1.47222,0.95,-0.9,0.333333,1,"t,1.nii.gz",6,'
        "nan,nan,nan,,-1,0,0,1,,nan,nan,nan"
    )
    assert (
        (tmp_path / "new" / "audit" / "neighbors.csv")
        .read_text(encoding="utf-8")
        .startswith(",".join(NEIGHBOUR_COLUMNS) + "\n")
    )
    assert json.loads((tmp_path / "new" / "audit" / "summary.json").read_text(encoding="utf-8")) == summary


def test_without_neighbors_csv_the_flip_is_unknown(tmp_path: Path) -> None:
    _write(tmp_path)
    (tmp_path / "neighbors.csv").unlink()
    read = read_audit(tmp_path)
    assert read.neighbours is None and {r.nn_flip for r in read.rows} == {"none"}


def test_evidence_order_uses_the_written_values() -> None:
    tied = [_score(5, 0.9999991), _score(2, 0.9999994)]  # equal once written with 6 digits
    assert sorted(tied, key=lambda s: evidence_order("v", s))[0].slice == 2
    assert evidence_order("v", _score(1, 0.7)) < evidence_order("v", _score(0, 0.6))
    assert evidence_order("a", _score(1, 0.7)) < evidence_order("b", _score(1, 0.7))


def _replace_line(path: Path, line: int, text: str) -> None:
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[line] = text
    path.write_text("\n".join(lines), encoding="utf-8")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda out: _replace_line(out / "slices.csv", 2, "gen/a.nii.gz,3,0.6,1.8,high,-0.9,0.3,1,t,6"),
            r"slices.csv line 3 is corrupt",
        ),
        (lambda out: _replace_line(out / "slices.csv", 0, "volume,slice,similarity"), r"missing columns: z, mi"),
        (lambda out: (out / "slices.csv").write_bytes(b"\xff\xfe\x00garbage"), r"slices.csv is not a text CSV file"),
        (
            lambda out: _replace_line(out / "neighbors.csv", 1, "gen/a.nii.gz,0,1,t,0,rot+9,0.5"),
            r"neighbors.csv line 2 is corrupt: unknown flip 'rot\+9'",
        ),
        (
            lambda out: _replace_line(out / "neighbors.csv", 1, "gen/a.nii.gz,0,1,elsewhere.nii.gz,0,none,0.5"),
            r"neighbors.csv does not match slices.csv \(slice 0 of gen/a.nii.gz",
        ),
        (
            lambda out: (out / "summary.json").write_text(
                json.dumps({"index": {}, "null": {"mean": 0, "std": 1}, "threshold": {"alpha": 0.1}, "volumes": []})
            ),
            r"summary.json has a corrupt null/threshold entry",
        ),
        (lambda out: (out / "summary.json").write_text("[1, 2]"), r"summary.json is not an audit summary"),
        (lambda out: (out / "null_similarity.npy").write_bytes(b"garbage"), r"null_similarity.npy is not a readable"),
        (lambda out: (out / "summary.json").unlink(), r"summary.json is missing"),
    ],
)
def test_a_malformed_folder_is_a_one_line_user_error(tmp_path: Path, damage, message: str) -> None:
    _write(tmp_path)
    damage(tmp_path)
    with pytest.raises(UserError, match=message) as error:
        read_audit(tmp_path)
    assert "\n" not in str(error.value)


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    broken = _volumes()
    broken[1].scores.append("not a score")  # fails while slices.csv is written
    with pytest.raises(AttributeError):
        _write(tmp_path / "a" / "b", broken)
    assert not (tmp_path / "a").exists()
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(UserError, match="exists and is not a folder"):
        _write(tmp_path / "file")


# ----------------------------------------------------------------------------------------------
# verification: columns, copy masks, summary blocks


def _verified_volumes() -> tuple[list[_Volume], dict[tuple[str, int], np.ndarray]]:
    volumes = _volumes()
    copy = volumes[0].scores[1]  # gen/a.nii.gz slice 3
    copy.verified_score, copy.verified_p, copy.flag_p = 0.8765432, 0.000999, 0.0004
    copy.copy_source, copy.copy_slice, copy.copy_transposed = "t,1.nii.gz", 9, True
    copy.copy_angle, copy.copy_scale, copy.copy_box = 90.0, 1.04, (2, 3, 10, 12)
    copy.roughness = 0.1234567
    copy.verified_reproduced, copy.verified_bent = 0.4567891, 0.9123456
    mask = np.zeros((16, 20), dtype=bool)
    mask[2:10, 3:12] = True
    return volumes, {("gen/a.nii.gz", 3): mask, ('b "quoted".nrrd', 1): np.eye(5, dtype=bool)}


def test_verification_columns_and_copy_masks_round_trip(tmp_path: Path) -> None:
    volumes, masks = _verified_volumes()
    summary = _write(tmp_path, volumes) | {}
    summary["verification"] = {"used": True, "reason": "", "k": 5, "views": ["cut", "T"], "null_n": 9, "threshold": 0.5}
    summary["calibration"] = {"holds": False, "reason": "far above", "median_z": 1.83, "limit_z": 1.2}
    write_audit(volumes, summary, np.linspace(0.0, 1.0, 99), tmp_path, copy_masks=masks)
    read = read_audit(tmp_path)
    row = read.rows[1]
    assert (row.verified_score, row.verified_p, row.flag_p) == (0.876543, 0.000999, 0.0004)
    assert (row.copy_source, row.copy_slice, row.copy_transposed, row.copy_angle, row.copy_scale) == (
        "t,1.nii.gz",
        9,
        True,
        90.0,
        1.04,
    )
    assert row.copy_box == (2, 3, 10, 12) and row.verified and row.roughness == 0.123457
    assert (row.verified_reproduced, row.verified_bent) == (0.456789, 0.912346)
    plain = read.rows[0]
    assert np.isnan(plain.verified_score) and plain.copy_box is None and not plain.verified
    assert (plain.copy_source, plain.copy_slice, plain.copy_transposed, plain.copy_scale) == ("", -1, False, 1.0)
    assert np.isnan(plain.roughness) and np.isnan(plain.verified_reproduced) and np.isnan(plain.verified_bent)
    assert set(read.copy_masks) == set(masks)
    for key, mask in masks.items():
        assert read.copy_masks[key].dtype == bool
        np.testing.assert_array_equal(read.copy_masks[key], mask)
    assert read.summary["verification"]["views"] == ["cut", "T"] and read.summary["calibration"]["holds"] is False
    line = (tmp_path / "slices.csv").read_text(encoding="utf-8").split("\n")[2]
    assert line.endswith(',"t,1.nii.gz",9,1,90,1.04,2 3 10 12,0.123457,0.456789,0.912346')
    with np.load(tmp_path / "copy_masks.npz") as data:
        assert sorted(data.files) == ["1", "3"]  # row numbers in slices.csv


def test_a_folder_written_before_verification_reads_with_defaults(tmp_path: Path) -> None:
    _write(tmp_path)
    _edit_csv(tmp_path / "slices.csv", lambda records: [record[:10] for record in records])
    (tmp_path / "copy_masks.npz").unlink()
    read = read_audit(tmp_path)
    assert len(read.rows) == 4 and read.copy_masks == {}
    assert all(np.isnan(r.flag_p) and r.copy_box is None and r.copy_slice == -1 for r in read.rows)
    assert "verification" not in read.summary and "calibration" not in read.summary


def test_writing_without_masks_replaces_an_older_mask_file(tmp_path: Path) -> None:
    volumes, masks = _verified_volumes()
    write_audit(volumes, _write(tmp_path), np.zeros(3), tmp_path, copy_masks=masks)
    _write(tmp_path)
    assert read_audit(tmp_path).copy_masks == {}
    with pytest.raises(ValueError, match="not a scored slice"):
        write_audit(
            volumes,
            _write(tmp_path),
            np.zeros(3),
            tmp_path,
            copy_masks={("gen/a.nii.gz", 99): masks[("gen/a.nii.gz", 3)]},
        )


def _set_summary(out: Path, key: str, value) -> None:
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    summary[key] = value
    (out / "summary.json").write_text(json.dumps(summary), encoding="utf-8")


def _edit_csv(path: Path, edit) -> None:
    with open(path, newline="", encoding="utf-8") as handle:
        records = list(csv.reader(handle))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerows(edit(records))


def _set_field(out: Path, column: str, text: str) -> None:
    def edit(records: list[list[str]]) -> list[list[str]]:
        records[1][records[0].index(column)] = text
        return records

    _edit_csv(out / "slices.csv", edit)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda out: _set_field(out, "verified_score", "1.5"), r"slices.csv line 2 is corrupt: verified_score '1.5'"),
        (lambda out: _set_field(out, "flag_p", "low"), r"slices.csv line 2 is corrupt"),
        (lambda out: _set_field(out, "copy_transposed", "yes"), r"copy_transposed 'yes' is not 0 or 1"),
        (lambda out: _set_field(out, "copy_box", "1 2 3"), r"copy_box '1 2 3' is not 'row0 col0 row1 col1'"),
        (lambda out: _set_field(out, "copy_box", "5 2 3 4"), r"with row0 <= row1"),
        (lambda out: _set_field(out, "copy_slice", "x"), r"slices.csv line 2 is corrupt"),
        (lambda out: _set_summary(out, "verification", {"used": "yes", "reason": ""}), r'"used" is \'yes\''),
        (lambda out: _set_summary(out, "verification", [1]), r'corrupt "verification" entry \(expected a JSON'),
        (lambda out: _set_summary(out, "calibration", {"holds": True}), r'corrupt "calibration" entry \("reason"'),
        (
            lambda out: _set_summary(out, "calibration", {"holds": True, "reason": "", "median_z": "high"}),
            r'"median_z" is',
        ),
        (
            lambda out: _set_summary(out, "volumes", [{"volume": "v", "calibration_holds": "no"}]),
            r'corrupt "volumes" entry \("calibration_holds"',
        ),
        (lambda out: (out / "copy_masks.npz").write_bytes(b"garbage"), r"copy_masks.npz is not a readable .npz"),
        (lambda out: np.savez(out / "copy_masks.npz", **{"7": np.ones((2, 2))}), r"mask for row '7', which"),
        (lambda out: np.savez(out / "copy_masks.npz", **{"0": np.ones(4)}), r"the mask of row 0 has shape \(4,\)"),
    ],
)
def test_malformed_verification_outputs_are_one_line_user_errors(tmp_path: Path, damage, message: str) -> None:
    volumes, masks = _verified_volumes()
    write_audit(volumes, _write(tmp_path), np.zeros(3), tmp_path, copy_masks=masks)
    damage(tmp_path)
    with pytest.raises(UserError, match=message) as error:
        read_audit(tmp_path)
    assert "\n" not in str(error.value)
