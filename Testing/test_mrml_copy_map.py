"""Headless (slicer-core) tests of the pixel-level copy map and the verification status in Slicer,
on a synthetic audit folder: no index is built."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) is needed for the MRML tests")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package is not Slicer's (pip install slicer-core)", allow_module_level=True)

from report_helpers import AuditedVolume

from MemorizationIndexLib import mrml, mrml_views, results_html
from MemorizationIndexLib.audit_output import SliceScore, write_audit
from MemorizationIndexLib.scoring import NullModel

VOLUME = "/gen/q.nrrd"
SHAPE = (6, 40, 32)  # KJI: 6 axial slices of 40 x 32
FAR_ABOVE = "the audited slices as a whole sit far above the null (median z 1.83 > 1.2)"


def _score(k: int, mi: float, flagged: bool, **verified) -> SliceScore:
    z = float(np.arctanh(2 * mi - 1))
    return SliceScore(k, 0.5, z, mi, -float(np.tanh(z)), 0.5, flagged, "t.nii.gz", k, "none", **verified)


@pytest.fixture()
def folder(tmp_path: Path) -> dict:
    threshold = NullModel(np.random.default_rng(0).normal(0.5, 0.1, 5000)).threshold(0.001)
    mask = np.zeros(SHAPE[1:], dtype=bool)
    mask[5:20, 4:16] = True
    scores = [
        _score(0, 0.40, False),
        _score(1, 0.9995, False),  # high global mi, not flagged (the calibration does not hold)
        _score(2, 0.52, True, verified_score=0.9, flag_p=1e-4, copy_source="t.nii.gz", copy_slice=3),
        _score(3, 0.9995, True),  # flagged, no mask
        _score(4, 0.30, False),
    ]
    summary = {
        "index": {"path": "/idx"},
        "null": {"mean": 0.5, "std": 0.1, "n": 5000},
        "threshold": threshold.to_dict(),
        "volumes": [
            {"volume": VOLUME, "axis": "axial", "array_axis": 0, "slices_total": 6, "calibration_holds": False}
        ],
        "verification": {"used": True, "reason": "", "k": 5, "views": ["cut"], "null_n": 900, "threshold": 0.5},
        "calibration": {"holds": False, "reason": FAR_ABOVE, "median_z": 1.83, "limit_z": 1.2},
    }
    write_audit([AuditedVolume(VOLUME, scores)], summary, np.zeros(10), tmp_path, copy_masks={(VOLUME, 2): mask})
    return {"out": tmp_path, "mask": mask, "threshold": threshold}


def _node(scene):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "query")
    rng = np.random.default_rng(1)
    slicer.util.updateVolumeFromArray(node, (100 + 50 * rng.random(SHAPE)).astype(np.float32))
    return node


def test_copy_map_marks_the_copied_region_of_flagged_slices_only(folder) -> None:
    read = mrml.read_audit_outputs(folder["out"])
    assert list(read.audits) == [VOLUME] and set(read.copy_masks[VOLUME]) == {2}
    scene = slicer.vtkMRMLScene()
    node = _node(scene)
    result = mrml.add_audit_nodes(
        scene, node, read.audits[VOLUME], copy_masks=read.copy_masks[VOLUME], status=read.status[VOLUME]
    )
    heat = mrml.slice_view(slicer.util.arrayFromVolume(result.heatmap_node), 0)
    threshold = np.float32(folder["threshold"].mi)
    np.testing.assert_array_equal(heat[2], np.where(folder["mask"], 1.0, 0.0))  # the copy, nothing else
    assert np.all(heat[3] == np.float32(0.9995))  # flagged without a mask: the slice's mi
    assert heat[1].max() < threshold and heat[0].max() == np.float32(0.40)  # unflagged: below the threshold
    assert not heat[5].any()  # not scored
    table = mrml.table_rows(result.table_node)
    assert [table[2][c] for c in ("verified_score", "copy_source", "copy_slice")] == [0.9, "t.nii.gz", 3]

    def view(k: int) -> np.ndarray:
        rgba = mrml_views.composite_slice_rgba(
            scene, node, result.heatmap_node, axis_name="axial", array_axis=0, slice_index=k, size=(32, 40)
        )
        return mrml_views.overlay_mask(rgba)

    coloured = view(2)
    assert 0.05 < coloured.mean() < 0.3, "only the copied region is coloured"
    assert not view(1).any(), "an unflagged slice shows no overlay, however high its global mi"
    assert view(3).mean() > 0.9


def test_results_panel_says_the_status_in_the_reports_words(folder) -> None:
    read = mrml.read_audit_outputs(folder["out"])
    scene = slicer.vtkMRMLScene()
    result = mrml.add_audit_nodes(scene, _node(scene), read.audits[VOLUME], status=read.status[VOLUME])
    text = results_html.summary_html(result.summary())
    assert f"<b>The calibration does not hold for these inputs: {html.escape(FAR_ABOVE)}.</b>" in text
    assert "Verification ran: every slice was aligned pixel by pixel with its 5 best" in text
    assert "<b>Flags rest on the verified score alone" in text
