"""Audit a volume that is loaded in a MRML scene and show the result as MRML nodes.

Everything here takes the scene as an argument and uses only Slicer's MRML and logic
libraries, so it runs the same inside the Slicer application (``slicer.mrmlScene``) and
headless with the ``slicer-core`` package from PyPI (a plain ``slicer.vtkMRMLScene()``).

The result of :func:`audit_volume_node`:

- **MI heatmap**, a pixel-level copy map (scalar volume, same IJK-to-RAS as the input, values
  in MI units; :func:`copy_map_slice`): a flagged slice with a copy mask holds :data:`COPY_VALUE`
  (1, "copy") inside the mask and 0 elsewhere, so only the copied region is coloured; a flagged
  slice without a mask holds its ``mi`` (at least the flag threshold); an unflagged slice holds
  its ``mi``, capped just below the flag threshold; skipped slices hold 0. Displayed with a colour
  table this module creates itself (:data:`HEAT_COLOR_NODE_NAME`), window 0..1, and a threshold
  at the flag threshold (``threshold.mi``) so that everything but the flagged slices (and, where
  verified, their copied regions) is transparent in a foreground layer.
- **Nearest-neighbour volume** (same geometry): slice k holds the reference slice nearest to
  query slice k (from the index provenance, flipped as matched, resampled bilinearly to the
  query slice's grid); zeros where no reference pixels are available.
- **Table** (one row per scored slice) and a **plot chart** of ``mi`` against slice with the
  threshold line.

Slices are cut exactly as the command line cuts the file the volume was loaded from: the node
is converted to a SimpleITK image with the same geometry (RAS -> LPS), so the core picks the
same array axis.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .arrays import grey_from_channels, nonfinite_as_background
from .audit_output import read_audit
from .audit_status import AuditStatus, audit_status
from .errors import UserError
from .protocol import INDEX_ATTRIBUTE, INPUT_ATTRIBUTE
from .transforms import ORIGINAL, reference_copy, resize_bilinear

HEAT_COLOR_NODE_NAME = "MemorizationIndexHeat"


COPY_VALUE = 1.0  # the copy map's value inside a flagged slice's copy mask (the "copy" end of the MI scale)


_TABLE_TYPES = {  # the table's columns (slices.csv's, without the volume and the copy geometry) and types
    "slice": int,
    "similarity": float,
    "z": float,
    "mi": float,
    "oni": float,
    "p_value": float,
    "flagged": int,
    "nn_source": str,
    "nn_slice": int,
    "verified_score": float,
    "flag_p": float,
    "copy_source": str,
    "copy_slice": int,
}


TABLE_COLUMNS = tuple(_TABLE_TYPES)


# Anchor colours of the heat table (position in 0..1 of the MI range, r, g, b).
_HEAT_ANCHORS = (
    (0.00, 0.05, 0.03, 0.30),
    (0.50, 0.35, 0.10, 0.55),
    (0.80, 0.95, 0.60, 0.10),
    (0.95, 1.00, 0.40, 0.05),
    (1.00, 0.95, 0.08, 0.08),
)


_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


def _slicer():
    import slicer

    return slicer


def _vtk():
    import vtk

    return vtk


@dataclass
class MrmlAuditResult:
    """The nodes an audit created, and the audit itself."""

    heatmap_node: Any
    neighbor_node: Any
    table_node: Any
    plot_chart_node: Any
    audit: Any  # audit.VolumeAudit
    input_node: Any = None
    color_node: Any = None
    plot_series_nodes: list = field(default_factory=list)
    threshold_table_node: Any = None
    folder_item_id: int = 0
    missing_neighbors: list[int] = field(default_factory=list)
    status: AuditStatus | None = None

    def nodes(self) -> list:
        """Every MRML node this result created (for cleanup or saving)."""
        found = [
            self.heatmap_node,
            self.neighbor_node,
            self.table_node,
            self.threshold_table_node,
            self.plot_chart_node,
        ]
        return [node for node in found + list(self.plot_series_nodes) if node is not None]

    def summary(self) -> dict:
        """Volume-level numbers for a results panel: mean MI/ONI, flagged count, threshold, status
        (verification and calibration; None when not known)."""
        scores = self.audit.scores
        n = len(scores)
        flagged = [s.slice for s in scores if s.flagged]
        threshold = self.audit.threshold
        return {
            "volume": self.audit.volume,
            "axis": self.audit.axis_name,
            "slices_total": self.audit.n_slices,
            "slices_scored": n,
            "slices_skipped_empty": len(self.audit.skipped_empty),
            "mean_mi": float(np.mean([s.mi for s in scores])) if n else float("nan"),
            "mean_oni": float(np.mean([s.oni for s in scores])) if n else float("nan"),
            "flagged": len(flagged),
            "flagged_slices": flagged,
            "flagged_fraction": len(flagged) / n if n else 0.0,
            "threshold": threshold.to_dict(),
            "status": self.status,
            "sample_grid": self.audit.sample_grid,
        }


# --------------------------------------------------------------------------------------------
# Geometry


def ijk_to_ras_matrix(volume_node) -> np.ndarray:
    """The node's 4x4 IJK-to-RAS matrix as a numpy array."""
    matrix = _vtk().vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def volume_node_to_image(volume_node):
    """SimpleITK float32 image with the voxels and patient geometry of a scalar volume node.

    Voxel array (KJI) is copied; spacing, origin and direction are the node's IJK-to-RAS
    converted to LPS, which is what SimpleITK reports for the file the node was loaded from.
    Vector volumes become grey and NaN/Inf voxels the volume's finite minimum (its background), as the
    command line does for files (``arrays.grey_from_channels``, ``arrays.nonfinite_as_background``). A
    parent transform is not applied (the outputs observe the same transform, so they stay aligned).
    """
    import SimpleITK as sitk

    if volume_node is None or volume_node.GetImageData() is None:
        raise UserError("the input volume node has no image data")
    array = np.array(_slicer().util.arrayFromVolume(volume_node), dtype=np.float32, copy=True)
    if array.ndim == 4:
        array = grey_from_channels(array)
    if array.ndim != 3:
        raise UserError(f"volume {volume_node.GetName()} has an unsupported voxel layout {array.shape}")
    clean = nonfinite_as_background(array)
    if clean is not None:
        array = clean
    matrix = ijk_to_ras_matrix(volume_node)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    direction_ras = matrix[:3, :3] / spacing
    image = sitk.GetImageFromArray(array)
    image.SetSpacing([float(v) for v in spacing])
    image.SetOrigin([float(v) for v in _LPS_FROM_RAS @ matrix[:3, 3]])
    image.SetDirection([float(v) for v in (_LPS_FROM_RAS @ direction_ras).ravel()])
    return image


def _copy_geometry(source_node, target_node) -> None:
    matrix = _vtk().vtkMatrix4x4()
    source_node.GetIJKToRASMatrix(matrix)
    target_node.SetIJKToRASMatrix(matrix)
    target_node.SetAndObserveTransformNodeID(source_node.GetTransformNodeID())


def slice_view(array: np.ndarray, array_axis: int) -> np.ndarray:
    """A writable view of a KJI array with the slicing axis first (slice k = view[k])."""
    return np.moveaxis(array, array_axis, 0)


def neighbor_slice(index, score, shape: tuple[int, int]) -> np.ndarray | None:
    """The reference slice named by a score's provenance, flipped or rotated as matched, resized to ``shape``."""
    reference = index.reference_slice(score.nn_source, int(score.nn_slice))
    if reference is None:
        return None
    copy = getattr(score, "nn_flip", ORIGINAL) or ORIGINAL
    reference = reference_copy(np.asarray(reference, dtype=np.float32), copy)
    return resize_bilinear(reference, shape)


# --------------------------------------------------------------------------------------------
# Colours and display


def heat_color_table_rgba(n_colors: int = 256) -> np.ndarray:
    """The module's MI colour table as an [n, 4] float array (opaque)."""
    anchors = np.asarray(_HEAT_ANCHORS, dtype=np.float64)
    positions = np.linspace(0.0, 1.0, n_colors)
    rgb = np.stack([np.interp(positions, anchors[:, 0], anchors[:, c]) for c in (1, 2, 3)], axis=1)
    return np.concatenate([rgb, np.ones((n_colors, 1))], axis=1)


def heat_color_node(scene):
    """Get (or create in ``scene``) the module's own MI colour table node."""
    slicer = _slicer()
    existing = scene.GetNodesByClassByName("vtkMRMLColorTableNode", HEAT_COLOR_NODE_NAME)
    node = existing.GetItemAsObject(0) if existing.GetNumberOfItems() else None
    if node is not None:
        return node
    node = slicer.vtkMRMLColorTableNode()
    node.SetName(HEAT_COLOR_NODE_NAME)
    node.SetTypeToUser()
    node.SetAttribute("Category", "MemorizationIndex")
    node.SetDescription("Memorization Index 0 (novel) .. 1 (copy); used for MI heatmaps")
    table = heat_color_table_rgba(256)
    node.SetNumberOfColors(len(table))
    node.GetLookupTable().SetTableRange(0.0, 1.0)
    for i, (r, g, b, a) in enumerate(table):
        node.SetColor(i, f"MI {i / (len(table) - 1):.3f}", float(r), float(g), float(b), float(a))
    scene.AddNode(node)
    return node


def ensure_display_node(volume_node):
    """The volume's display node, made with the default ones when it has none."""
    if volume_node.GetDisplayNode() is None:
        volume_node.CreateDefaultDisplayNodes()
    return volume_node.GetDisplayNode()


def configure_heatmap_display(heatmap_node, color_node, threshold_mi: float, *, legend: bool = True):
    """Window 0..1 on the module's colour table, values below ``threshold_mi`` transparent."""
    display = ensure_display_node(heatmap_node)
    display.SetAndObserveColorNodeID(color_node.GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.AutoThresholdOff()
    display.SetLowerThreshold(float(threshold_mi))
    display.SetUpperThreshold(2.0)  # mi <= 1; keep the top end safely inside
    display.ApplyThresholdOn()
    display.SetInterpolate(False)
    if legend:
        legend_node = None
        scene = heatmap_node.GetScene()
        slicer = _slicer()
        try:
            if scene is not None and not scene.IsNodeClassRegistered("vtkMRMLColorLegendDisplayNode"):
                # The application's Colors module registers it; a bare (headless) scene does not.
                scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())
            legend_node = slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(heatmap_node)
        except Exception:  # noqa: BLE001 - a legend is a nicety; never fail the audit for it
            legend_node = None
        if legend_node is not None:
            legend_node.SetTitleText("Memorization Index")
            legend_node.SetLabelFormat("%.2f")
    return display


# --------------------------------------------------------------------------------------------
# Nodes


def _add_node(scene, class_name: str, name: str):
    node = scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(name))
    return node


def _fill_table(table_node, scores) -> None:
    vtk = _vtk()
    arrays = {int: vtk.vtkIntArray, float: vtk.vtkDoubleArray, str: vtk.vtkStringArray}
    table = table_node.GetTable()
    table.Initialize()
    for name, kind in _TABLE_TYPES.items():
        array = arrays[kind]()
        array.SetName(name)
        array.SetNumberOfValues(len(scores))
        for row, score in enumerate(scores):
            array.SetValue(row, kind(getattr(score, name)))
        table.AddColumn(array)
    table_node.Modified()


def table_rows(table_node) -> list[dict]:
    """The rows of a results table node as dicts (column name -> Python value)."""
    table = table_node.GetTable()
    rows = []
    for r in range(table.GetNumberOfRows()):
        row = {}
        for c in range(table.GetNumberOfColumns()):
            column = table.GetColumn(c)
            value = column.GetValue(r)
            row[column.GetName()] = value
        rows.append(row)
    return rows


def _plot_series(
    scene, name: str, table_node, y_column: str, marker: int, line: int, color: tuple[float, float, float]
):
    """A scatter plot series of ``y_column`` against the table's ``slice`` column."""
    node = _add_node(scene, "vtkMRMLPlotSeriesNode", name)
    node.SetAndObserveTableNodeID(table_node.GetID())
    node.SetXColumnName("slice")
    node.SetYColumnName(y_column)
    node.SetPlotType(_slicer().vtkMRMLPlotSeriesNode.PlotTypeScatter)
    node.SetMarkerStyle(marker)
    node.SetLineStyle(line)
    node.SetColor(*color)
    return node


def _make_plot(scene, base_name: str, table_node, scores, threshold_mi: float):
    vtk = _vtk()
    slicer = _slicer()
    threshold_table = _add_node(scene, "vtkMRMLTableNode", f"{base_name} MI threshold")
    slices = [int(s.slice) for s in scores] or [0]
    x = vtk.vtkIntArray()
    x.SetName("slice")
    y = vtk.vtkDoubleArray()
    y.SetName("threshold_mi")
    for value in (min(slices), max(slices)):
        x.InsertNextValue(value)
        y.InsertNextValue(float(threshold_mi))
    threshold_table.GetTable().AddColumn(x)
    threshold_table.GetTable().AddColumn(y)

    series = slicer.vtkMRMLPlotSeriesNode
    mi_series = _plot_series(
        scene, f"{base_name} MI", table_node, "mi", series.MarkerStyleCircle, series.LineStyleSolid, (0.85, 0.2, 0.15)
    )
    threshold_series = _plot_series(
        scene,
        f"{base_name} flag threshold",
        threshold_table,
        "threshold_mi",
        series.MarkerStyleNone,
        series.LineStyleDash,
        (0.2, 0.2, 0.2),
    )

    chart = _add_node(scene, "vtkMRMLPlotChartNode", f"{base_name} MI chart")
    chart.AddAndObservePlotSeriesNodeID(mi_series.GetID())
    chart.AddAndObservePlotSeriesNodeID(threshold_series.GetID())
    chart.SetTitle(f"Memorization Index per slice: {base_name}")
    chart.SetXAxisTitle("slice")
    chart.SetYAxisTitle("MI")
    chart.SetYAxisRangeAuto(False)
    chart.SetYAxisRange(0.0, 1.0)
    return chart, [mi_series, threshold_series], threshold_table


def _parent_in_subject_hierarchy(scene, volume_node, nodes, folder_name: str) -> int:
    """Put ``nodes`` in a folder under the input volume's item; 0 when no hierarchy exists."""
    slicer = _slicer()
    try:
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    except Exception:  # noqa: BLE001 - a scene without subject hierarchy support keeps nodes at the top
        sh = None
    if sh is None:
        return 0
    input_item = sh.GetItemByDataNode(volume_node)
    if not input_item:
        # Headless scenes have no subject hierarchy plugins that add items automatically.
        input_item = sh.CreateItem(sh.GetSceneItemID(), volume_node)
    if not input_item:
        return 0
    folder = sh.CreateFolderItem(input_item, folder_name)
    for node in nodes:
        if node is None:
            continue
        item = sh.GetItemByDataNode(node)
        if item:
            sh.SetItemParent(item, folder)
        else:
            sh.CreateItem(folder, node)
    return folder


def copy_map_slice(score, mask: np.ndarray | None, threshold_mi: float, shape: tuple[int, int]) -> np.ndarray:
    """One slice of the copy map (float32 ``shape``, MI units; see the module docstring): the copied
    region of a flagged slice at :data:`COPY_VALUE`, the rest of it 0; a flagged slice without a
    (fitting, non-empty) mask at max(mi, threshold); an unflagged slice at its mi, kept below the
    threshold so that it stays transparent."""
    threshold = np.float32(threshold_mi)
    if not score.flagged:
        below = np.nextafter(threshold, np.float32(-np.inf))
        return np.full(shape, min(np.float32(score.mi), below), dtype=np.float32)
    if mask is not None and mask.shape == tuple(shape) and mask.any():
        return np.where(mask, np.float32(COPY_VALUE), np.float32(0.0)).astype(np.float32)
    return np.full(shape, max(np.float32(score.mi), threshold), dtype=np.float32)


def _audit_arrays(
    audit, index, shape: tuple[int, ...], axis: int, copy_masks: Mapping[int, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The copy map (MI heatmap) and nearest-neighbour arrays, and the slices whose neighbour is missing."""
    heat = np.zeros(shape, dtype=np.float32)
    heat_slices = slice_view(heat, axis)
    neighbors = np.zeros(shape, dtype=np.float32)
    neighbor_slices = slice_view(neighbors, axis)
    missing: list[int] = []
    for score in audit.scores:
        k = int(score.slice)
        heat_slices[k] = copy_map_slice(score, copy_masks.get(k), audit.threshold.mi, heat_slices.shape[1:])
        picture = neighbor_slice(index, score, neighbor_slices.shape[1:]) if index is not None else None
        if picture is None:
            missing.append(k)
        else:
            neighbor_slices[k] = picture
    return heat, neighbors, missing


def _add_neighbor_node(scene, volume_node, neighbors: np.ndarray, name: str):
    """A scalar volume of the nearest reference slices, shown with the input's colours."""
    neighbor_node = _add_node(scene, "vtkMRMLScalarVolumeNode", name)
    _copy_geometry(volume_node, neighbor_node)
    _slicer().util.updateVolumeFromArray(neighbor_node, neighbors)
    neighbor_display = ensure_display_node(neighbor_node)
    input_display = volume_node.GetDisplayNode()
    if input_display is not None and input_display.GetColorNodeID():
        neighbor_display.SetAndObserveColorNodeID(input_display.GetColorNodeID())
    neighbor_display.AutoWindowLevelOn()
    return neighbor_node


def _add_heatmap_node(scene, volume_node, heat: np.ndarray, threshold_mi: float, name: str) -> tuple[Any, Any]:
    """The copy map as a scalar volume on the module's colour table, and that table's node."""
    color_node = heat_color_node(scene)
    heatmap_node = _add_node(scene, "vtkMRMLScalarVolumeNode", name)
    _copy_geometry(volume_node, heatmap_node)
    _slicer().util.updateVolumeFromArray(heatmap_node, heat)
    configure_heatmap_display(heatmap_node, color_node, threshold_mi)
    return heatmap_node, color_node


def add_audit_nodes(
    scene,
    volume_node,
    audit,
    index=None,
    *,
    subject_hierarchy: bool = True,
    name: str | None = None,
    copy_masks: Mapping[int, np.ndarray] | None = None,
    status: AuditStatus | None = None,
) -> MrmlAuditResult:
    """Create the copy map (heatmap), nearest-neighbour, table and chart nodes for an audit of ``volume_node``.

    ``index`` (a ``ReferenceIndex``) supplies the nearest reference slices; without it (or when
    a reference slice cannot be read) the neighbour slices stay 0 and are listed in
    ``missing_neighbors``. ``copy_masks``: {slice: bool mask} (``AuditOutputs.copy_masks`` of this
    volume); ``status``: the audit's verification and calibration status, for the results panel.
    """
    slicer = _slicer()
    base = name or volume_node.GetName() or "volume"
    source = np.asarray(slicer.util.arrayFromVolume(volume_node))
    shape = source.shape[:3]
    axis = int(audit.array_axis)
    if not 0 <= axis <= 2 or shape[axis] != audit.n_slices:
        raise UserError(
            f"audit of {audit.n_slices} slices along array axis {axis} does not fit volume {base} of shape {shape}"
        )

    heat, neighbors, missing = _audit_arrays(audit, index, shape, axis, copy_masks or {})

    heatmap_node, color_node = _add_heatmap_node(scene, volume_node, heat, audit.threshold.mi, f"{base} MI heatmap")

    neighbor_node = _add_neighbor_node(scene, volume_node, neighbors, f"{base} nearest reference")

    table_node = _add_node(scene, "vtkMRMLTableNode", f"{base} MI slices")
    _fill_table(table_node, audit.scores)
    chart, series, threshold_table = _make_plot(scene, base, table_node, audit.scores, audit.threshold.mi)

    for node in (heatmap_node, neighbor_node, table_node, chart):
        node.SetAttribute(INPUT_ATTRIBUTE, volume_node.GetID())
        if index is not None:
            node.SetAttribute(INDEX_ATTRIBUTE, str(index.path))
    result = MrmlAuditResult(
        heatmap_node=heatmap_node,
        neighbor_node=neighbor_node,
        table_node=table_node,
        plot_chart_node=chart,
        audit=audit,
        input_node=volume_node,
        color_node=color_node,
        plot_series_nodes=series,
        threshold_table_node=threshold_table,
        missing_neighbors=missing,
        status=status,
    )
    if subject_hierarchy:
        result.folder_item_id = _parent_in_subject_hierarchy(
            scene, volume_node, result.nodes(), f"{base} memorization audit"
        )
    return result


def audit_volume_node(
    scene,
    volume_node,
    index_dir,
    *,
    encoder=None,
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 32,
    alpha: float | None = None,
    axis: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel=None,
    subject_hierarchy: bool = True,
    name: str | None = None,
    **options,
) -> MrmlAuditResult:
    """Audit a loaded volume against a reference index and add the result nodes to ``scene``.

    ``index_dir`` is an index folder or an already loaded ``ReferenceIndex``. ``checkpoint``
    overrides the encoder checkpoint recorded in the index (MRI-CORE). The other keyword
    options go to ``audit.audit_image`` (``encoder``, ``device``, ``batch_size``, ``alpha``,
    ``axis``, ``progress(done, total)``, ``cancel`` a ``threading.Event``, ...); like every
    audit, an out-of-memory error is retried with half the batch size (down to 1).
    """
    from .audit import audit_image, summarize
    from .index_verification import SecondStage
    from .reference_index import ReferenceIndex

    if volume_node is None:
        raise UserError("no input volume given")
    index = index_dir if isinstance(index_dir, ReferenceIndex) else ReferenceIndex.load(Path(index_dir))
    image = volume_node_to_image(volume_node)
    volume_name = name or volume_node.GetName() or "volume"
    if encoder is None:
        encoder = index.load_encoder(checkpoint=checkpoint, device=device)
    audit = audit_image(
        index,
        image,
        volume_name,
        encoder=encoder,
        device=device,
        batch_size=batch_size,
        alpha=alpha,
        axis=axis,
        progress=progress,
        cancel=cancel,
        stage=(stage := SecondStage(index)),
        **options,
    )
    status = audit_status(summarize([audit], index, stage), audit.calibration is None or audit.calibration.holds)
    return add_audit_nodes(
        scene,
        volume_node,
        audit,
        index,
        subject_hierarchy=subject_hierarchy,
        name=name,
        copy_masks=audit.copy_masks,
        status=status,
    )


@dataclass
class AuditFolder:
    """A command-line audit's outputs as the Slicer side uses them, by volume as written by the CLI:
    ``audits`` (``VolumeAudit``), ``copy_masks`` ({slice: bool mask}) and ``status``."""

    audits: dict[str, Any]
    copy_masks: dict[str, dict[int, np.ndarray]]
    status: dict[str, AuditStatus]


def _volume_audits(outputs) -> dict:
    from .audit import VolumeAudit

    audits = {}
    try:
        for entry in outputs.summary["volumes"]:
            audits[entry["volume"]] = VolumeAudit(
                volume=entry["volume"],
                array_axis=int(entry["array_axis"]),
                axis_name=entry["axis"],
                n_slices=int(entry["slices_total"]),
                skipped_empty=[],
                scores=[],
                threshold=outputs.threshold,
                sample_grid=str(entry.get("sample_grid") or ""),
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{outputs.folder / 'summary.json'} has a corrupt volume entry ({exc!r})") from None
    return audits


def read_audit_outputs(out_dir: str | Path) -> AuditFolder:
    """Rebuild ``VolumeAudit`` objects, copy masks and status from a command-line audit's output folder.

    Reads with ``audit_output.read_audit``. ``nn_flip`` comes from the rank-1 rows of ``neighbors.csv``
    ("none" when that file is absent). Used by the Slicer module, which runs the CLI in a background
    process and then shows its results as nodes.
    """
    outputs = read_audit(out_dir)
    audits = _volume_audits(outputs)
    for row in outputs.rows:
        if row.volume not in audits:
            raise UserError(f"{outputs.folder / 'slices.csv'} names volume {row.volume}, not listed in summary.json")
        audits[row.volume].scores.append(row)
    for audit in audits.values():
        scored = {s.slice for s in audit.scores}
        audit.skipped_empty = [k for k in range(audit.n_slices) if k not in scored]
    masks: dict[str, dict[int, np.ndarray]] = {volume: {} for volume in audits}
    for (volume, k), mask in outputs.copy_masks.items():
        masks.setdefault(volume, {})[k] = mask
    holds = {e["volume"]: e.get("calibration_holds") for e in outputs.summary["volumes"]}
    status = {volume: audit_status(outputs.summary, holds.get(volume)) for volume in audits}
    return AuditFolder(audits, masks, status)
