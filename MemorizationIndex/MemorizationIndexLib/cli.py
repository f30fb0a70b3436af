"""Command line: ``memorization-index build-index | audit | report | demo | benchmark``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .allocator import keep_freed_memory
from .calibration import few_training_subjects
from .cli_options import (
    add_batch_size_option,
    add_device_option,
    add_encoder_options,
    fraction,
    non_negative_int,
    positive_int,
)
from .errors import UserError, one_line
from .mosaics import sample_grid_warning
from .patch_search import PATCH_MAX_SLICES
from .protocol import PROGRESS_ENV, format_error, format_progress
from .scoring import threshold_line
from .second_stage import DEFAULT_CANDIDATES
from .volumes import AXIS_CHOICES

if TYPE_CHECKING:
    from .audit import SetAudit, VolumeAudit
    from .reference_index import ReferenceIndex

DEBUG_ENV = "MEMORIZATION_INDEX_DEBUG"


def make_progress(label: str) -> Callable[[int, int], None]:
    """A progress callback: machine-readable lines when MEMORIZATION_INDEX_PROGRESS=1, else a tqdm bar
    with rate and time left, drawn only when stderr is a terminal (``disable=None``)."""
    if os.environ.get(PROGRESS_ENV) == "1":

        def report(done: int, total: int) -> None:
            print(format_progress(done, total, label), file=sys.stderr, flush=True)

        return report
    from tqdm import tqdm

    bar: dict = {}

    def update(done: int, total: int) -> None:
        if "bar" in bar and done < bar["bar"].n:  # a new count starts (another phase of the work)
            bar["bar"].close()
            del bar["bar"]
        if "bar" not in bar:
            bar["bar"] = tqdm(total=total, desc=label, unit="slice", file=sys.stderr, disable=None)
        bar["bar"].total = total  # audits of several inputs firm up their total as volumes are read
        bar["bar"].n = done
        bar["bar"].refresh()
        if done >= total:
            bar["bar"].close()
            del bar["bar"]

    return update


def _add_common(parser: argparse.ArgumentParser) -> None:
    add_device_option(parser)
    add_batch_size_option(parser)
    parser.add_argument("--series", help="DICOM series UID to read when a folder holds several")
    parser.add_argument("--volume-index", type=int, help="which volume of a 4D image to read")


def _build_index(args: argparse.Namespace) -> int:
    from .index_build import BuildOptions, build_index

    options = BuildOptions(
        encoder_name=args.encoder,
        checkpoint=args.checkpoint,
        device=args.device,
        axis=args.axis,
        holdout_paths=args.holdout or (),
        reference_copies=not args.no_copies,
        store_thumbnails=args.store_thumbnails,
        null_splits=args.null_splits,
        seed=args.seed,
        subject_pattern=args.subject_pattern,
        slice_stride=args.slice_stride,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        index_kind=args.index_kind,
        series=args.series,
        volume_index=args.volume_index,
        verification=not args.no_verification,
        candidates=args.candidates,
    )
    if getattr(args, "engine", "local") == "ray":
        from .ray_engine import build_index_ray

        index = build_index_ray(args.train, args.out, options)
    else:
        index = build_index(args.train, args.out, options, progress=make_progress("embedding"))
    null = index.config["null"]
    _note_unread([*args.train, *(args.holdout or ())])
    _warn_few_subjects(index)
    if index.regions is not None and not index.config["verification"].get("patch_search"):
        print(
            f"note: {index.n_reference_slices} reference slices, more than {PATCH_MAX_SLICES}: the index has no patch "
            "search (its memory: about 100 KB a slice), so pasted regions are sought by the region tiles alone "
            "(docs/method.md §7.53)",
            file=sys.stderr,
        )
    print(
        f"index {index.index_id} written to {index.path}: {index.n_reference_slices} reference slices "
        f"({index.config['n_vectors']} vectors with their flipped and rotated copies), encoder {index.encoder_id}, "
        f"null {null['type']} "
        f"(n={null['n']}, mean={null['mean']:.4f}, std={null['std']:.4f})"
    )
    return 0


def _warn_few_subjects(index: ReferenceIndex) -> None:
    """A warning on stderr when the index's nulls come from held-out splits of few training subjects."""
    if few_training_subjects(index.null_type, index.n_subjects):
        print(
            f"warning: only {index.n_subjects} training subject(s): each null split leaves a much smaller reference, "
            "so the nulls run low and novel slices are flagged more often than alpha; pass --holdout with real scans "
            "never used in training",
            file=sys.stderr,
        )


def _audit(args: argparse.Namespace) -> int:
    from .audit import SetAudit, VolumeAudit, audit_paths, query_slices
    from .reference_index import ReferenceIndex

    index = ReferenceIndex.load(args.index)
    audits = audit_paths(
        index,
        args.query,
        args.out,
        checkpoint=args.checkpoint,
        device=args.device,
        batch_size=args.batch_size,
        alpha=args.alpha,
        axis=args.axis,
        series=args.series,
        volume_index=args.volume_index,
        progress=make_progress("auditing"),
        engine=args.engine,
        verification=not args.no_verification,
    )
    if not args.no_report:
        from .report import write_report

        write_report(
            Path(args.out), no_training_images=args.no_training_images, index=index, query_slices=query_slices(audits)
        )
    threshold = audits[0].threshold
    volumes = [a for a in audits if isinstance(a, VolumeAudit)]
    if volumes:
        _print_volumes(volumes)
    sets = [a for a in audits if isinstance(a, SetAudit)]
    if sets:
        _print_sets(sets)
    print(f"{threshold_line(threshold, len(index.null_model.values))}; outputs in {args.out}")
    _note_unread(args.query)
    _note_calibration(audits)
    _warn_few_subjects(index)
    return 0


def _note_unread(inputs: Sequence[str]) -> None:
    """A note on stderr for each input folder holding files that were not read (no reader takes their suffix)."""
    from .image_sets import unread_files

    for raw in inputs:
        folder = Path(raw)
        unread = unread_files(folder) if folder.is_dir() else []
        if unread:
            names = ", ".join(p.relative_to(folder).as_posix() for p in unread[:3]) + (", …" if len(unread) > 3 else "")
            print(
                f"note: {folder}: {len(unread)} file(s) of a type this tool does not read were left out ({names}); "
                "it reads volumes as NIfTI/NRRD/MHA/DICOM and 2D images as PNG/JPEG/TIFF/NPY/NPZ",
                file=sys.stderr,
            )


def _note_calibration(audits: list[VolumeAudit | SetAudit]) -> None:
    """A note on stderr for each input the global null does not describe (summary.json, the report and the Slicer
    panel say the same): its flags rest on verification alone."""
    from .audit import VolumeAudit

    for audit in audits:
        if audit.calibration is not None and not audit.calibration.holds:
            name = audit.volume if isinstance(audit, VolumeAudit) else audit.name
            print(
                f"note: {name}: the calibration does not hold for this input: {audit.calibration.reason}",
                file=sys.stderr,
            )


def _print_sets(sets: list[SetAudit]) -> None:
    print(f"{'set':<40} {'files':>6} {'scored':>6} {'flagged':>8} {'expected':>8} {'mean mi':>8}")
    for s in sets:
        scores = s.scores
        mean_mi = sum(x.mi for x in scores) / len(scores) if scores else float("nan")
        print(
            f"{_name_column(s.name)} {len(s.members):>6} {len(scores):>6} {s.flagged:>8} "
            f"{s.threshold.alpha * len(scores):>8.2f} {mean_mi:>8.3f}"
        )
    for s in sets:
        if s.sample_grids:
            print(
                f"note: {s.name}: {s.sample_grids} of {len(s.members)} files are sample grids; each of their samples "
                "was audited as one slice (slices.csv: slice = its place in the grid, row by row)"
            )


def _name_column(name: str, width: int = 40) -> str:
    """A name in a table column of ``width`` characters: its end kept (where file names differ) and "…" in front
    when it is cut."""
    return (name if len(name) <= width else "…" + name[1 - width :]).ljust(width)


def _print_volumes(volumes: list[VolumeAudit]) -> None:
    print(f"{'volume':<40} {'scored':>6} {'skipped':>7} {'mean mi':>8} {'flagged':>8}")
    for audit in volumes:
        if not audit.scores:
            print(
                f"warning: {audit.volume}: no slice could be scored ({audit.n_slices} slices, all empty, constant or "
                "under 16 px); it is listed with 0 scored slices",
                file=sys.stderr,
            )
        if audit.sample_grid:
            print(f"warning: {sample_grid_warning(audit.volume, audit.sample_grid)}", file=sys.stderr)
        mean_mi = sum(s.mi for s in audit.scores) / len(audit.scores) if audit.scores else float("nan")
        print(
            f"{_name_column(Path(audit.volume).name)} {len(audit.scores):>6} {len(audit.skipped_empty):>7} "
            f"{mean_mi:>8.3f} {audit.flagged:>8}"
        )


def _report(args: argparse.Namespace) -> int:
    from .report import write_report

    path = write_report(Path(args.out_dir), no_training_images=args.no_training_images, max_evidence=args.max_evidence)
    print(f"report written to {path}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(Path(args.out), device=args.device)


def _add_build_parser(sub) -> None:
    """The ``build-index`` command: one declarative add_argument per option (long by nature)."""
    build = sub.add_parser(
        "build-index",
        help="embed training volumes into a reference index folder",
        description="Embed every non-empty slice of the training volumes (and flipped copies), whiten, "
        "index with FAISS, and calibrate the null.",
    )
    build.add_argument(
        "train",
        nargs="+",
        metavar="TRAIN_PATH",
        help="training volume files or folders (each file is one subject unless --subject-pattern)",
    )
    build.add_argument("--out", required=True, help="index folder to create")
    add_encoder_options(build, "local MRI-CORE checkpoint file (for --encoder mri-core)")
    build.add_argument(
        "--axis",
        default="auto",
        choices=AXIS_CHOICES,
        help="slicing axis in patient space (auto: the largest-spacing axis)",
    )
    build.add_argument(
        "--holdout", nargs="+", metavar="PATH", help="held-out real volumes (never trained on) for the calibration null"
    )
    build.add_argument("--subject-pattern", help="regex whose first group (or match) in a file path names its subject")
    build.add_argument(
        "--slice-stride", type=positive_int, default=1, help="index every N-th non-empty slice (default: 1)"
    )
    build.add_argument(
        "--null-splits",
        type=positive_int,
        default=10,
        help="random subject splits for the null (default: 10, raised for small sets)",
    )
    build.add_argument("--seed", type=non_negative_int, default=0, help="seed of the null splits (default: 0)")
    build.add_argument(
        "--no-copies",
        action="store_true",
        help="index only the slices as cut, not their flipped, +/-4 degree rotated, transposed and +/-90 degree "
        "turned copies (8x fewer vectors; such copies of training slices are then missed)",
    )
    build.add_argument(
        "--store-thumbnails",
        action="store_true",
        help="also store 8-bit reference slices and the patch search's pixel patches in the index (pixels!)",
    )
    build.add_argument(
        "--no-verification",
        action="store_true",
        help="skip the verified null (audits then score with the global similarity alone)",
    )
    build.add_argument(
        "--candidates",
        type=int,
        default=DEFAULT_CANDIDATES,
        help=f"training slices verified per audited slice (default {DEFAULT_CANDIDATES})",
    )
    build.add_argument("--overwrite", action="store_true", help="replace an existing index folder")
    build.add_argument(
        "--index-kind",
        default="auto",
        choices=("auto", "flat", "ivf"),
        help="flat: exact search; ivf: IVF candidates re-ranked exactly; auto (default): ivf above 200,000 vectors",
    )
    build.add_argument(
        "--engine",
        default="local",
        choices=("local", "ray"),
        help="ray: embed with Ray Data (pip install 'memorization-index[ray]'; RAY_ADDRESS selects a cluster)",
    )
    _add_common(build)
    build.set_defaults(func=_build_index)


def _add_audit_parser(sub) -> None:
    """The ``audit`` command."""
    audit = sub.add_parser(
        "audit",
        help="score query volumes slice by slice against an index",
        description="Writes OUT_DIR/slices.csv, summary.json, neighbors.csv and report.html.",
    )
    audit.add_argument("index", metavar="INDEX_DIR")
    audit.add_argument(
        "query",
        nargs="+",
        metavar="QUERY_PATH",
        help="generated volume files or folders; a folder of 2D images (PNG/JPEG/TIFF/NPY/NPZ, or NIfTI/NRRD "
        "files of one slice each), a "
        "quoted glob ('gen/*.png'), one .npy/.npz file or one sample-grid picture (a padded mosaic of "
        "samples, as torchvision's save_image writes) is a set, summarised as one row (give one folder "
        "per checkpoint to compare checkpoints)",
    )
    audit.add_argument("--out", required=True, help="output folder")
    audit.add_argument("--checkpoint", help="MRI-CORE checkpoint (if not at the path recorded in the index)")
    audit.add_argument("--alpha", type=fraction, help="significance level for flagging (default: the index's, 0.001)")
    audit.add_argument(
        "--axis",
        choices=AXIS_CHOICES,
        help="plane to cut the audited volumes along (default: the index's; auto: each volume's largest-spacing "
        "axis, or, for a volume without one, as the index's slices were cut)",
    )
    audit.add_argument("--no-report", action="store_true", help="do not write report.html")
    audit.add_argument(
        "--no-verification",
        action="store_true",
        help="score with the global similarity alone (skip the pixel verification of candidates)",
    )
    audit.add_argument(
        "--no-training-images",
        action="store_true",
        help="report without training pixels (for sharing outside the hospital)",
    )
    audit.add_argument(
        "--engine",
        default="local",
        choices=("local", "ray"),
        help="ray: search reference shards as Ray tasks (same results; pip install 'memorization-index[ray]')",
    )
    _add_common(audit)
    audit.set_defaults(func=_audit)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="memorization-index", description="Audit generative MRI models for training-data memorization."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_build_parser(sub)

    _add_audit_parser(sub)

    report = sub.add_parser("report", help="(re)build report.html from an audit's outputs")
    report.add_argument("out_dir", metavar="OUT_DIR")
    report.add_argument("--no-training-images", action="store_true", help="leave training pixels out")
    report.add_argument(
        "--max-evidence", type=positive_int, default=24, help="most suspicious slices shown (default: 24)"
    )
    report.set_defaults(func=_report)

    demo = sub.add_parser(
        "demo", help="build an index from real MRI shipped in pip packages, audit planted copies, print the result"
    )
    demo.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    add_device_option(demo)
    demo.set_defaults(func=_demo)

    from .benchmark_cli import add_benchmark_parser

    add_benchmark_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user mistakes print one ``error:`` line and exit 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    keep_freed_memory()  # 2x faster CPU forward passes (allocator.py)
    try:
        return args.func(args)
    except UserError as exc:
        print(format_error(one_line(exc)), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(format_error("interrupted; nothing half-written was kept"), file=sys.stderr)
        return 130
    except MemoryError:
        print(format_error("out of memory; lower --batch-size or audit fewer volumes at once"), file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permission denied, ... while reading or writing
        where = f" ({exc.filename})" if exc.filename else ""
        print(format_error(f"{exc.strerror or one_line(exc)}{where}"), file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: one line by default, the traceback on request
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        print(
            format_error(
                f"internal error ({type(exc).__name__}: {one_line(exc)}); please report it "
                f"(set {DEBUG_ENV}=1 for the traceback)"
            ),
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
