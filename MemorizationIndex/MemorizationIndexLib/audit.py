"""Auditing volumes against a reference index: per-slice calibrated scores and their outputs."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import __version__
from .audit_output import Neighbour, SliceScore, check_output_dir, evidence_order, write_audit
from .calibration import few_training_subjects
from .calibration_check import CalibrationCheck, check_calibration
from .embedding import ProgressCallback, embed_slices_and_tiles
from .encoders.base import Encoder
from .errors import UserError
from .image_sets import ImageSet, is_set_input, open_set
from .index_verification import SecondStage, verify_queries
from .mosaics import find_mosaic
from .out_of_memory import halving_batch_on_out_of_memory
from .preprocess import PreprocessSettings, nonempty_mask
from .progress import OverallProgress
from .reference_index import ReferenceIndex
from .region_search import Tiles
from .scoring import Threshold, mi_from_z, oni_from_z
from .search import Neighbours
from .second_stage import VIEWS, Verified, search_depth
from .verified_null import MIN_BENT_SCORE, MIN_COPY_SCORE, evidence_p
from .verified_null import flag_p as combined_p
from .volumes import audit_cut, axis_name, image_slices, read_image, validate_inputs


@dataclass
class VolumeAudit:
    """Result of auditing one volume.

    ``evidence_slices``: {slice index: the 2D slice as stored in the image array (what the encoder
    was given)} of the few highest-scoring slices, kept so that the report need not read the
    volume again (see :func:`query_slices`).
    """

    volume: str
    array_axis: int
    axis_name: str
    n_slices: int
    skipped_empty: list[int]
    scores: list[SliceScore]
    threshold: Threshold
    neighbours: dict[int, list[Neighbour]] = field(default_factory=dict)
    evidence_slices: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    copy_masks: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    calibration: CalibrationCheck | None = None
    energy: np.ndarray | None = field(default=None, repr=False)  # feature energy of the scored slices
    sample_grid: str = ""  # a one-slice volume whose slice is a sample grid: its layout (:mod:`mosaics`)

    @property
    def flagged(self) -> int:
        """Number of flagged slices."""
        return sum(score.flagged for score in self.scores)


@dataclass
class SetAudit:
    """Result of auditing one set of 2D images (:mod:`image_sets`): one member audit per file, in
    the set's order (each member's ``volume`` is the file, its slices the indices inside it)."""

    name: str
    members: list[VolumeAudit]
    threshold: Threshold
    calibration: CalibrationCheck | None = None
    energy: np.ndarray | None = field(default=None, repr=False)  # feature energy of the scored slices
    sample_grids: int = 0  # files read as sample grids (:mod:`mosaics`), each slice one of their samples

    @property
    def scores(self) -> list[SliceScore]:
        """Every scored slice of the set, in file order."""
        return [s for m in self.members for s in m.scores]

    @property
    def n_slices(self) -> int:
        """Slices read, scored or skipped as empty."""
        return sum(m.n_slices for m in self.members)

    @property
    def flagged(self) -> int:
        """Number of flagged slices."""
        return sum(m.flagged for m in self.members)


Audit = VolumeAudit | SetAudit


def file_audits(audits: Sequence[Audit]) -> list[VolumeAudit]:
    """The per-file audits in slices.csv order: volumes as they are, sets as their members."""
    return [m for a in audits for m in (a.members if isinstance(a, SetAudit) else [a])]


def score_features(
    index: ReferenceIndex, raw: dict[str, np.ndarray], alpha: float, k: int = 5
) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Whiten, search and calibrate raw query features: per-row score dicts, top-k ids and scores."""
    found = index.search(index.whiten(raw), k=k)
    null = index.null_model
    z = null.z(found.similarity)
    p = null.p_value(found.similarity)
    rows = []
    for i in range(len(z)):
        nn = int(found.ids[i, 0])
        rows.append(
            {
                "similarity": float(found.similarity[i]),
                "z": float(z[i]),
                "mi": float(mi_from_z(z[i])),
                "oni": float(oni_from_z(z[i])),
                "p_value": float(p[i]),
                "flagged": bool(p[i] < alpha),
                "nn_source": index.provenance.source[nn],
                "nn_slice": index.provenance.slice[nn],
                "nn_flip": index.provenance.flip[nn],
            }
        )
    return rows, found.ids, found.scores


def embed_queries(
    index: ReferenceIndex,
    encoder: Encoder,
    slices: Sequence[np.ndarray],
    stage: SecondStage,
    *,
    batch_size: int,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> tuple[dict[str, np.ndarray], Tiles | None]:
    """Raw features of query slices and, when the second stage searches the index's regions, their tile
    features (one forward pass; an out-of-memory error is retried with half the batch size, down to 1)."""
    tiled = None if stage.used and index.regions is not None else 0
    return halving_batch_on_out_of_memory(
        lambda batch: embed_slices_and_tiles(
            encoder, slices, index.preprocessing, tiled=tiled, batch_size=batch, progress=progress, cancel=cancel
        ),
        batch_size,
    )


def score_slices(
    index: ReferenceIndex,
    encoder: Encoder,
    slices: Sequence[np.ndarray],
    raw: dict[str, np.ndarray],
    tiles: Tiles | None,
    stage: SecondStage,
    *,
    alpha: float,
    top_k: int,
    batch_size: int,
    cancel: threading.Event | None,
) -> tuple[list[dict], np.ndarray, np.ndarray, list[Verified] | None]:
    """Both stages for embedded slices (``tiles``: their tile features, from :func:`embed_queries`): score
    rows, top-k ids and scores (:func:`score_features`) and, when the second stage runs, every slice's best
    verified candidate."""
    depth = max(top_k, search_depth(index.candidates)) if stage.used else top_k
    rows, ids, scores = score_features(index, raw, alpha, k=depth)
    if not stage.used:
        return rows, ids, scores, None
    as_cut = Neighbours(np.array([r["similarity"] for r in rows]), ids, scores)
    verified = verify_queries(index, encoder, slices, as_cut, tiles, stage.grids, batch_size=batch_size, cancel=cancel)
    return rows, ids[:, :top_k], scores[:, :top_k], verified


def apply_verified(score: SliceScore, verified: Verified, index: ReferenceIndex) -> np.ndarray | None:
    """Copy a slice's verified score and named candidate into its score; returns its copy mask (None if empty)."""
    score.verified_score, score.roughness = verified.score, verified.roughness
    score.verified_reproduced, score.verified_bent = verified.reproduced, verified.bent
    result = verified.result
    if result is None:
        return None
    prov = index.provenance
    score.copy_source, score.copy_slice = prov.source[verified.row], int(prov.slice[verified.row])
    alignment = result.alignment
    score.copy_transposed, score.copy_angle, score.copy_scale = alignment.transposed, alignment.angle, alignment.scale
    score.copy_box = result.box
    return result.mask if result.box is not None else None


def finalize_flags(
    scores: Sequence[SliceScore],
    index: ReferenceIndex,
    alpha: float,
    stage: SecondStage,
    energy: np.ndarray | None = None,
) -> CalibrationCheck:
    """Flag the slices of one volume or set: the combined p-value of both stages
    (:func:`verified_null.flag_p`, Bonferroni) when global flags
    may stand for them (:func:`calibration_check.check_calibration`: the null holds, or the input
    sits below it), the verified p-value alone when they may not, the global p-value when there is
    no second stage (nothing at all when global flags may not stand either). ``energy``: the slices'
    feature energy (``ReferenceIndex.feature_energy``), checked against the index's null when it has one."""
    null = index.null_model
    similarity = np.array([s.similarity for s in scores], dtype=np.float64)
    check = check_calibration(similarity, null, energy, index.null_energy)
    if not scores:
        return check
    global_p = np.array([s.p_value for s in scores])
    if stage.used:
        verified_null = index.verified_null
        verified_score = np.array([s.verified_score for s in scores])
        roughness, reproduced, bent = (
            np.array([s.roughness for s in scores]),
            np.array([s.verified_reproduced for s in scores]),
            np.array([s.verified_bent for s in scores]),
        )
        verified_p = verified_null.verified_p(verified_score, roughness, np.nan_to_num(reproduced), bent)
        evidence = evidence_p(verified_p, verified_score, bent)
        flag_p = combined_p(global_p, verified_p, verified_score, bent) if check.global_flags_valid else evidence
    else:
        verified_p = np.full(len(scores), np.nan)
        flag_p = global_p if check.global_flags_valid else np.ones(len(scores))
    for score, pv, pf in zip(scores, verified_p, flag_p):
        score.verified_p, score.flag_p, score.flagged = float(pv), float(pf), bool(pf < alpha)
    return check


def _query_encoder(
    index: ReferenceIndex, encoder: Encoder | None, device: str, preprocessing: PreprocessSettings | None
) -> Encoder:
    """Check the query preprocessing against the index's and return the (loaded or checked) encoder."""
    if preprocessing is not None and preprocessing != index.preprocessing:
        raise UserError(
            f"index {index.path} was built with other preprocessing ({index.preprocessing}) than this query run "
            f"({preprocessing}); audit with the index's settings or rebuild the index"
        )
    if encoder is None:
        return index.load_encoder(device=device)
    index.check_encoder(encoder)
    return encoder


def checked_alpha(index: ReferenceIndex, alpha: float | None) -> float:
    """The significance level to use (the index's default when None), checked to lie in (0, 1)."""
    alpha = index.default_alpha if alpha is None else alpha
    if not 0 < alpha < 1:
        raise UserError(f"alpha must be between 0 and 1 (got {alpha})")
    return alpha


def record_slice(
    audit: VolumeAudit, index: ReferenceIndex, k: int, row: dict, ids: np.ndarray, scores: np.ndarray
) -> SliceScore:
    """Append slice ``k``'s score (a row of :func:`score_features`) and its top-k reference
    neighbours (``ids`` [k], ``scores`` [k]; -1 = none) to ``audit``; returns the score."""
    prov = index.provenance
    score = SliceScore(slice=int(k), **row)
    audit.scores.append(score)
    audit.neighbours[int(k)] = [
        Neighbour(rank + 1, prov.source[r], prov.slice[r], prov.flip[r], float(scores[rank]))
        for rank, r in enumerate(ids)
        if r >= 0
    ]
    return score


def audit_image(
    index: ReferenceIndex,
    image: sitk.Image,
    volume: str,
    *,
    encoder: Encoder | None = None,
    device: str = "cpu",
    batch_size: int = 32,
    alpha: float | None = None,
    axis: str | None = None,
    top_k: int = 5,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    preprocessing: PreprocessSettings | None = None,
    keep_evidence: int = 24,
    stage: SecondStage | None = None,
) -> VolumeAudit:
    """Score every non-empty slice of ``image`` against ``index``.

    ``stage``: the second stage shared by an audit run (made from the index when None).

    ``preprocessing``, when given, must equal the index's (scores across preprocessings are
    meaningless); by default the index's settings are used. ``keep_evidence``: how many of the
    highest-scoring slices to keep in ``evidence_slices`` for the report (its ``max_evidence``).
    An out-of-memory error while embedding is retried with half the batch size (down to 1).
    """
    encoder = _query_encoder(index, encoder, device, preprocessing)
    alpha = checked_alpha(index, alpha)
    stage = SecondStage(index) if stage is None else stage
    reference_plane = index.reference_plane
    array_axis, in_array_space = audit_cut(image, axis or index.axis, reference_plane, index.array_axis)
    plane = reference_plane if in_array_space and reference_plane != "auto" else axis_name(image, array_axis)
    stack = image_slices(image, array_axis)
    grid = find_mosaic(stack[0]) if len(stack) == 1 else None
    keep = np.flatnonzero(nonempty_mask(stack, index.preprocessing))
    threshold = index.null_model.threshold(alpha)
    audit = VolumeAudit(
        volume,
        array_axis,
        plane,
        len(stack),
        [int(k) for k in np.flatnonzero(~np.isin(np.arange(len(stack)), keep))],
        [],
        threshold,
        sample_grid=grid.describe() if grid is not None else "",
    )
    if len(keep) == 0:
        return audit
    slices = [stack[k] for k in keep]
    raw, tiles = embed_queries(index, encoder, slices, stage, batch_size=batch_size, progress=progress, cancel=cancel)
    rows, ids, scores, verified = score_slices(
        index, encoder, slices, raw, tiles, stage, alpha=alpha, top_k=top_k, batch_size=batch_size, cancel=cancel
    )
    masks = {}
    for i, k in enumerate(keep):
        score = record_slice(audit, index, k, rows[i], ids[i], scores[i])
        if verified is not None:
            masks[int(k)] = apply_verified(score, verified[i], index)
    audit.energy = index.feature_energy(raw)
    audit.calibration = finalize_flags(audit.scores, index, alpha, stage, audit.energy)
    best = sorted(audit.scores, key=lambda s: evidence_order(volume, s))[: max(0, keep_evidence)]
    audit.evidence_slices = {s.slice: np.array(stack[s.slice], dtype=np.float32, order="C") for s in best}
    shown = {s.slice for s in audit.scores if s.flagged} | set(audit.evidence_slices)
    audit.copy_masks = {k: m for k, m in masks.items() if m is not None and k in shown}
    return audit


def _keep_best_evidence(
    best: list[tuple[tuple, VolumeAudit, int]], audit: VolumeAudit, keep: int
) -> list[tuple[tuple, VolumeAudit, int]]:
    """Merge ``audit``'s evidence slices into ``best`` ((rank, audit, slice), best first) and drop
    the slices beyond the ``keep`` best of all volumes from their audits, so that memory does not
    grow with the number of volumes."""
    scores = {s.slice: s for s in audit.scores}
    merged = best + [(evidence_order(audit.volume, scores[k]), audit, k) for k in audit.evidence_slices]
    merged.sort(key=lambda entry: entry[0])
    for _, owner, k in merged[keep:]:
        del owner.evidence_slices[k]
    return merged[:keep]


def query_slices(audits: Sequence[Audit]) -> dict[tuple[str, int], np.ndarray]:
    """{(volume as in slices.csv, slice index): 2D slice} of the slices the audits kept, for
    ``report.write_report(..., query_slices=...)``."""
    return {(a.volume, k): img for a in file_audits(audits) for k, img in a.evidence_slices.items()}


def _summary_block(scores: list[SliceScore]) -> dict:
    n = len(scores)
    flagged = sum(s.flagged for s in scores)
    return {
        "slices_scored": n,
        "mean_mi": float(np.mean([s.mi for s in scores])) if n else None,
        "mean_oni": float(np.mean([s.oni for s in scores])) if n else None,
        "flagged": flagged,
        "flagged_fraction": flagged / n if n else 0.0,
    }


def _set_entries(audits: Sequence[Audit]) -> list[dict]:
    """summary.json's ``sets``: one entry per set, with its rows [first, stop) of slices.csv."""
    entries, row = [], 0
    for audit in audits:
        n = len(audit.scores)
        if isinstance(audit, SetAudit):
            block = _summary_block(audit.scores)
            entries.append(
                {
                    "set": audit.name,
                    "files": len(audit.members),
                    "sample_grids": audit.sample_grids,
                    "rows": [row, row + n],
                    "slices_total": audit.n_slices,
                    "slices_skipped_empty": sum(len(m.skipped_empty) for m in audit.members),
                    **block,
                    "expected_false_alarms": audit.threshold.alpha * block["slices_scored"],
                    "calibration_holds": _holds(audit),
                }
            )
        row += n
    return entries


def _verification_block(index: ReferenceIndex, stage: SecondStage | None, alpha: float) -> dict:
    """summary.json's ``verification``: whether the second stage ran, why not, and its threshold."""
    null = index.verified_null
    used = stage is not None and stage.used
    reason = "" if used else (stage.reason if stage is not None else "the second stage was not run")
    block = {
        "used": used,
        "reason": reason,
        "k": index.candidates,
        "views": list(VIEWS),
        "null_n": 0 if null is None else len(null.scores),
    }
    if null is None:
        return block
    return block | {
        "threshold": null.threshold(alpha / 2),
        "bands": null.thresholds(alpha / 2),
        "min_copy_score": MIN_COPY_SCORE,
        "min_bent_score": MIN_BENT_SCORE,
    }


def _calibration_block(audits: Sequence[Audit], index: ReferenceIndex) -> dict:
    """summary.json's ``calibration``: does the global null describe the audited inputs? (every
    volume or set on its own, which decides its flags, and all slices together, which only informs;
    both by similarity and, when every input has them, by feature energy), and how many training subjects the
    index's nulls come from (few make them run low: :func:`calibration.few_training_subjects`)."""
    failing = [a for a in audits if a.calibration is not None and not a.calibration.holds]
    similarity = np.array([s.similarity for a in audits for s in a.scores])
    energies = [a.energy for a in audits if a.energy is not None]
    energy = np.concatenate(energies) if energies and len(energies) == len(audits) else None
    every = check_calibration(similarity, index.null_model, energy, index.null_energy)
    reasons = [
        f"{Path(a.volume if isinstance(a, VolumeAudit) else a.name).name}: {a.calibration.reason}" for a in failing
    ]
    if not every.holds and len(audits) > 1:
        reasons.append(f"all inputs together: {every.reason}")
    return {
        "holds": not failing and every.holds,
        "reason": "; ".join(reasons),
        "median_z": every.median_z,
        "limit_z": every.limit_z,
        "training_subjects": index.n_subjects,
        "few_training_subjects": few_training_subjects(index.null_type, index.n_subjects),
    }


def _holds(audit: Audit) -> bool:
    return audit.calibration is None or audit.calibration.holds


def summarize(audits: Sequence[Audit], index: ReferenceIndex, stage: SecondStage | None = None) -> dict:
    """The summary.json content for audited volumes and sets (``sets`` only when there are sets)."""
    threshold = audits[0].threshold if audits else index.null_model.threshold(index.default_alpha)
    null = index.null_model
    all_scores = [s for a in audits for s in a.scores]
    sets = _set_entries(audits)
    overall = _summary_block(all_scores)
    overall["expected_false_alarms"] = threshold.alpha * overall["slices_scored"]
    return {
        "tool": "MemorizationIndex",
        "version": __version__,
        "index": {
            "path": str(index.path.resolve()),
            "index_id": index.index_id,
            "encoder_id": index.encoder_id,
            "encoder_name": index.encoder_name,
            "weights_sha256": index.weights_sha256,
            "axis": index.axis,
            "null_type": index.null_type,
            "n_reference_slices": index.n_reference_slices,
        },
        "null": {"mean": null.mean, "std": null.std, "n": len(null.values)},
        "threshold": threshold.to_dict(),
        "verification": _verification_block(index, stage, threshold.alpha),
        "calibration": _calibration_block(audits, index),
        "volumes": [
            {
                "volume": a.volume,
                "axis": a.axis_name,
                "array_axis": a.array_axis,
                "slices_total": a.n_slices,
                "slices_skipped_empty": len(a.skipped_empty),
                **_summary_block(a.scores),
                "calibration_holds": _holds(a),
                **({"sample_grid": a.sample_grid} if a.sample_grid else {}),
            }
            for a in audits
            if isinstance(a, VolumeAudit)
        ],
        **({"sets": sets} if sets else {}),
        "overall": overall,
    }


def _open_inputs(paths: Sequence[str | Path], series: str | None, volume_index: int | None) -> list[Path | ImageSet]:
    """Each query argument as one set (folder of 2D images, glob, array file) or its volume paths,
    in the order given; every header is checked (cheap) before any work."""
    inputs: list[Path | ImageSet] = []
    for raw in paths:
        if is_set_input(raw, dicom=series is None):  # --series picks one series of a DICOM folder: a volume
            inputs.append(open_set(raw))
        else:
            inputs.extend(validate_inputs([raw], series=series, volume_index=volume_index))
    return inputs


def _load_for_audit(
    index_dir: str | Path | ReferenceIndex,
    paths: Sequence[str | Path],
    out_dir: str | Path,
    checkpoint: str | Path | None,
    device: str,
    series: str | None,
    volume_index: int | None,
) -> tuple[ReferenceIndex, list[Path | ImageSet], Encoder]:
    """Load the index, open and check every input and the output folder, then load the encoder."""
    index = index_dir if isinstance(index_dir, ReferenceIndex) else ReferenceIndex.load(index_dir)
    inputs = _open_inputs(paths, series, volume_index)
    check_output_dir(out_dir)
    encoder = index.load_encoder(checkpoint=checkpoint, device=device)
    return index, inputs, encoder


def _audit_inputs(
    index: ReferenceIndex,
    inputs: list[Path | ImageSet],
    encoder: Encoder,
    *,
    alpha: float,
    batch_size: int,
    axis: str | None,
    series: str | None,
    volume_index: int | None,
    progress: ProgressCallback | None,
    cancel: threading.Event | None,
    keep_evidence: int,
    stage: SecondStage,
) -> list[Audit]:
    """Audit the opened inputs one at a time, keeping only the ``keep_evidence`` best evidence slices."""
    from .set_audit import audit_set

    overall = OverallProgress(progress, [i.n_slices if isinstance(i, ImageSet) else None for i in inputs])
    audits: list[Audit] = []
    best: list[tuple[tuple, VolumeAudit, int]] = []
    for i, item in enumerate(inputs):
        if isinstance(item, ImageSet):
            audits.append(
                audit_set(
                    index,
                    item,
                    encoder=encoder,
                    alpha=alpha,
                    batch_size=batch_size,
                    progress=overall.part(i),
                    cancel=cancel,
                    keep_evidence=keep_evidence,
                    stage=stage,
                )
            )
            overall.finish(i, item.n_slices)
        else:
            image = read_image(item, series=series, volume_index=volume_index)
            audits.append(
                audit_image(
                    index,
                    image,
                    str(item),
                    encoder=encoder,
                    batch_size=batch_size,
                    alpha=alpha,
                    axis=axis,
                    progress=overall.part(i),
                    cancel=cancel,
                    keep_evidence=keep_evidence,
                    stage=stage,
                )
            )
            overall.finish(i, len(audits[-1].scores))
            del image  # one volume in memory at a time
        for member in file_audits(audits[-1:]):
            best = _keep_best_evidence(best, member, keep_evidence)
    return audits


def audit_paths(
    index_dir: str | Path | ReferenceIndex,
    paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 32,
    alpha: float | None = None,
    axis: str | None = None,
    series: str | None = None,
    volume_index: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    engine: str = "local",
    keep_evidence: int = 24,
    verification: bool = True,
) -> list[Audit]:
    """Audit volume files/folders and sets of 2D images against an index and write the outputs.

    A folder of PNG/JPEG/TIFF/NPY/NPZ files, a glob pattern or one .npy/.npz file is a set
    (:mod:`image_sets`) and gives one :class:`SetAudit`; other inputs give one
    :class:`VolumeAudit` per volume, as before. Every input is first checked from its header
    (cheap), so a bad input fails before any work and nothing is written; then volumes are read
    and audited one at a time and sets in chunks, so memory is bounded by the largest single
    volume or chunk (not by the number of inputs). Outputs are written only when every input has
    been audited. ``progress`` gets one (done, total) over all inputs (:class:`progress.OverallProgress`).

    index_dir: the index folder, or an index already loaded from it.
    engine: ``local`` (this process) or ``ray`` (reference shards searched as Ray tasks; same results).
    keep_evidence: the audits keep the query slices of this many highest-scoring slices over all
    inputs (the report's evidence gallery; see :func:`query_slices`).
    verification: run the second stage (pixel verification of candidates) when the index allows it.
    """
    if engine not in ("local", "ray"):
        raise UserError(f"unknown engine {engine!r}; use local or ray")
    index, inputs, encoder = _load_for_audit(index_dir, paths, out_dir, checkpoint, device, series, volume_index)
    alpha = checked_alpha(index, alpha)
    stage = SecondStage(index, enabled=verification)
    if engine == "ray":
        from .ray_engine import attach_ray_search

        attach_ray_search(index)
    audits = _audit_inputs(
        index,
        inputs,
        encoder,
        alpha=alpha,
        batch_size=batch_size,
        axis=axis,
        series=series,
        volume_index=volume_index,
        progress=progress,
        cancel=cancel,
        keep_evidence=keep_evidence,
        stage=stage,
    )
    files = file_audits(audits)
    masks = {(a.volume, k): mask for a in files for k, mask in a.copy_masks.items()}
    write_audit(files, summarize(audits, index, stage), index.null_similarity, out_dir, copy_masks=masks)
    return audits
