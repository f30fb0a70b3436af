"""Regenerate Resources/Screenshots/overlay.png: what Slicer's slice views show after an audit.

Headless (slicer-core): builds a small brain index (two training subjects, one held-out subject
for the null), makes a query volume of another person with a few training slices planted in it,
audits it with ``MemorizationIndexLib.mrml.audit_volume_node`` and renders, with Slicer's own
``vtkMRMLSliceLogic``, three views: a flagged slice with the MI heatmap overlay, its nearest
training slice (the neighbour volume), and a novel slice (no overlay).

    python Testing/make_overlay_screenshot.py [--data ../shared/data] [--out Resources/Screenshots/overlay.png]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "MemorizationIndex"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "Resources" / "Screenshots" / "overlay.png")
    args = parser.parse_args(argv)

    import SimpleITK as sitk
    import slicer
    from PIL import Image, ImageDraw

    from MemorizationIndexLib import mrml, mrml_views
    from MemorizationIndexLib.index_build import BuildOptions, build_index
    from MemorizationIndexLib.transforms import resize_bilinear

    brain = sorted((args.data / "brain" / "ds002748").glob("sub-*_T1w.nii.gz"))
    if len(brain) < 5:
        print(f"error: brain subjects not found under {args.data}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="mi-screenshot-"))
    train, holdout, host = brain[:2], brain[2], brain[4]
    index_dir = work / "index"
    build_index(train, index_dir, BuildOptions(holdout_paths=[holdout], reference_copies=False, overwrite=True))

    # The "generated" volume: another person's slices (resized to the training subject's slice
    # grid) with a run of the training subject's own slices planted in it.
    donor_image = sitk.ReadImage(str(train[0]))
    donor = sitk.GetArrayFromImage(donor_image)
    host = sitk.GetArrayFromImage(sitk.ReadImage(str(host)))
    query = np.zeros_like(donor)
    for k in range(min(len(host), len(donor))):
        query[k] = resize_bilinear(host[k], donor.shape[1:]).astype(donor.dtype)
    for k in range(60, 80):
        query[k] = donor[k]
    query_image = sitk.GetImageFromArray(query)
    query_image.CopyInformation(donor_image)
    query_path = work / "query.nii.gz"
    sitk.WriteImage(query_image, str(query_path))

    scene = slicer.vtkMRMLScene()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(query_path))
    scene.AddNode(storage)
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName("generated")
    scene.AddNode(node)
    node.SetAndObserveStorageNodeID(storage.GetID())
    storage.ReadData(node)
    result = mrml.audit_volume_node(scene, node, index_dir, alpha=0.01)
    audit = result.audit
    flagged = [s for s in audit.scores if s.flagged]
    novel = [s for s in audit.scores if not s.flagged]
    if not flagged or not novel:
        print("error: the scenario needs a flagged and a novel slice", file=sys.stderr)
        return 1
    hot = max(flagged, key=lambda s: (s.mi, -abs(s.slice - 70)))
    cold = min(novel, key=lambda s: abs(s.slice - hot.slice - 25))

    def render(background, foreground, score):
        rgba = mrml_views.composite_slice_rgba(
            scene,
            background,
            foreground,
            axis_name=audit.axis_name,
            array_axis=audit.array_axis,
            slice_index=score.slice,
            opacity=0.55,
            size=(320, 320),
        )
        return Image.fromarray(rgba[..., :3])

    panels = [
        (render(node, result.heatmap_node, hot), f"slice {hot.slice}: MI {hot.mi:.3f}, flagged"),
        (
            render(result.neighbor_node, None, hot),
            f"nearest training slice ({Path(hot.nn_source).name.split('_')[0]}, {hot.nn_slice})",
        ),
        (render(node, result.heatmap_node, cold), f"slice {cold.slice}: MI {cold.mi:.3f}, novel"),
    ]
    width = sum(p.width for p, _ in panels) + 4 * (len(panels) - 1)
    canvas = Image.new("RGB", (width, panels[0][0].height + 22), (20, 20, 24))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for picture, label in panels:
        canvas.paste(picture, (x, 22))
        draw.text((x + 6, 5), label, fill=(235, 235, 235))
        x += picture.width + 4
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out, optimize=True)
    print(
        f"wrote {args.out} ({args.out.stat().st_size // 1024} KB): {len(flagged)} of {len(audit.scores)} slices flagged"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
