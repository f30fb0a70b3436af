"""Headless tests of the Slicer side (MemorizationIndexLib.mrml) with slicer-core and real MRI.

Scenario (small enough for a 2-core CPU): a reference index of two spine subjects (01, 02)
with a held-out null (03); a query volume that is subject 05 with six slices of subject 01
planted into it (one of them mirrored). The query file is loaded into a ``vtkMRMLScene``
through Slicer's own ``vtkMRMLVolumeArchetypeStorageNode`` and audited with
``audit_volume_node``; the same file is audited with the command line for comparison.

Note: Slicer's reader re-orders the slice axis of these (left-handed) NIfTI files, so slice k
of the loaded node is not slice k of the file. Comparisons with the command line are therefore
made by physical position, which is what "the same slice" means.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) is needed for the MRML tests")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package is not Slicer's (pip install slicer-core)", allow_module_level=True)
sitk = pytest.importorskip("SimpleITK")

from MemorizationIndexLib import mrml, mrml_views
from MemorizationIndexLib.audit_output import read_audit
from MemorizationIndexLib.commands import audit_arguments, child_environment
from MemorizationIndexLib.index_build import BuildOptions, build_index
from MemorizationIndexLib.reference_index import ReferenceIndex
from MemorizationIndexLib.transforms import reference_copy
from MemorizationIndexLib.volumes import read_image

REPO_ROOT = Path(__file__).resolve().parents[1]
ALPHA = 0.05  # a 20-slice held-out null cannot reach smaller p-values
PLANTED = {
    2: "none",
    3: "hflip",
    4: "none",
    5: "none",
    6: "none",
    7: "none",
}  # file slice -> how 01's slice was planted


def load_volume(scene, path: Path, name: str):
    """Load a volume file into ``scene`` the way Slicer does (archetype storage node)."""
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    scene.AddNode(storage)
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName(name)
    scene.AddNode(node)
    node.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.ReadData(node), f"Slicer could not read {path}"
    return node


def node_slice_of_file_slice(node, file_image, file_axis: int, file_slice: int, node_axis: int) -> int:
    """Index (along ``node_axis``) of the node slice that lies where slice ``file_slice`` of the file lies."""
    size = file_image.GetSize()  # (i, j, k)
    index = [(s - 1) / 2.0 for s in size]
    index[2 - file_axis] = float(file_slice)
    lps = np.array(file_image.TransformContinuousIndexToPhysicalPoint(index))
    ras = np.array([-lps[0], -lps[1], lps[2], 1.0])
    ijk = np.linalg.inv(mrml.ijk_to_ras_matrix(node)) @ ras
    position = ijk[2 - node_axis]
    assert abs(position - round(position)) < 1e-3, "the file slice is not on the node's slice grid"
    return int(round(position))


@pytest.fixture(scope="module")
def spine(shared_data: Path, tmp_path_factory):
    folder = shared_data / "spine" / "myosegmentum"
    work = tmp_path_factory.mktemp("mrml")
    index_dir = work / "index"
    build_index(
        [folder / "01.nii.gz", folder / "02.nii.gz"],
        index_dir,
        BuildOptions(holdout_paths=[folder / "03.nii.gz"], overwrite=True),
    )

    donor = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "01.nii.gz")))
    host_image = sitk.ReadImage(str(folder / "05.nii.gz"))
    query = sitk.GetArrayFromImage(host_image).copy()
    for k, flip in PLANTED.items():
        query[k] = donor[k][:, ::-1] if flip == "hflip" else donor[k]
    query_image = sitk.GetImageFromArray(query)
    query_image.CopyInformation(host_image)
    query_path = work / "query.nii.gz"
    sitk.WriteImage(query_image, str(query_path))

    out_dir = work / "cli"
    # The command line and environment the module's background path uses.
    env = child_environment(REPO_ROOT / "MemorizationIndex", os.environ)
    args = audit_arguments(sys.executable, index_dir, [query_path], out_dir, device="cpu", alpha=ALPHA)
    completed = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    with open(out_dir / "slices.csv", newline="") as handle:
        cli_rows = list(csv.DictReader(handle))
    summary = json.loads((out_dir / "summary.json").read_text())

    scene = slicer.vtkMRMLScene()
    node = load_volume(scene, query_path, "query")
    index = ReferenceIndex.load(index_dir)
    result = mrml.audit_volume_node(scene, node, index, alpha=ALPHA)
    return {
        "scene": scene,
        "node": node,
        "result": result,
        "index": index,
        "index_dir": index_dir,
        "query_path": query_path,
        "file_image": read_image(query_path),
        "cli_rows": cli_rows,
        "summary": summary,
        "donor_path": folder / "01.nii.gz",
        "cli_out": out_dir,
        "cli_stderr": completed.stderr,
    }


def test_node_converts_to_the_file_geometry(spine):
    """The SimpleITK image made from the node holds the file's voxels at the same physical points."""
    node_image = mrml.volume_node_to_image(spine["node"])
    file_image = spine["file_image"]
    assert node_image.GetSize() == file_image.GetSize()
    node_array = sitk.GetArrayFromImage(node_image)
    file_array = sitk.GetArrayFromImage(file_image)
    rng = np.random.default_rng(0)
    size = node_image.GetSize()
    for _ in range(200):
        index = [int(rng.integers(0, s)) for s in size]
        point = node_image.TransformIndexToPhysicalPoint(index)
        file_index = file_image.TransformPhysicalPointToIndex(point)
        assert node_array[index[2], index[1], index[0]] == file_array[file_index[2], file_index[1], file_index[0]]


def test_right_handed_file_converts_exactly(brain_subjects):
    """For a right-handed file Slicer keeps the voxel order: array and geometry equal the file's."""
    path = brain_subjects[0]
    scene = slicer.vtkMRMLScene()
    node = load_volume(scene, path, "brain")
    node_image = mrml.volume_node_to_image(node)
    file_image = read_image(path)
    assert np.array_equal(sitk.GetArrayFromImage(node_image), sitk.GetArrayFromImage(file_image))
    np.testing.assert_allclose(node_image.GetOrigin(), file_image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(node_image.GetSpacing(), file_image.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(node_image.GetDirection(), file_image.GetDirection(), atol=1e-5)


def test_nonfinite_voxels_become_the_background_as_in_the_command_line(brain_subjects, tmp_path):
    """NaN/Inf voxels of a node become its finite minimum, as the command line reads the same file (they became 0,
    which is bright where the background lies below 0)."""
    image = read_image(brain_subjects[0])
    array = sitk.GetArrayFromImage(image) - 100.0
    array[10:14, 20:40, 30:50] = np.nan
    array[20, 5:9, 5:9], array[21, 5:9, 5:9] = np.inf, -np.inf
    damaged = sitk.GetImageFromArray(array.astype(np.float32))
    damaged.CopyInformation(image)
    path = tmp_path / "nonfinite.nrrd"  # ITK reads NaN in a NIfTI as 0; NRRD keeps it
    sitk.WriteImage(damaged, str(path))
    node_array = sitk.GetArrayFromImage(mrml.volume_node_to_image(load_volume(slicer.vtkMRMLScene(), path, "x")))
    assert np.array_equal(node_array, sitk.GetArrayFromImage(read_image(path)))
    assert node_array[12, 30, 40] == node_array[20, 6, 6] == array[np.isfinite(array)].min() < 0


def test_outputs_have_the_input_geometry(spine):
    node, result = spine["node"], spine["result"]
    expected = mrml.ijk_to_ras_matrix(node)
    for output in (result.heatmap_node, result.neighbor_node):
        np.testing.assert_array_equal(mrml.ijk_to_ras_matrix(output), expected)
        assert output.GetImageData().GetDimensions() == node.GetImageData().GetDimensions()
        assert output.GetTransformNodeID() == node.GetTransformNodeID()


def test_heatmap_equals_cli_slices_csv(spine):
    node, result, file_image = spine["node"], spine["result"], spine["file_image"]
    audit = result.audit
    cli_rows = spine["cli_rows"]
    cli_volume = spine["summary"]["volumes"][0]
    assert cli_volume["axis"] == audit.axis_name
    assert len(cli_rows) == len(audit.scores) == cli_volume["slices_scored"]
    heat = mrml.slice_view(slicer.util.arrayFromVolume(result.heatmap_node), audit.array_axis)
    masks = read_audit(spine["cli_out"]).copy_masks
    seen = set()
    for row in cli_rows:
        k = node_slice_of_file_slice(node, file_image, cli_volume["array_axis"], int(row["slice"]), audit.array_axis)
        seen.add(k)
        values = heat[k]
        if row["flagged"] != "1":  # one value, below the threshold (transparent)
            assert values.min() == values.max(), "an unflagged heatmap slice must hold one value"
            expected = min(float(row["mi"]), audit.threshold.mi)
            assert values[0, 0] == pytest.approx(expected, rel=2e-5, abs=1e-6)
            assert values[0, 0] < np.float32(audit.threshold.mi)
            continue
        mask = masks.get((row["volume"], int(row["slice"])))
        assert values.max() >= np.float32(audit.threshold.mi), "a flagged slice is coloured"
        if mask is not None and mask.any():  # the copy map: only the copied pixels are coloured
            assert int((values > 0).sum()) == int(mask.sum())
    scored = {s.slice for s in audit.scores}
    assert seen == scored
    for k in set(range(audit.n_slices)) - scored:
        assert not heat[k].any(), "unscored slices hold 0"
    # Same decisions as the command line.
    flagged_cli = {
        node_slice_of_file_slice(node, file_image, cli_volume["array_axis"], int(r["slice"]), audit.array_axis)
        for r in cli_rows
        if r["flagged"] == "1"
    }
    assert flagged_cli == {s.slice for s in audit.scores if s.flagged}


def test_planted_copies_are_flagged_with_their_source(spine):
    node, result, file_image = spine["node"], spine["result"], spine["file_image"]
    audit = result.audit
    by_slice = {s.slice: s for s in audit.scores}
    file_axis = spine["summary"]["volumes"][0]["array_axis"]
    for file_slice, flip in PLANTED.items():
        score = by_slice[node_slice_of_file_slice(node, file_image, file_axis, file_slice, audit.array_axis)]
        assert score.flagged
        assert Path(score.nn_source).name == "01.nii.gz"
        assert score.nn_slice == file_slice
        assert score.nn_flip == flip
    assert sum(not s.flagged for s in audit.scores) >= 5, "most slices of another person must stay unflagged"


def _torch_bilinear(image: np.ndarray, shape) -> np.ndarray:
    torch = pytest.importorskip("torch")
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    return torch.nn.functional.interpolate(
        tensor, size=tuple(shape), mode="bilinear", align_corners=False, antialias=True
    )[0, 0].numpy()


def test_neighbour_slices_are_the_provenance_slices(spine):
    result, index = spine["result"], spine["index"]
    audit = result.audit
    assert result.missing_neighbors == []
    neighbours = mrml.slice_view(slicer.util.arrayFromVolume(result.neighbor_node), audit.array_axis)
    query = mrml.slice_view(slicer.util.arrayFromVolume(spine["node"]), audit.array_axis)
    for score in audit.scores:
        reference = index.reference_slice(score.nn_source, score.nn_slice)
        assert reference is not None
        reference = reference_copy(
            np.asarray(reference, dtype=np.float32), score.nn_flip
        )  # as matched: flipped or rotated
        expected = (
            reference if reference.shape == neighbours.shape[1:] else _torch_bilinear(reference, neighbours.shape[1:])
        )
        np.testing.assert_allclose(neighbours[score.slice], expected, rtol=1e-5, atol=1e-4)
        if score.flagged and score.similarity > 0.999:
            # A planted copy: its nearest neighbour is pixel for pixel the query slice.
            np.testing.assert_array_equal(neighbours[score.slice], query[score.slice].astype(np.float32))


def test_table_has_one_row_per_scored_slice(spine):
    result = spine["result"]
    audit = result.audit
    table = result.table_node.GetTable()
    assert [table.GetColumn(c).GetName() for c in range(table.GetNumberOfColumns())] == list(mrml.TABLE_COLUMNS)
    rows = mrml.table_rows(result.table_node)
    assert len(rows) == len(audit.scores) > 0
    for row, score in zip(rows, audit.scores):
        assert row["slice"] == score.slice
        assert row["mi"] == pytest.approx(score.mi)
        assert row["p_value"] == pytest.approx(score.p_value)
        assert row["flagged"] == int(score.flagged)
        assert row["nn_source"] == score.nn_source
        assert row["nn_slice"] == score.nn_slice


def test_plot_chart_and_display(spine):
    scene, result = spine["scene"], spine["result"]
    chart = result.plot_chart_node
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    mi_series = chart.GetNthPlotSeriesNode(0)
    assert mi_series.GetTableNode() is result.table_node
    assert (mi_series.GetXColumnName(), mi_series.GetYColumnName()) == ("slice", "mi")
    threshold_series = chart.GetNthPlotSeriesNode(1)
    line = threshold_series.GetTableNode().GetTable().GetColumnByName("threshold_mi")
    assert line.GetValue(0) == pytest.approx(result.audit.threshold.mi)

    display = result.heatmap_node.GetDisplayNode()
    assert display.GetColorNode() is result.color_node
    assert result.color_node.GetName() == mrml.HEAT_COLOR_NODE_NAME
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == pytest.approx((0.0, 1.0))
    assert display.GetApplyThreshold()
    assert display.GetLowerThreshold() == pytest.approx(result.audit.threshold.mi)
    assert slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(result.heatmap_node) is not None
    # A second result reuses the module's colour table.
    again = mrml.add_audit_nodes(scene, spine["node"], result.audit, spine["index"], name="again")
    assert again.color_node is result.color_node
    assert scene.GetNodesByClassByName("vtkMRMLColorTableNode", mrml.HEAT_COLOR_NODE_NAME).GetNumberOfItems() == 1
    for node in again.nodes():
        scene.RemoveNode(node)


def test_outputs_sit_under_the_input_in_the_subject_hierarchy(spine):
    scene, node, result = spine["scene"], spine["node"], spine["result"]
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    input_item = sh.GetItemByDataNode(node)
    assert result.folder_item_id and sh.GetItemParent(result.folder_item_id) == input_item
    for output in (result.heatmap_node, result.neighbor_node, result.table_node, result.plot_chart_node):
        assert sh.GetItemParent(sh.GetItemByDataNode(output)) == result.folder_item_id


def test_slice_view_shows_overlay_on_flagged_slice_only(spine):
    scene, node, result = spine["scene"], spine["node"], spine["result"]
    audit = result.audit
    flagged = max((s for s in audit.scores if s.flagged), key=lambda s: s.mi)
    novel = min((s for s in audit.scores if not s.flagged), key=lambda s: s.mi)

    def view(score, foreground):
        return mrml_views.composite_slice_rgba(
            scene,
            node,
            foreground,
            axis_name=audit.axis_name,
            array_axis=audit.array_axis,
            slice_index=score.slice,
            opacity=0.6,
        )

    on_flagged = view(flagged, result.heatmap_node)
    on_novel = view(novel, result.heatmap_node)
    assert on_flagged.shape[-1] in (3, 4) and on_flagged.shape[:2] == on_novel.shape[:2]
    mask = audit.copy_masks.get(flagged.slice)
    covered = mrml_views.overlay_mask(on_flagged).mean()
    if mask is None:
        assert covered > 0.9, "a flagged slice without a copy mask is covered by the colour overlay"
    else:  # the copy map colours the copied pixels only
        assert abs(covered - mask.mean()) < 0.1, (covered, mask.mean())
    assert not mrml_views.overlay_mask(on_novel).any(), "a novel slice must show no overlay"
    # The novel slice looks exactly as without any foreground layer, and it is not blank.
    plain = view(novel, None)
    np.testing.assert_array_equal(on_novel[..., :3], plain[..., :3])
    assert plain[..., :3].std() > 5
    # The private view was cleaned up.
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    assert all(
        composites.GetItemAsObject(i).GetLayoutName() != "MemorizationIndexOffscreen"
        for i in range(composites.GetNumberOfItems())
    )


def test_show_result_in_slice_views_configures_layers(spine):
    scene, node, result = spine["scene"], spine["node"], spine["result"]
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    logics = []
    for name in ("Red", "Yellow"):
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLApplicationLogic(app_logic)
        logic.SetMRMLScene(scene)
        logic.AddSliceNode(name)
        logics.append(logic)
    try:
        mrml_views.show_result_in_slice_views(scene, result, opacity=0.5, neighbor_view_names=("Yellow",))
        red, yellow = (logic.GetSliceCompositeNode() for logic in logics)
        assert (red.GetBackgroundVolumeID(), red.GetForegroundVolumeID()) == (node.GetID(), result.heatmap_node.GetID())
        assert red.GetForegroundOpacity() == pytest.approx(0.5)
        assert yellow.GetBackgroundVolumeID() == result.neighbor_node.GetID()
        assert red.GetLinkedControl() and yellow.GetLinkedControl()
        assert logics[0].GetSliceNode().GetOrientation() == result.audit.axis_name.capitalize()
    finally:
        for logic in logics:
            slice_node, composite = logic.GetSliceNode(), logic.GetSliceCompositeNode()
            logic.SetMRMLScene(None)
            scene.RemoveNode(composite)
            scene.RemoveNode(slice_node)
        app_logic.SetMRMLScene(None)


def test_cli_outputs_rebuild_the_audit(spine):
    """The module's background path reads the CLI outputs back, flips included, into nodes."""
    folder = mrml.read_audit_outputs(spine["cli_out"])
    audits = folder.audits
    assert list(audits) == [str(spine["query_path"])]
    audit = audits[str(spine["query_path"])]
    assert len(audit.scores) == len(spine["cli_rows"])
    by_slice = {s.slice: s for s in audit.scores}
    for file_slice, flip in PLANTED.items():
        assert by_slice[file_slice].flagged and by_slice[file_slice].nn_flip == flip
    # Nodes from a file-ordered audit, on a node that has the file's voxel order (as the module's
    # exported NRRD has): values land on the same slices as in the CSV.
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "file-order")
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(spine["file_image"]))
    masks = folder.copy_masks.get(str(spine["query_path"]), {})
    result = mrml.add_audit_nodes(scene, node, audit, spine["index"], copy_masks=masks)
    heat = mrml.slice_view(slicer.util.arrayFromVolume(result.heatmap_node), audit.array_axis)
    for row in spine["cli_rows"]:
        k = int(row["slice"])
        expected = mrml.copy_map_slice(by_slice[k], masks.get(k), audit.threshold.mi, heat[k].shape)
        np.testing.assert_allclose(heat[k], expected, rtol=1e-6)
    assert result.missing_neighbors == []


def test_cli_progress_lines_match_the_module_parser(spine):
    """The Slicer module's progress bar parses these lines from the background CLI process."""
    from MemorizationIndexLib.protocol import parse_progress

    progress = [p for p in map(parse_progress, spine["cli_stderr"].splitlines()) if p]
    assert progress, spine["cli_stderr"][-500:]
    assert progress[-1][0] == progress[-1][1] == len(spine["cli_rows"])
