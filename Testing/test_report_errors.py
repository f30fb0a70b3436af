"""The HTML audit report on missing or corrupt audit outputs: each raises a one-line UserError."""

from __future__ import annotations

from pathlib import Path

import pytest
from report_helpers import COLUMNS, write_fixture_audit

from MemorizationIndexLib import report
from MemorizationIndexLib.errors import UserError


def test_missing_and_corrupt_outputs_raise_user_error(tmp_path: Path):
    with pytest.raises(UserError, match="does not exist"):
        report.write_report(tmp_path / "nope")
    out = tmp_path / "audit"
    write_fixture_audit(out, [dict(volume="a.nii.gz", slice=0, similarity=0.5, nn_source="t", nn_slice=0)], volumes=[])
    report.write_report(out)  # fine as written

    (out / "summary.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match="summary.json is not valid JSON") as err:
        report.write_report(out)
    assert "\n" not in str(err.value)

    write_fixture_audit(out, [dict(volume="a.nii.gz", slice=0, similarity=0.5, nn_source="t", nn_slice=0)], volumes=[])
    (out / "null_similarity.npy").write_bytes(b"garbage")
    with pytest.raises(UserError, match="null_similarity.npy is not a readable"):
        report.write_report(out)

    write_fixture_audit(out, [dict(volume="a.nii.gz", slice=0, similarity=0.5, nn_source="t", nn_slice=0)], volumes=[])
    (out / "slices.csv").write_text("volume,slice\na,1\n", encoding="utf-8")
    with pytest.raises(UserError, match="missing columns"):
        report.write_report(out)
    (out / "slices.csv").write_text(",".join(COLUMNS) + "\na,x,1,1,1,1,1,0,t,0\n", encoding="utf-8")
    with pytest.raises(UserError, match="line 2 is corrupt"):
        report.write_report(out)
    (out / "slices.csv").unlink()
    with pytest.raises(UserError, match="slices.csv is missing"):
        report.write_report(out)


# ----------------------------------------------------------------------------------------------
# the SVG plots
