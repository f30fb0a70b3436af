"""``memorization-index benchmark``: its options, their checks (one-line errors), the command line recorded in the
results, and the headline printed when it ends (``benchmark.run_benchmark`` runs it)."""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from collections.abc import Sequence

from .augment import (
    ALL_CONDITIONS,
    CONDITIONS,
    GENERATOR_CONDITIONS,
)
from .benchmark_data import DEFAULT_LEVELS, DEFAULT_SLICES_PER_SPLIT, DatasetSpec
from .cli_options import add_batch_size_option, add_device_option, add_encoder_options, non_negative_int
from .errors import UserError


def _parse_named(values: Sequence[str] | None, option: str) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for text in values or []:
        name, sep, rest = text.partition("=")
        if not sep or not name or not rest:
            raise UserError(f"{option} expects NAME=VALUE (got {text!r})")
        if name in parsed:
            raise UserError(f"{option} names {name!r} twice")
        parsed[name] = rest
    return parsed


def _parse_levels(text: str) -> list[float]:
    try:
        levels = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"--levels expects comma-separated fractions like 0.05,0.15 (got {text!r})") from None
    if not levels or any(not 0 < level < 1 for level in levels):
        raise UserError(f"--levels must be fractions between 0 and 1 (got {text!r})")
    return levels


def _parse_conditions(text: str) -> list[str]:
    conditions = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in conditions if c not in ALL_CONDITIONS]
    if unknown or not conditions:
        raise UserError(
            f"unknown condition(s) {', '.join(unknown) or '(none)'}; choose from the paper's "
            f"{', '.join(CONDITIONS)} or the generator-like {', '.join(GENERATOR_CONDITIONS)}"
        )
    return list(dict.fromkeys(conditions))


def _command_line(args: argparse.Namespace) -> str:
    parts = ["memorization-index", "benchmark"]
    for item in args.dataset:
        parts += ["--dataset", item]
    for item in args.subject_pattern or []:
        parts += ["--subject-pattern", item]
    if args.encoder != "default":
        parts += ["--encoder", args.encoder, "--checkpoint", str(args.checkpoint)]
    defaults = {
        "levels": ",".join(str(x) for x in DEFAULT_LEVELS),
        "conditions": ",".join(ALL_CONDITIONS),
        "slices_per_split": DEFAULT_SLICES_PER_SPLIT,
        "seed": 0,
    }
    for key, default in defaults.items():
        if str(getattr(args, key)) != str(default):
            parts += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    parts += ["--no-verification"] if args.no_verification else []
    parts += ["--out", str(args.out)]
    return shlex.join(parts)


def _run(args: argparse.Namespace) -> int:
    datasets = _parse_named(args.dataset, "--dataset")
    if not datasets:
        raise UserError("give at least one --dataset NAME=PATH[,PATH...]")
    patterns = _parse_named(args.subject_pattern, "--subject-pattern")
    unknown = sorted(set(patterns) - set(datasets))
    if unknown:
        raise UserError(f"--subject-pattern names dataset(s) {', '.join(unknown)} that no --dataset defines")
    specs = [
        DatasetSpec(name, [p for p in paths.split(",") if p], patterns.get(name)) for name, paths in datasets.items()
    ]
    for spec in specs:
        if spec.subject_pattern is not None:
            try:
                re.compile(spec.subject_pattern)
            except re.error as exc:
                raise UserError(f"--subject-pattern for {spec.name} is not a valid regular expression: {exc}") from None
    levels = _parse_levels(args.levels)
    conditions = _parse_conditions(args.conditions)
    if args.slices_per_split < 4:
        raise UserError("--slices-per-split must be at least 4")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    from .benchmark import run_benchmark  # on use: the other commands do not load the benchmark's modules

    results = run_benchmark(
        specs,
        args.out,
        encoder_name=args.encoder,
        checkpoint=args.checkpoint,
        device=args.device,
        levels=levels,
        conditions=conditions,
        slices_per_split=args.slices_per_split,
        seed=args.seed,
        batch_size=args.batch_size,
        verification=not args.no_verification,
        command=_command_line(args),
        log=log,
    )
    headlines = [
        _headline(results, group, members)
        for group, members in (("paper", CONDITIONS), ("generator-like", GENERATOR_CONDITIONS))
    ]
    print(
        f"benchmark written to {args.out} ({results['runtime_seconds'] / 60:.1f} min): "
        + "; ".join(h for h in headlines if h)
    )
    return 0


def _headline(results: dict, group: str, members: Sequence[str]) -> str:
    """One line of a group's worst figures: mi AUROC / AUPRC, provenance, copies flagged, false-positive rate,
    and those of both stages when they ran."""
    mi = [r for r in results["per_sample"] if r["method"] == "mi" and r["condition"] in members]
    if not mi:
        return ""
    prov = min(r["top1_accuracy"] for r in results["provenance"] if r["condition"] in members)
    flagged = min(r["flagged"] for r in results["copies"] if r["condition"] in members)
    fpr = max(r["value"] for r in results["false_positive_rate_by_condition"] if r["condition"] in members)
    line = (
        f"{group}: mi min AUROC {min(r['auroc'] for r in mi):.3f}, min AUPRC {min(r['auprc'] for r in mi):.3f}, "
        f"min provenance top-1 {prov:.3f}, min copies flagged {flagged:.3f}, "
        f"max false-positive rate of a condition {fpr:.4f}"
    )
    two = [r for r in results["two_stage"] if r["condition"] in members]
    if two:
        auc = min(r["auroc"] for r in results["per_sample"] if r["method"] == "two_stage" and r["condition"] in members)
        line += (
            f"; two-stage min AUROC {auc:.3f}, min copies flagged {min(r['flagged'] for r in two):.3f}, "
            f"max false-positive rate {max(r['false_positive_rate'] for r in two):.4f}"
        )
    return line


def add_benchmark_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``benchmark`` subcommand to the CLI's subparsers."""
    parser = subparsers.add_parser(
        "benchmark",
        help="measure detection of planted copies on real MRI (paper protocol, split by subject)",
        description="Every file is one subject unless --subject-pattern NAME=REGEX groups files "
        "(the first group, or the whole match, of the regex in the file path is the subject id).",
    )
    parser.add_argument(
        "--dataset",
        action="append",
        required=True,
        metavar="NAME=PATH[,PATH...]",
        help="a dataset: volume files or folders (repeatable)",
    )
    parser.add_argument(
        "--subject-pattern",
        action="append",
        metavar="NAME=REGEX",
        help="subject id of each file of dataset NAME: regex on its path",
    )
    parser.add_argument("--out", required=True, help="output folder for results.json, results.md and copies.csv")
    add_encoder_options(parser, "MRI-CORE checkpoint (for --encoder mri-core)")
    parser.add_argument(
        "--levels",
        default=",".join(str(x) for x in DEFAULT_LEVELS),
        help="duplication levels (default: 0.05,0.15,0.3,0.45)",
    )
    parser.add_argument(
        "--conditions",
        default=",".join(ALL_CONDITIONS),
        help=f"conditions (default: all): the paper's {','.join(CONDITIONS)} and the generator-like "
        f"{','.join(GENERATOR_CONDITIONS)}",
    )
    parser.add_argument(
        "--slices-per-split",
        type=int,
        default=DEFAULT_SLICES_PER_SPLIT,
        help=f"slices sampled per split (default: {DEFAULT_SLICES_PER_SPLIT})",
    )
    parser.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        help="seed of the subject split, sampling and augmentation (default: 0)",
    )
    add_device_option(parser)
    add_batch_size_option(parser)
    parser.add_argument(
        "--no-verification",
        action="store_true",
        help="score the global stage alone (quick runs): no verified null, no two-stage figures",
    )
    parser.set_defaults(func=_run)
    return parser
