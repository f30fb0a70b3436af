"""Held-out check of issue 2: index N brain subjects, audit augmented copies of one of them and N others.

    python tools/heldout_check.py [--data ../shared/data/brain/ds002748] [--train 12] [--out /tmp/heldout]

Prints how many copies are flagged with their true source slice (per condition) and how many
slices of the other people are flagged.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MemorizationIndexLib.augment import CONDITIONS, augment_slice
from MemorizationIndexLib.cli import main as cli
from MemorizationIndexLib.preprocess import PreprocessSettings, scale_unit
from MemorizationIndexLib.reference_index import ReferenceIndex
from MemorizationIndexLib.volumes import image_slices, read_image


def run(data: Path, n_train: int, out: Path, copied: int = 2, seed: int = 11) -> None:
    """Build, plant copies of training subject ``copied``, audit, print the counts."""
    subjects = sorted(data.glob("*.nii.gz"))
    train, others = subjects[:n_train], subjects[n_train : 2 * n_train]
    assert cli(["build-index", *map(str, train), "--out", str(out / "index"), "--overwrite"]) == 0
    index = ReferenceIndex.load(out / "index")
    copied = min(copied, len(train) - 1)
    source = str(train[copied].resolve())
    prov = index.provenance
    indexed = sorted({k for s, k, f in zip(prov.source, prov.slice, prov.flip) if s == source and f == "none"})
    stack = image_slices(read_image(train[copied]), 0)
    rng = np.random.default_rng(seed)
    truth = [(CONDITIONS[i % len(CONDITIONS)], k) for i, k in enumerate(indexed)]
    copies = [augment_slice(scale_unit(stack[k], PreprocessSettings()), c, rng)[0] for c, k in truth]
    image = sitk.GetImageFromArray(np.stack(copies).astype(np.float32))
    image.SetSpacing((0.87, 0.87, 1.0))
    copies_path = str(out / "copies.nii.gz")
    sitk.WriteImage(image, copies_path)
    assert (
        cli(["audit", str(out / "index"), copies_path, *map(str, others), "--out", str(out / "audit"), "--no-report"])
        == 0
    )
    with open(out / "audit" / "slices.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    scored = {int(r["slice"]): r for r in rows if r["volume"] == copies_path}
    hits: dict[str, list[bool]] = {}
    for i, (condition, k) in enumerate(truth):
        r = scored.get(i)
        hits.setdefault(condition, []).append(
            r is not None and r["flagged"] == "1" and r["nn_source"] == source and int(r["nn_slice"]) == k
        )
    found = sum(sum(h) for h in hits.values())
    print(
        f"copies flagged with their true source: {found}/{len(truth)} ({found / len(truth):.1%}); per condition: "
        + ", ".join(f"{c} {np.mean(h):.3f}" for c, h in hits.items())
    )
    other_rows = [r for r in rows if r["volume"] != copies_path]
    flagged = sum(r["flagged"] == "1" for r in other_rows)
    print(
        f"slices of {len(others)} other people flagged: {flagged}/{len(other_rows)} "
        f"({flagged / max(len(other_rows), 1):.2%})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "brain" / "ds002748"
    )
    parser.add_argument("--train", type=int, default=12)
    parser.add_argument("--out", type=Path, default=Path("/tmp/heldout"))
    args = parser.parse_args()
    run(args.data, args.train, args.out)
