"""Issue 12 experiment: does the whitened energy of a slice's features tell an off-domain input?

    python tools/domain_energy_experiment.py [--out /tmp/domain-energy]

The index's whiteners map the training features to about unit variance per dimension, so the mean
squared whitened coordinate (the Mahalanobis distance to the training mean over the dimension,
before the L2 normalisation that search uses) of a slice is ≈ 1 for the training slices and grows
for slices unlike them. Four small indexes are built from ../shared/data and the demo's data (a
one-person knee index, the demo's 3-volume diffusion/EPI index, 5 lumbar-spine people, 3 brain T1
people, all with the default build options), and for each the median and 10–90% range of that
energy (averaged over the encoder's blocks) are printed for training slices, novel people of the
same domain where the data has them, and slices of other contrasts or anatomies; and the 99th
percentile of the energies the index recorded for its own null's held-out slices (``null_energy``),
the audit's limit (docs/method.md §8.1).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from MemorizationIndexLib.calibration_check import ENERGY_QUANTILE
from MemorizationIndexLib.demo import make_demo_data
from MemorizationIndexLib.embedding import embed_slices
from MemorizationIndexLib.encoders import load_encoder
from MemorizationIndexLib.encoders.base import Encoder
from MemorizationIndexLib.index_build import BuildOptions, build_index, collect_slices
from MemorizationIndexLib.reference_index import ReferenceIndex

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def energies(index: ReferenceIndex, encoder: Encoder, paths: list[Path]) -> np.ndarray:
    """Feature energy (``ReferenceIndex.feature_energy``) of every non-empty slice of ``paths`` along the index axis."""
    found = collect_slices(paths, axis=index.axis, preprocessing=index.preprocessing)
    return index.feature_energy(embed_slices(encoder, found.slices, index.preprocessing))


def report(name: str, index: ReferenceIndex, encoder: Encoder, groups: list[tuple[str, list[Path]]]) -> None:
    """Print one line per group of volumes audited against ``index``."""
    for label, paths in groups:
        values = energies(index, encoder, paths)
        low, high = np.quantile(values, [0.1, 0.9])
        print(
            f"{name:20s} {label:36s} median {np.median(values):6.2f}  10-90% {low:6.2f}-{high:6.2f}  "
            f"slices {len(values)}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/domain-energy"), help="work folder (indexes)")
    out = parser.parse_args().out
    encoder = load_encoder("default")
    spine = [DATA / "spine" / "myosegmentum" / f"{n:02d}.nii.gz" for n in (1, 2, 3, 4, 5, 20, 21)]
    brain = [DATA / "brain" / "ds002748" / f"sub-{n:02d}_T1w.nii.gz" for n in (1, 2, 3, 23, 24)]
    knee = sorted((DATA / "knee" / "pykneer-s01").glob("DESS_echo*.nii.gz"))
    other_knee = [DATA / "knee" / "pymskt-s02" / "MESE_echo1_TE6.3ms.nii.gz"]
    epi, _, _ = make_demo_data(out / "demo-data")

    experiments = [  # (index name, its training volumes, build options, groups of audited volumes)
        (
            "knee (1 person)",
            knee,
            BuildOptions(slice_stride=3, subject_pattern=r"pykneer-s01", overwrite=True),
            [
                ("knee training (in the index)", knee),
                ("knee, another person and sequence", other_knee),
                ("spine 20, 21 (another anatomy)", spine[5:]),
                ("brain T1 sub-23 (another anatomy)", brain[3:4]),
            ],
        ),
        (
            "demo EPI (3 volumes)",
            epi,
            BuildOptions(overwrite=True),
            [("EPI training", epi), ("brain T1 sub-23, 24 (another contrast)", brain[3:])],
        ),
        (
            "spine (5 people)",
            spine[:5],
            BuildOptions(overwrite=True),
            [
                ("spine training (2 of 5)", spine[:2]),
                ("spine 20, 21 (novel people)", spine[5:]),
                ("knee (another anatomy)", knee[:1]),
                ("brain T1 sub-23 (another anatomy)", brain[3:4]),
            ],
        ),
        (
            "brain T1 (3 people)",
            brain[:3],
            BuildOptions(overwrite=True),
            [
                ("brain training (1 of 3)", brain[:1]),
                ("brain T1 sub-23, 24 (novel people)", brain[3:]),
                ("spine 20 (another anatomy)", spine[5:6]),
                ("demo EPI (another contrast)", epi),
            ],
        ),
    ]
    for number, (name, training, options, groups) in enumerate(experiments):
        index = build_index(training, out / f"index-{number}", options, encoder=encoder)
        limit = np.quantile(index.null_energy, ENERGY_QUANTILE)
        print(f"{name:20s} {'the null (held-out slices)':36s} {ENERGY_QUANTILE:.0%} quantile {limit:6.2f}", flush=True)
        report(name, index, encoder, groups)


if __name__ == "__main__":
    main()
