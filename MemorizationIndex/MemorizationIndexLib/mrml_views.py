"""Slice views of an audit's MRML nodes: the query with its MI heatmap as foreground and the nearest training
slices in other views, turned to the audited plane and linked; one slice jumped to; and one slice composited offscreen
into an RGBA image, as Slicer's slice logic draws it (work with a plain scene; the application adds layouts on top).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .mrml import ensure_display_node, ijk_to_ras_matrix

if TYPE_CHECKING:
    from .mrml import MrmlAuditResult


OFFSCREEN_LAYOUT_NAME = "MemorizationIndexOffscreen"  # the private slice view of :func:`composite_slice_rgba`


def setup_slice_composite(composite_node, background_node, foreground_node=None, opacity: float = 0.6) -> None:
    """Background = query volume, foreground = MI heatmap at ``opacity``, no label layer."""
    composite_node.SetBackgroundVolumeID(background_node.GetID() if background_node is not None else None)
    composite_node.SetForegroundVolumeID(foreground_node.GetID() if foreground_node is not None else None)
    composite_node.SetForegroundOpacity(float(opacity))


def show_result_in_slice_views(
    scene,
    result: MrmlAuditResult,
    *,
    opacity: float = 0.6,
    query_view_names=None,
    neighbor_view_names=(),
    link: bool = True,
) -> None:
    """Query + heatmap in slice views, the nearest-neighbour volume in others, turned and linked.

    Views are named by layout name (``"Red"``, ``"Yellow"``, ...). Views in ``neighbor_view_names``
    show the nearest-neighbour volume; views in ``query_view_names`` (all other views when it
    is None) show the input with the MI heatmap as foreground at ``opacity``. Those views are
    turned to the audit's slicing plane and, with ``link``, linked so navigation follows.
    """
    slice_nodes = {}
    all_slices = scene.GetNodesByClass("vtkMRMLSliceNode")
    for i in range(all_slices.GetNumberOfItems()):
        node = all_slices.GetItemAsObject(i)
        slice_nodes[node.GetLayoutName()] = node
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for i in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(i)
        layout = composite.GetLayoutName()
        if layout == OFFSCREEN_LAYOUT_NAME:
            continue
        if layout in neighbor_view_names:
            setup_slice_composite(composite, result.neighbor_node, None, 0.0)
        elif query_view_names is None or layout in query_view_names:
            setup_slice_composite(composite, result.input_node, result.heatmap_node, opacity)
        else:
            continue
        if link:
            composite.SetLinkedControl(True)
        if layout in slice_nodes:
            align_slice_node(slice_nodes[layout], result.input_node, result.audit.axis_name)


def align_slice_node(slice_node, volume_node, axis_name: str) -> None:
    """Turn a slice view to the volume's plane that the audit cut (axial/coronal/sagittal)."""
    slice_node.SetOrientation(axis_name.capitalize())
    slice_node.RotateToVolumePlane(volume_node)


def slice_center_ras(volume_node, array_axis: int, slice_index: int) -> tuple[float, float, float]:
    """RAS position of the centre of slice ``slice_index`` cut along ``array_axis``."""
    dims = volume_node.GetImageData().GetDimensions()  # (I, J, K)
    ijk = [(d - 1) / 2.0 for d in dims]
    ijk[2 - int(array_axis)] = float(slice_index)
    ras = ijk_to_ras_matrix(volume_node) @ np.array(ijk + [1.0])
    return float(ras[0]), float(ras[1]), float(ras[2])


def jump_to_slice(slice_node, volume_node, array_axis: int, slice_index: int) -> None:
    """Move a slice view (already aligned with :func:`align_slice_node`) to one slice."""
    slice_node.JumpSliceByOffsetting(*slice_center_ras(volume_node, array_axis, slice_index))


def _ensure_default_colors(scene) -> None:
    """Grey and other default colour tables (present in the application; added headless)."""
    if scene.GetNodeByID("vtkMRMLColorTableNodeGrey") is None:
        import slicer

        color_logic = slicer.vtkMRMLColorLogic()
        color_logic.SetMRMLScene(scene)
        color_logic.SetMRMLScene(None)


def composite_slice_rgba(
    scene,
    background_node,
    foreground_node,
    *,
    axis_name: str,
    array_axis: int,
    slice_index: int,
    opacity: float = 0.6,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """The RGBA image Slicer's slice logic composites for one slice (rows top to bottom).

    Builds a private slice view (slice node + composite node + ``vtkMRMLSliceLogic`` with a
    ``vtkSlicerApplicationLogic``) on ``scene``, no window needed, and removes it afterwards.
    """
    import slicer
    from vtk.util import numpy_support

    _ensure_default_colors(scene)
    for node in (background_node, foreground_node):
        if node is not None:
            ensure_display_node(node)
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    slice_logic = slicer.vtkMRMLSliceLogic()
    slice_logic.SetMRMLApplicationLogic(app_logic)
    slice_logic.SetMRMLScene(scene)
    slice_node = slice_logic.AddSliceNode(OFFSCREEN_LAYOUT_NAME)
    composite = slice_logic.GetSliceCompositeNode()
    try:
        if size is None:
            dims = background_node.GetImageData().GetDimensions()
            in_plane = [dims[i] for i in range(3) if i != 2 - int(array_axis)]
            size = (max(in_plane), max(in_plane))
        slice_node.SetDimensions(int(size[0]), int(size[1]), 1)
        setup_slice_composite(composite, background_node, foreground_node, opacity)
        align_slice_node(slice_node, background_node, axis_name)
        slice_logic.FitSliceToAll()
        jump_to_slice(slice_node, background_node, array_axis, slice_index)
        producer = slice_logic.GetImageDataConnection().GetProducer()
        producer.Update()
        image = producer.GetOutputDataObject(0)
        width, height, _ = image.GetDimensions()
        pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
        rgba = pixels.reshape(height, width, -1)[::-1].copy()  # VTK rows run bottom to top
    finally:
        slice_logic.SetMRMLScene(None)
        for node in (composite, slice_node):
            if node is not None and node.GetScene() is scene:
                scene.RemoveNode(node)
        app_logic.SetMRMLScene(None)
    return rgba


def overlay_mask(rgba: np.ndarray, tolerance: int = 8) -> np.ndarray:
    """Pixels whose colour is not grey (R, G, B differ): where a colour overlay shows."""
    rgb = rgba[..., :3].astype(np.int16)
    spread = rgb.max(axis=-1) - rgb.min(axis=-1)
    return spread > tolerance
