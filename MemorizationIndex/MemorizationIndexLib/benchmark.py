"""``memorization-index benchmark``: the paper's detection benchmark (Deo et al., arXiv 2602.13066), split by subject.

Per dataset: subjects are split (seeded) into reference and test subjects; ``n`` non-empty
slices are sampled from each side; at each duplication level that share of the test slices is
replaced by reference slices drawn without replacement; every query slice (duplicates and novel
alike) is augmented by each condition. The reference (with flipped copies, as ``build-index``
does) is written with :func:`build_index_from_features`, with the verified null made from the
reference pixels as ``build-index`` makes it (:func:`verified_null.reference_verified_null`), and
queries are scored through both stages of the audit (:mod:`benchmark_stages`), so the benchmark
measures the shipped pipeline; ``verification=False`` (``--no-verification``) scores the global
stage alone.

Levels are nested (the duplicates of 5% are among those of 15%, ...) and every distinct
(slice, condition) is augmented and embedded once and reused across levels. The data (split, sampling,
augmentation, features) is made by :mod:`benchmark_data`, the command's options are read by
:mod:`benchmark_cli`; this module scores, evaluates and writes the results.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .atomic_write import text_file, write_files
from .audit import score_features
from .augment import (
    ALL_CONDITIONS,
    CONDITIONS,
    GENERATOR_CONDITIONS,
)
from .baselines import auprc, auroc, auth_pct, ct_score, fid, kid, raw_cosine_similarity, vendi
from .benchmark_data import (
    DEFAULT_LEVELS,
    DEFAULT_SLICES_PER_SPLIT,
    DatasetFeatures,
    DatasetSpec,
    Log,
    PreparedDataset,
    embed_dataset,
    prepare_dataset,
    seeded_rng,
)
from .benchmark_report import render_markdown
from .benchmark_stages import (
    COPY_COLUMNS,
    TwoStage,
    by_copied_anatomy,
    copy_rows,
    made_of,
    score_two_stage,
    two_stage_figures,
)
from .encoders import load_encoder
from .encoders.base import Encoder
from .index_build import build_index_from_features, copies_provenance
from .machine_info import machine
from .patch_search import PATCH_CANDIDATES
from .pearson import max_pixel_correlation
from .preprocess import PreprocessSettings, prepare_batch
from .reference_index import EncoderInfo
from .region_search import NATIVE_ONLY_CANDIDATES, REGION_CANDIDATES
from .scoring import DEFAULT_ALPHA, NullModel, oni_from_z
from .search import build_flat_index, max_similarity
from .second_stage import DEFAULT_CANDIDATES, VIEWS, SliceGrids, search_depth, slice_places
from .transforms import REFERENCE_COPIES
from .verified_null import reference_verified_null
from .whitening import ShrinkageWhitener

PIXEL_SIZE = 64
PAPER_NULL_SPLITS = 10
METHODS = ("mi", "two_stage", "mi_paper", "cosine_raw", "pixel_corr")
COPIES_FILE = "copies.csv"  # per copy: how both stages saw it (benchmark_stages.copy_rows)


def _paper_scores(
    reference: dict[str, np.ndarray], queries: dict[str, dict[str, np.ndarray]], seed: int
) -> tuple[NullModel, dict[str, np.ndarray]]:
    """Paper-faithful MI: raw ZCA (ε = 1e-6) on the unflipped reference, half-vs-half null with the shared whitener."""
    whiteners = {b: ShrinkageWhitener(shrinkage=0.0, eps=1e-6).fit(reference[b]) for b in reference}
    vectors = {b: whiteners[b].transform(reference[b]) for b in reference}
    n = len(next(iter(reference.values())))
    rng = seeded_rng(seed, "paper-null")
    pooled = []
    for _ in range(PAPER_NULL_SPLITS):
        order = rng.permutation(n)
        half_a, half_b = order[: n // 2], order[n // 2 :]
        indexes = {b: build_flat_index(vectors[b][half_b]) for b in reference}
        pooled.append(max_similarity(indexes, {b: vectors[b][half_a] for b in reference}))
    indexes = {b: build_flat_index(vectors[b]) for b in reference}
    similarity = {
        c: max_similarity(indexes, {b: whiteners[b].transform(q[b]) for b in reference}) for c, q in queries.items()
    }
    return NullModel(np.concatenate(pooled)), similarity


def _set_features(features: dict[str, np.ndarray], blocks: Sequence[str]) -> np.ndarray:
    """The feature vector of set-level baselines: raw block features concatenated."""
    return np.concatenate([np.asarray(features[b], np.float64) for b in blocks], axis=1)


@dataclass
class _ConditionScores:
    """Per-condition scores of every query row (novel rows first, then duplicates)."""

    scores: dict[str, dict[str, np.ndarray]]  # method -> condition -> detection score per row
    mi: dict[str, np.ndarray] = field(default_factory=dict)
    oni: dict[str, np.ndarray] = field(default_factory=dict)
    flagged: dict[str, np.ndarray] = field(default_factory=dict)
    correct_source: dict[str, np.ndarray] = field(default_factory=dict)  # duplicates whose top-1 is the true source
    paper_null: NullModel | None = None
    paper_similarity: dict[str, np.ndarray] = field(default_factory=dict)
    two_stage: dict[str, TwoStage] = field(default_factory=dict)  # both stages (when verification runs)


def _score_conditions(
    prepared: PreparedDataset,
    features: DatasetFeatures,
    index,
    blocks: list[str],
    *,
    alpha: float,
    preprocessing: PreprocessSettings,
    seed: int,
    baselines: bool,
    encoder: Encoder | None = None,
    batch_size: int = 32,
) -> _ConditionScores:
    """Score every condition's queries with the shipped path: the global stage (``mi``) and, given the
    ``encoder``, both stages (``two_stage``); optionally the baselines."""
    places = slice_places(prepared.reference_provenance)
    grids = SliceGrids(prepared.reference_slices, preprocessing, places) if encoder is not None else None
    depth = search_depth(index.candidates) if encoder is not None else 1
    reference_raw = {b: features.reference[b][: prepared.n] for b in blocks}
    out = _ConditionScores({m: {} for m in METHODS})
    if baselines:
        queries = {c: {b: q[b] for b in blocks} for c, q in features.queries.items() if c in CONDITIONS}
        out.paper_null, out.paper_similarity = _paper_scores(reference_raw, queries, seed)
        ref_pixels = prepare_batch(prepared.reference_slices, PIXEL_SIZE, preprocessing)[:, 0]
    prov = prepared.reference_provenance
    true_source = [(prov.source[r], prov.slice[r]) for r in prepared.duplicate_rows]
    for condition, raw in features.queries.items():
        rows, ids, found = score_features(index, {b: raw[b] for b in blocks}, alpha, k=depth)
        if encoder is not None:
            two = score_two_stage(
                index,
                encoder,
                prepared.queries[condition],
                features.query_tiles.get(condition),
                rows,
                ids,
                found,
                grids,
                alpha=alpha,
                batch_size=batch_size,
            )
            out.two_stage[condition], out.scores["two_stage"][condition] = two, two.score
        out.scores["mi"][condition] = np.array([r["similarity"] for r in rows])
        out.mi[condition] = np.array([r["mi"] for r in rows])
        out.oni[condition] = np.array([r["oni"] for r in rows])
        out.flagged[condition] = np.array([r["flagged"] for r in rows])
        edits = prepared.parameters[condition][prepared.n :]
        out.correct_source[condition] = np.array(
            [
                (r["nn_source"], r["nn_slice"]) in made_of(true_source[j], edits[j])
                for j, r in enumerate(rows[prepared.n :])
            ],
            dtype=bool,
        )
        if baselines and condition in CONDITIONS:
            out.scores["mi_paper"][condition] = out.paper_similarity[condition]
            out.scores["cosine_raw"][condition] = raw_cosine_similarity({b: raw[b] for b in blocks}, reference_raw)
            query_pixels = prepare_batch(prepared.queries[condition], PIXEL_SIZE, preprocessing)[:, 0]
            out.scores["pixel_corr"][condition] = max_pixel_correlation(query_pixels, ref_pixels)
    return out


def _detection_rows(
    prepared: PreparedDataset,
    scored: _ConditionScores,
    condition: str,
    level: float,
    novel: np.ndarray,
    dup: np.ndarray,
) -> tuple[list[dict], dict]:
    """Per-sample AUROC/AUPRC rows of every method and the provenance row of one condition and level."""
    rows = []
    for method in (m for m in METHODS if condition in scored.scores[m]):
        s = scored.scores[method][condition]
        rows.append(
            {
                "dataset": prepared.name,
                "condition": condition,
                "level": level,
                "method": method,
                "auroc": auroc(s[dup], s[novel]),
                "auprc": auprc(s[dup], s[novel]),
                "n_dup": int(len(dup)),
                "n_novel": int(len(novel)),
            }
        )
    provenance = {
        "dataset": prepared.name,
        "condition": condition,
        "level": level,
        "top1_accuracy": float(scored.correct_source[condition][: len(dup)].mean()),
    }
    return rows, provenance


def _set_level_values(
    scored: _ConditionScores,
    condition: str,
    members: np.ndarray,
    *,
    query_set: np.ndarray | None,
    ref_set: np.ndarray,
    clean_test_set: np.ndarray | None,
    seed: int,
) -> dict[str, float]:
    """Set-level scores of the query set ``members`` (row positions) of one condition."""
    values = {
        "mean_mi": float(scored.mi[condition][members].mean()),
        "mean_oni": float(scored.oni[condition][members].mean()),
        "flagged_fraction": float(scored.flagged[condition][members].mean()),
    }
    if query_set is not None and scored.paper_null is not None:
        paper_z = scored.paper_null.z(scored.paper_similarity[condition][members])
        values["mean_oni_paper"] = float(np.mean(oni_from_z(paper_z)))
        values["ct_score"] = (
            ct_score(ref_set, clean_test_set, query_set, seed=seed) if clean_test_set is not None else float("nan")
        )
        values["auth_pct"] = auth_pct(ref_set, query_set)
        values["fid"] = fid(ref_set, query_set)
        values["kid"] = kid(ref_set, query_set)
        values["vendi"] = vendi(query_set)
    return values


def _false_positive_rate(prepared: PreparedDataset, scored: _ConditionScores) -> tuple[list[dict], list[dict]]:
    """Share of novel test slices flagged: pooled over the conditions of each group run, and per condition."""
    n, pooled = prepared.n, []
    for group, members in (("paper", CONDITIONS), ("generator", GENERATOR_CONDITIONS)):
        flags = [scored.flagged[c][:n] for c in scored.flagged if c in members]
        if flags:
            novel_flags = np.concatenate(flags)
            pooled.append(
                {
                    "dataset": prepared.name,
                    "group": group,
                    "value": float(novel_flags.mean()),
                    "n_novel_scored": int(novel_flags.size),
                }
            )
    by_condition = [
        {"dataset": prepared.name, "condition": c, "value": float(flags[:n].mean())}
        for c, flags in scored.flagged.items()
    ]
    return pooled, by_condition


def _copies_found(prepared: PreparedDataset, scored: _ConditionScores) -> list[dict]:
    """Per condition, over all duplicates (the largest level's): share flagged and provenance top-1."""
    n, n_dup = prepared.n, len(prepared.duplicate_rows)
    return [
        {
            "dataset": prepared.name,
            "condition": c,
            "n_duplicates": n_dup,
            "flagged": float(scored.flagged[c][n:].mean()),
            "top1_accuracy": float(scored.correct_source[c].mean()),
        }
        for c in scored.flagged
    ]


def _condition_rows(
    out: dict,
    prepared: PreparedDataset,
    features: DatasetFeatures,
    scored: _ConditionScores,
    blocks: Sequence[str],
    levels: Sequence[float],
    *,
    seed: int,
    set_level: bool,
    baselines: bool,
) -> None:
    """Append each condition's and level's per-sample, provenance and set-level rows to ``out``."""
    n = prepared.n
    ref_set = _set_features({b: features.reference[b][:n] for b in blocks}, blocks)
    clean_test_set = (
        _set_features({b: features.queries["clean"][b][:n] for b in blocks}, blocks)
        if "clean" in features.queries
        else None
    )
    for condition in features.queries:
        paper_set_level = set_level and condition in CONDITIONS  # the Table 1-3 layouts hold the paper's 8 only
        set_all = _set_features(features.queries[condition], blocks) if baselines and paper_set_level else None
        for level in ([0.0] if paper_set_level else []) + list(levels):
            k = prepared.n_duplicates(level)
            novel, dup = np.setdiff1d(np.arange(n), prepared.replaced_positions[:k]), n + np.arange(k)
            if k > 0:
                rows, provenance_row = _detection_rows(prepared, scored, condition, level, novel, dup)
                out["per_sample"] += rows
                out["provenance"].append(provenance_row)
            if paper_set_level:
                members = np.concatenate([novel, dup])
                values = _set_level_values(
                    scored,
                    condition,
                    members,
                    seed=seed,
                    ref_set=ref_set,
                    clean_test_set=clean_test_set,
                    query_set=set_all[members] if set_all is not None else None,
                )
                out["set_level"] += [
                    {"dataset": prepared.name, "condition": condition, "level": level, "metric": metric, "value": value}
                    for metric, value in values.items()
                ]


def evaluate_dataset(
    prepared: PreparedDataset,
    features: DatasetFeatures,
    encoder_info: EncoderInfo,
    *,
    levels: Sequence[float] = DEFAULT_LEVELS,
    preprocessing: PreprocessSettings = PreprocessSettings(),
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
    set_level: bool = True,
    baselines: bool = True,
    encoder: Encoder | None = None,
    batch_size: int = 32,
    work_dir: str | Path | None = None,
    log: Log = lambda m: None,
) -> dict:
    """All metrics of one dataset: per-sample AUROC/AUPRC, set-level scores (paper conditions), provenance,
    copies flagged and false positives; with the ``encoder``, also both stages (``two_stage``)."""
    blocks = list(encoder_info.blocks)
    stage = {"encoder": encoder, "batch_size": batch_size}
    index = _benchmark_index(
        prepared, features, encoder_info, preprocessing=preprocessing, seed=seed, work_dir=work_dir, log=log, **stage
    )
    scored = _score_conditions(
        prepared,
        features,
        index,
        blocks,
        alpha=alpha,
        preprocessing=preprocessing,
        seed=seed,
        baselines=baselines,
        **stage,
    )
    out: dict = {"per_sample": [], "set_level": [], "provenance": []}
    _condition_rows(
        out, prepared, features, scored, blocks, levels, seed=seed, set_level=set_level, baselines=baselines
    )
    out["false_positive_rate"], out["false_positive_rate_by_condition"] = _false_positive_rate(prepared, scored)
    out["copies"] = _copies_found(prepared, scored)
    out["two_stage"] = _two_stage_rows(prepared, scored, preprocessing)
    out["copy_rows"] = _copy_rows(prepared, scored, preprocessing)
    out["partial_by_anatomy"] = by_copied_anatomy(out["copy_rows"])
    out["info"] = _dataset_info(prepared, index, alpha, scored.paper_null)
    null_info = out["info"]["null"]
    rates = ", ".join(f"{r['group']} {r['value']:.4f}" for r in out["false_positive_rate"])
    log(f"{prepared.name}: null mean {null_info['mean']:.4f} std {null_info['std']:.4f}; false-positive rate {rates}")
    return out


def _benchmark_index(
    prepared: PreparedDataset,
    features: DatasetFeatures,
    encoder_info: EncoderInfo,
    *,
    encoder: Encoder | None,
    preprocessing: PreprocessSettings,
    seed: int,
    batch_size: int,
    work_dir: str | Path | None,
    log: Log,
):
    """The benchmark's reference index (the reference slices and their copies); given the ``encoder``,
    with the verified null made from the reference pixels as ``build-index`` makes it."""
    blocks = list(encoder_info.blocks)
    provenance = copies_provenance(prepared.reference_provenance, REFERENCE_COPIES)
    reference = {b: features.reference[b] for b in blocks}
    verified_null = None
    if encoder is not None:
        start = time.perf_counter()
        verified_null = reference_verified_null(
            prepared.reference_slices,
            prepared.reference_provenance.subject,
            reference,
            np.asarray(provenance.original_row),
            encoder,
            preprocessing,
            places=slice_places(prepared.reference_provenance),
            tiles=features.reference_tiles,
            seed=seed,
            batch_size=batch_size,
        )
        seconds = time.perf_counter() - start
        n = len(verified_null.scores)
        log(f"{prepared.name}: verified null of {n // 2} held-out slices and their blurred twins in {seconds:.0f} s")
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        return build_index_from_features(
            reference,
            provenance,
            Path(tmp) / "index",
            encoder_info=encoder_info,
            preprocessing=preprocessing,
            seed=seed,
            verified_null=verified_null,
            tiles=features.reference_tiles,
        )


def _two_stage_rows(prepared: PreparedDataset, scored: _ConditionScores, settings: PreprocessSettings) -> list[dict]:
    """Per condition, over every novel slice and the largest level's duplicates: the figures of both stages."""
    return [
        {
            "dataset": prepared.name,
            "condition": condition,
            **two_stage_figures(
                two,
                prepared.n,
                prepared.duplicate_rows,
                prepared.reference_provenance,
                edits=prepared.parameters[condition],
                truth=prepared.copy_masks.get(condition),
                queries=prepared.queries[condition],
                settings=settings,
            ),
        }
        for condition, two in scored.two_stage.items()
    ]


def _copy_rows(prepared: PreparedDataset, scored: _ConditionScores, settings: PreprocessSettings) -> list[dict]:
    """Per condition, one row per duplicate of the largest level: how both stages saw it (``copies.csv``)."""
    return [
        {"dataset": prepared.name, "condition": condition, **row}
        for condition, two in scored.two_stage.items()
        for row in copy_rows(
            two,
            prepared.n,
            prepared.duplicate_rows,
            prepared.reference_provenance,
            prepared.parameters[condition],
            truth=prepared.copy_masks.get(condition),
            queries=prepared.queries[condition],
            settings=settings,
        )
    ]


def _dataset_info(prepared: PreparedDataset, index, alpha: float, paper_null: NullModel | None) -> dict:
    """The dataset's description in results.json: subjects, sizes, nulls and thresholds."""
    threshold = index.null_model.threshold(alpha)
    verified = index.verified_null
    return {
        "dataset": prepared.name,
        "reference_subjects": prepared.reference_subjects,
        "test_subjects": prepared.test_subjects,
        "slices_per_split": prepared.n,
        "max_duplicates": len(prepared.duplicate_rows),
        "null": index.config["null"],
        "threshold": threshold.to_dict(),
        "verified_null": (
            {
                "n": len(verified.scores),
                "threshold": verified.threshold(alpha / 2),
                "bands": verified.thresholds(alpha / 2),
            }
            if verified is not None
            else None
        ),
        "paper_null": (
            {"mean": paper_null.mean, "std": paper_null.std, "n": len(paper_null.values)} if paper_null else None
        ),
        "notes": prepared.notes,
    }


def _empty_results() -> dict:
    """The results dict before any dataset: every row list empty."""
    return {
        "per_sample": [],
        "set_level": [],
        "provenance": [],
        "copies": [],
        "false_positive_rate": [],
        "false_positive_rate_by_condition": [],
        "two_stage": [],
        "copy_rows": [],
        "partial_by_anatomy": [],
        "datasets": [],
    }


def _add_dataset(results: dict, part: dict, spec: DatasetSpec, t0: float) -> None:
    """Append one dataset's rows and its description (with seconds since ``t0``) to ``results``."""
    for key in (
        "per_sample",
        "set_level",
        "provenance",
        "copies",
        "false_positive_rate",
        "false_positive_rate_by_condition",
        "two_stage",
        "copy_rows",
        "partial_by_anatomy",
    ):
        results[key] += part[key]
    results["datasets"].append(
        {
            **part["info"],
            "paths": spec.paths,
            "subject_pattern": spec.subject_pattern,
            "seconds": time.perf_counter() - t0,
        }
    )


def run_benchmark(
    specs: Sequence[DatasetSpec],
    out_dir: str | Path,
    *,
    encoder: Encoder | None = None,
    encoder_name: str = "default",
    checkpoint: str | None = None,
    device: str = "cpu",
    levels: Sequence[float] = DEFAULT_LEVELS,
    conditions: Sequence[str] = ALL_CONDITIONS,
    slices_per_split: int = DEFAULT_SLICES_PER_SPLIT,
    seed: int = 0,
    alpha: float = DEFAULT_ALPHA,
    batch_size: int = 32,
    preprocessing: PreprocessSettings = PreprocessSettings(),
    verification: bool = True,
    command: str | None = None,
    log: Log = lambda m: None,
) -> dict:
    """Run the whole benchmark and write ``results.json``, ``results.md`` and ``copies.csv`` into ``out_dir``;
    ``verification=False`` scores the global stage alone."""
    started = time.perf_counter()
    if encoder is None:
        encoder = load_encoder(encoder_name, checkpoint=checkpoint, device=device)
    info = EncoderInfo.of(encoder, checkpoint)
    out_path = Path(out_dir)
    out_path.mkdir(parents=True, exist_ok=True)
    results, host = _empty_results(), machine()
    for spec in specs:
        t0 = time.perf_counter()
        prepared = prepare_dataset(
            spec,
            slices_per_split=slices_per_split,
            levels=levels,
            conditions=conditions,
            seed=seed,
            preprocessing=preprocessing,
            log=log,
        )
        features = embed_dataset(prepared, encoder, preprocessing, batch_size=batch_size, log=log)
        part = evaluate_dataset(
            prepared,
            features,
            info,
            levels=levels,
            preprocessing=preprocessing,
            alpha=alpha,
            seed=seed,
            encoder=encoder if verification else None,
            batch_size=batch_size,
            work_dir=out_path,
            log=log,
        )
        _add_dataset(results, part, spec, t0)
        run = {"levels": levels, "conditions": conditions, "slices_per_split": slices_per_split, "seed": seed}
        run |= {"alpha": alpha, "verification": verification, "command": command, "started": started, "machine": host}
        _write_results(results, out_path, info, preprocessing, run)
    return results


def _write_results(
    results: dict, out_path: Path, info: EncoderInfo, preprocessing: PreprocessSettings, run: dict
) -> None:
    """(Re)write results.json, results.md and copies.csv with the datasets done so far; ``run``: the run's levels,
    conditions, slices_per_split, seed, alpha, verification, command, start (``time.perf_counter``) and machine
    (:func:`machine_info.machine`)."""
    results.update(
        {
            "tool": "MemorizationIndex",
            "version": __version__,
            "command": run["command"],
            "seed": run["seed"],
            "settings": {
                "encoder": {
                    "name": info.name,
                    "encoder_id": info.encoder_id,
                    "weights_sha256": info.weights_sha256,
                    "blocks": list(info.blocks),
                    "checkpoint": info.checkpoint,
                },
                "preprocessing": preprocessing.to_dict(),
                "levels": list(run["levels"]),
                "conditions": list(run["conditions"]),
                "slices_per_split": run["slices_per_split"],
                "alpha": run["alpha"],
                "split": "by subject (seeded); reference = the larger half of the subjects",
                "pixel_corr_size": PIXEL_SIZE,
                "score_used_for_ranking": "mi ranks by the similarity s (mi is a monotone function of s; "
                "s avoids ties where mi rounds to 1.0); two_stage ranks by the flag's order (flag_p), "
                "ties (flag_p = 1 for most unflagged slices) broken by the verified score, then the similarity s",
                "set_level_features": "raw block features concatenated; "
                "CT-score held-out set = the clean, unduplicated test slices",
                "verification": _verification_settings(run["verification"]),
            },
            "runtime_seconds": time.perf_counter() - run["started"],
            "machine": run["machine"],
        }
    )
    summary = {key: value for key, value in results.items() if key != "copy_rows"}
    texts = {
        "results.json": json.dumps(_jsonable(summary), indent=1, sort_keys=True) + "\n",
        "results.md": render_markdown(summary),
        COPIES_FILE: _copies_csv(results["copy_rows"]),
    }
    write_files(out_path, {name: text_file(text) for name, text in texts.items()})


def _copies_csv(rows: Sequence[dict]) -> str:
    """``copies.csv``: one row per copy of the largest level of every condition (:data:`COPY_COLUMNS`; only the
    header when the second stage did not run)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COPY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def _verification_settings(used: bool) -> dict:
    """results.json's description of the second stage as the benchmark runs it."""
    return {
        "used": used,
        "k": DEFAULT_CANDIDATES,
        "patch_candidates": PATCH_CANDIDATES if used else 0,
        "region_candidates": REGION_CANDIDATES if used else 0,
        "native_only_candidates": NATIVE_ONLY_CANDIDATES if used else 0,
        "views": list(VIEWS),
        "flag": "flag_p < alpha, flag_p = verified_null.flag_p (Bonferroni) of the global and verified p-values"
        if used
        else "global p < alpha (--no-verification)",
        "calibration": "assumed to hold for every condition's queries (the audit falls back to the verified "
        "p-value alone for inputs the global null does not describe; the benchmark does not check)",
    }


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
