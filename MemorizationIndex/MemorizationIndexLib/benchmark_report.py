"""results.md of ``memorization-index benchmark``: the paper's Tables 1–4 layouts for its 8 conditions and the
tables of our generator-like conditions, rendered from the results dictionary that results.json holds."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from . import augment
from .augment import CONDITIONS, GENERATOR_CONDITIONS
from .machine_info import describe

# The paper's Table 4 (AUROC mean / min over its datasets and levels).
PAPER_TABLE4 = {
    "clean": (1.000, 1.000),
    "noise01": (1.000, 1.000),
    "noise02": (1.000, 0.999),
    "intensity": (1.000, 1.000),
    "rot3": (0.871, 0.805),
    "rot5": (0.758, 0.711),
    "hflip": (0.733, 0.626),
    "vflip": (0.727, 0.635),
}


def _f(value, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _on_machine(results: dict) -> str:
    """`` on <machine>`` where the results record it (docs/method.md §7.71), else nothing."""
    return f" on {describe(results['machine'])}" if results.get("machine") else ""


def _header_section(results: dict) -> str:
    """Title, how to regenerate, the run's settings and the datasets table."""
    settings, enc = results["settings"], results["settings"]["encoder"]
    parts = ["# Detection benchmark\n"]
    if results.get("command"):
        parts.append(f"Regenerate with:\n\n```\n{results['command']}\n```\n")
    levels = ", ".join(str(level) for level in settings["levels"])
    parts.append(
        f"Tool {results['version']}, seed {results['seed']}, encoder `{enc['encoder_id']}`, "
        f"{settings['slices_per_split']} slices per split (at most), levels {levels}, "
        f"alpha {settings['alpha']}. Runtime {results['runtime_seconds'] / 60:.1f} min{_on_machine(results)}. "
        "Subjects are split into reference and test subjects (never slices of one person on both sides); "
        "every query slice, duplicate or novel, gets the condition's augmentation; "
        "flip conditions flip every slice. The paper's 8 conditions come first (Tables 1–4 layouts); "
        "our generator-like conditions follow in their own sections.\n"
    )
    rows = [
        [
            d["dataset"],
            str(len(d["reference_subjects"])),
            str(len(d["test_subjects"])),
            str(d["slices_per_split"]),
            str(d["max_duplicates"]),
            _f(d["null"]["mean"], 4),
            _f(d["null"]["std"], 4),
            _f(d["threshold"]["similarity"], 4),
            _band_thresholds(d.get("verified_null") or {}),
        ]
        for d in results["datasets"]
    ]
    parts.append(
        "## Datasets\n\n"
        + _table(
            [
                "dataset",
                "reference subjects",
                "test subjects",
                "slices per split",
                "max duplicates",
                "null mean",
                "null std",
                "flag threshold (s)",
                "verified threshold per roughness band, score (near-exact part) (smooth → sharp)",
            ],
            rows,
        )
    )
    notes = [n for d in results["datasets"] for n in d["notes"]]
    if notes:
        parts.append("\n".join(f"- **Note:** {n}" for n in notes) + "\n")
    return "\n".join(parts)


def _band_thresholds(verified_null: dict) -> str:
    """The verified null's thresholds, one per roughness band, smoothest first, each as "score (near-exact
    part)" (its one threshold in results written before the bands)."""
    bands = verified_null.get("bands")
    if not bands:
        return _f(verified_null.get("threshold"), 4)
    return " / ".join(
        _f(band["threshold"], 3)
        + ("" if "reproduced_threshold" not in band else f" ({band['reproduced_threshold']:.3f})")
        for band in bands
    )


def _mean_min(values: Sequence[float]) -> str:
    return f"{np.mean(values):.3f} / {np.min(values):.3f}" if len(values) else "nan / nan"


def _detection_section(results: dict, methods: list[str], key: str, title: str) -> str:
    """AUROC or AUPRC, mean / min over datasets and levels, per condition (the paper's Table 4 layout)."""
    conditions = _paper_conditions(results)
    per = [r for r in results["per_sample"] if r["condition"] in conditions]
    rows = []
    for condition in conditions + ["overall"]:
        row = [condition]
        for method in methods:
            row.append(
                _mean_min([r[key] for r in per if r["method"] == method and condition in ("overall", r["condition"])])
            )
        if key == "auroc":
            paper = PAPER_TABLE4.get(condition)
            overall = "0.886 / 0.626" if condition == "overall" else "–"
            row.append(f"{paper[0]:.3f} / {paper[1]:.3f}" if paper else overall)
        rows.append(row)
    header = ["condition"] + [f"{m} mean / min" for m in methods]
    header += ["paper (reported) mean / min"] if key == "auroc" else []
    size = results["settings"]["pixel_corr_size"]
    return (
        f"## Sample-level detection, {title} (Table 4 layout)\n\nMean / min over datasets and levels. "
        "`mi`: this tool (default threshold-free ranking by the calibrated score); `mi_paper`: the paper's recipe "
        "on the same features (raw ZCA ε=1e-6, no flipped references); `cosine_raw`: non-whitened cosine of the "
        f"same features; `pixel_corr`: max Pearson correlation of {size}×{size} slices"
        + (
            "; `two_stage`: the shipped flag's order, flag_p (both stages), ties broken by the verified score, then s"
            if "two_stage" in methods
            else ""
        )
        + ".\n\n"
        + _table(header, rows)
    )


def _per_dataset_section(results: dict, methods: list[str], datasets: list[str]) -> str:
    """Min over levels of AUROC / AUPRC per dataset, condition and method, with the provenance top-1."""
    per, rows = results["per_sample"], []
    for dataset in datasets:
        for condition in _paper_conditions(results):
            row = [dataset, condition]
            for method in methods:
                sel = [
                    r for r in per if r["method"] == method and r["condition"] == condition and r["dataset"] == dataset
                ]
                row.append(f"{min(r['auroc'] for r in sel):.3f} / {min(r['auprc'] for r in sel):.3f}" if sel else "–")
            prov = [
                r["top1_accuracy"]
                for r in results["provenance"]
                if r["condition"] == condition and r["dataset"] == dataset
            ]
            row.append(_f(min(prov)) if prov else "–")
            rows.append(row)
    header = ["dataset", "condition"] + [f"{m} AUROC / AUPRC" for m in methods] + ["mi provenance top-1"]
    return (
        "## Per dataset and condition (min over levels)\n\nAUROC / AUPRC of each method, and the provenance "
        "top-1 accuracy of `mi` (share of duplicates whose nearest reference is their true source slice).\n\n"
        + _table(header, rows)
    )


def _false_positive_section(results: dict) -> str:
    """Share of novel test slices flagged at the default threshold, pooled and per condition."""
    conditions = _paper_conditions(results)
    by_condition = {(x["dataset"], x["condition"]): x["value"] for x in results["false_positive_rate_by_condition"]}
    rows = [
        [f["dataset"], _f(f["value"], 4), str(f["n_novel_scored"])]
        + [_f(by_condition[(f["dataset"], c)], 4) for c in conditions]
        for f in results["false_positive_rate"]
        if f["group"] == "paper"
    ]
    return (
        "## False-positive rate at the default threshold (novel test subjects)\n\nShare of novel test slices "
        f"flagged (p < {results['settings']['alpha']}), pooled over conditions, and per condition.\n\n"
        + _table(["dataset", "pooled", "slices scored"] + conditions, rows)
    )


def _set_level_sections(results: dict, datasets: list[str]) -> list[str]:
    """The set-level scores in the paper's Table 1, 2 and 3 layouts."""
    conditions = _paper_conditions(results)
    values = {(r["dataset"], r["condition"], r["level"], r["metric"]): r["value"] for r in results["set_level"]}
    metrics = list(dict.fromkeys(key[3] for key in values))
    levels = [0.0] + list(results["settings"]["levels"])

    def over(keys) -> np.ndarray:
        return np.array([values[k] for k in keys if values.get(k) is not None], dtype=float)

    table1 = [
        [d, f"{level:.2f}"]
        + [
            (
                f"{np.nanmean(v):.3g} ± {np.nanstd(v):.3g}"
                if (v := over((d, c, level, m) for c in conditions)).size
                else "–"
            )
            for m in metrics
        ]
        for d in datasets
        for level in levels
    ]
    table2 = []
    for metric in metrics:
        spreads = [over((d, c, level, metric) for d in datasets) for c in conditions for level in levels]
        cvs = [abs(np.nanstd(v) / np.nanmean(v)) for v in spreads if len(v) >= 2 and np.nanmean(v) != 0]
        table2.append([metric, _f(float(np.mean(cvs))) if cvs else "–"])
    table3 = [[d] + [_f(values.get((d, "clean", 0.0, m))) for m in metrics] for d in datasets]
    return [
        "## Set-level scores across the 8 conditions (Table 1 layout)\n\nMean ± standard deviation over conditions; "
        "a score that measures copying should move with the duplication level and not with the augmentation. "
        "`ct_score`: Meehan et al. C_T (negative = copying), `auth_pct`: Alaa et al. percent authentic, on the raw "
        "features concatenated over blocks.\n\n" + _table(["dataset", "level"] + metrics, table1),
        "## Consistency across datasets (Table 2 layout)\n\nCoefficient of variation (std / |mean|) across "
        "datasets of each set-level score, averaged over conditions and levels (lower = the score means the same on "
        "every anatomy).\n\n" + _table(["metric", "mean CV across datasets"], table2),
        "## Clean test sets without duplicates (Table 3 layout)\n\nSet-level scores of the clean, duplicate-free "
        "test set of novel subjects.\n\n" + _table(["dataset"] + metrics, table3),
    ]


def render_markdown(results: dict) -> str:
    """The results as tables laid out like the paper's Tables 1–4 (ours and the baselines side by side)."""
    datasets = [d["dataset"] for d in results["datasets"]]
    methods = list(dict.fromkeys(r["method"] for r in results["per_sample"]))
    parts = [_header_section(results)]
    if results.get("two_stage"):
        parts.append(_two_stage_section(results, datasets))
    if results.get("partial_by_anatomy"):
        parts.append(_anatomy_section(results))
    if _paper_conditions(results):
        parts += [
            _detection_section(results, methods, key, title) for key, title in (("auroc", "AUROC"), ("auprc", "AUPRC"))
        ]
        parts += [_per_dataset_section(results, methods, datasets), _false_positive_section(results)]
        parts += _set_level_sections(results, datasets)
    if _generator_conditions(results):
        parts += [_generator_section(results, datasets)]
    return "\n".join(parts)


def _two_stage_cells(results: dict, dataset: str, condition: str, two: dict) -> list[str]:
    """One row of the two-stage table: global / two-stage figures side by side, then the second stage's own."""

    def auc(method: str) -> str:
        sel = [
            r["auroc"]
            for r in results["per_sample"]
            if r["method"] == method and r["dataset"] == dataset and r["condition"] == condition
        ]
        return _f(min(sel)) if sel else "–"

    copies = next(r for r in results["copies"] if r["dataset"] == dataset and r["condition"] == condition)
    fpr = next(
        r["value"]
        for r in results["false_positive_rate_by_condition"]
        if r["dataset"] == dataset and r["condition"] == condition
    )
    located = "located" in two
    return [
        dataset,
        condition,
        f"{auc('mi')} / {auc('two_stage')}",
        f"{copies['flagged']:.3f} / {two['flagged']:.3f} ({two['n_duplicates']})",
        f"{_f(copies['top1_accuracy'])} / {_f(two['top1_flagged'])}",
        f"{_f(fpr, 4)} / {_f(two['false_positive_rate'], 4)}",
        _recall(two, results["settings"]["verification"]["k"]),
        _f(two["located"]) if located else "–",
        f"{_f(two['box_iou_mean'])} / {_f(two['mask_iou_mean'])}" if located else "–",
    ]


def _two_stage_section(results: dict, datasets: list[str]) -> str:
    """The shipped pipeline (global search + verification, combined flag) beside the global stage alone."""
    conditions = _paper_conditions(results) + _generator_conditions(results)
    two = {(r["dataset"], r["condition"]): r for r in results["two_stage"]}
    rows = [_two_stage_cells(results, d, c, two[(d, c)]) for d in datasets for c in conditions if (d, c) in two]
    header = [
        "dataset",
        "condition",
        "AUROC global / two-stage",
        "copies flagged global / two-stage (n)",
        "provenance top-1 global / verified",
        "novel flagged global / two-stage",
        "candidate recall",
        "copy located (box IoU ≥ 0.5)",
        "mean IoU box / mask",
    ]
    k = results["settings"]["verification"]["k"]
    regions = results["settings"]["verification"].get("region_candidates", 0)
    patches = results["settings"]["verification"].get("patch_candidates", 0)
    native_only = results["settings"]["verification"].get("native_only_candidates", 0)
    added = f", up to {patches} from the patch search (the slice's own pixels, docs/method.md §7.52)" if patches else ""
    if regions:
        added += f" and up to {regions} more from the region search (tiles of the slice, docs/method.md §7.14)"
    if native_only:
        added += f", then up to {native_only} more that count only by their near-exact part (docs/method.md §7.46)"
    return (
        "## Both stages: the shipped flag\n\nEvery query slice goes through the audit's two stages: the global "
        f"search, {k} candidate reference slices (as cut; noisy slices also smoothed){added}, pixel verification "
        "of each, and the flag flag_p < alpha, where flag_p combines the global and the verified p-value against "
        "a verified null made from held-out subject splits of the reference pixels (as `build-index` makes it; "
        "docs/method.md §7). The benchmark assumes the global calibration holds for its queries (the audit checks it "
        "per input). AUROC: min over levels (global: similarity s; two-stage: the flag's order, flag_p, with its "
        "ties – flag_p = 1 for most unflagged slices – broken by the verified score, then by s). Copies flagged and "
        "novel flagged: over all duplicates of the largest level and every novel slice. Provenance top-1: global = "
        "the nearest reference is the true source (all copies); verified = the named verified candidate (the highest "
        "bent score, docs/method.md §7.69) is the true source (flagged copies); for `interp`, the source or the "
        "neighbouring slice it is blended with (its weight reaches one half; docs/method.md §7.68). Candidate recall: "
        "the true source is among the verified candidates (in brackets: "
        f"among the first {' / '.join(_recall_ranks(k))}, the global search's). Partial "
        "copies: IoU of the named verified candidate's copy box / mask with the copied pixels in the query's "
        "foreground (0 without a copy region), over all their copies.\n\n" + _table(header, rows)
    )


def _anatomy_section(results: dict) -> str:
    """Partial copies binned by the anatomy they carry: how small a copied region the audit still finds."""
    rows = []
    for row in results["partial_by_anatomy"]:
        span = f"{100 * row['from']:g}–{100 * row['to']:g}%" if row["to"] is not None else f"≥ {100 * row['from']:g}%"
        counts = [f"{row[key]} ({row[key] / row['copies']:.2f})" for key in ("flagged", "listed", "located")]
        rows.append([row["dataset"], span, str(row["copies"]), *counts])
    header = ["dataset", "copied anatomy", "copies", "flagged", "source among the candidates", "located"]
    return (
        "## Partial copies by the anatomy they carry\n\nThe copies of `half`, `quarter` and `paste` together, binned "
        "by their copied anatomy: the copied pixels at unit intensity ≥ 0.1 (the anatomy the partial copies draw their "
        "region by), as a share of the slice's pixels. A region is drawn among those carrying a tenth of the slice's "
        "anatomy, so a copy of a slice with little anatomy (a volume's first or last slices) carries little. Flagged: "
        "two-stage, at alpha; located: copy box IoU ≥ 0.5 with the copied pixels (per copy: `copies.csv`, "
        "`copied_anatomy`).\n\n" + _table(header, rows)
    )


def _recall_ranks(k: int) -> list[str]:
    """The global candidates' ranks whose recall is shown: 1, 3 and k, each once, at most k."""
    return list(dict.fromkeys(str(r) for r in (1, 3, k) if r <= k))


def _recall(two: dict, k: int) -> str:
    """Candidate recall, with recall among the first 1, 3 and k (the global search's) candidates when recorded."""
    at = two.get("candidate_recall_at", {})
    first = " / ".join(_f(at[r]) for r in _recall_ranks(k) if r in at)
    return _f(two["candidate_recall"]) + (f" ({first})" if first else "")


def _paper_conditions(results: dict) -> list[str]:
    """The paper's conditions among those run, in the order run."""
    return [c for c in results["settings"]["conditions"] if c in CONDITIONS]


def _generator_conditions(results: dict) -> list[str]:
    """Our generator-like conditions among those run, in the order run."""
    return [c for c in results["settings"]["conditions"] if c in GENERATOR_CONDITIONS]


def _generator_rows(results: dict, dataset: str) -> list[list[str]]:
    """One row per generator condition of a dataset: mi AUROC / AUPRC (min over levels), copies flagged,
    provenance top-1 over all duplicates, false-positive rate of the novel slices."""
    per = [r for r in results["per_sample"] if r["method"] == "mi" and r["dataset"] == dataset]
    copies = {r["condition"]: r for r in results["copies"] if r["dataset"] == dataset}
    fpr = {r["condition"]: r["value"] for r in results["false_positive_rate_by_condition"] if r["dataset"] == dataset}
    rows = []
    for condition in _generator_conditions(results):
        sel = [r for r in per if r["condition"] == condition]
        found = copies[condition]
        rows.append(
            [
                dataset,
                condition,
                _f(min(r["auroc"] for r in sel)),
                _f(min(r["auprc"] for r in sel)),
                f"{found['flagged']:.3f} ({found['n_duplicates']})",
                _f(found["top1_accuracy"]),
                _f(fpr[condition], 4),
            ]
        )
    pooled = [r for r in results["false_positive_rate"] if r["dataset"] == dataset and r["group"] == "generator"]
    if pooled:
        rows.append([dataset, "pooled", "", "", "", "", _f(pooled[0]["value"], 4)])
    return rows


def _generator_section(results: dict, datasets: list[str]) -> str:
    """Our generator-like conditions: detection, share of copies flagged, provenance and false alarms."""
    rows = [row for dataset in datasets for row in _generator_rows(results, dataset)]
    header = [
        "dataset",
        "condition",
        "mi AUROC",
        "mi AUPRC",
        "copies flagged (n)",
        "provenance top-1",
        "novel flagged (FPR)",
    ]
    return (
        "## Generator-like conditions (our second group)\n\nEdits a generator plausibly leaves on a memorised "
        "slice, each with parameters drawn per slice (seeded) from fixed ranges, never tuned on these results "
        "(from `augment.py`):\n\n" + _family_ranges() + "\nNovel slices get the same edit, so the last column is the "
        f"false-positive rate of that edit (p < {results['settings']['alpha']}). AUROC / AUPRC of `mi`: min over "
        "levels; copies flagged and provenance top-1 (the nearest reference is the true source slice, or for "
        "`interp` the slice it is blended with): over all duplicates of the largest level. These are the global "
        "stage's figures; both stages, and how well the verified copy box locates the copied pixels of `half`, "
        "`quarter` and `paste`, are in the two-stage table.\n\n" + _table(header, rows)
    )


def _family_ranges() -> str:
    """The generator families and their ranges: the bullet list of :mod:`augment`'s docstring."""
    text = (augment.__doc__ or "").split("**Generator group**", 1)[-1]
    bullets = text[text.index("\n- ") :].strip().replace("\n  ", " ").replace("``", "`")
    return re.sub(r":(attr|data|func):", "", bullets) + "\n"
