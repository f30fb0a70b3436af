"""Auditing a set of 2D images (:mod:`image_sets`): slices embedded in batches across files.

Files are read one at a time and their slices queued; every ``CHUNK_BATCHES`` encoder batches the
queue is embedded, searched and scored, so memory holds one chunk of slices whatever the set's
size. Each file becomes one :class:`audit.VolumeAudit` (its slices.csv rows: the file as ``volume``,
the slice index inside the file); the :class:`audit.SetAudit` groups them for the per-set summary.
"""

from __future__ import annotations

import threading

import numpy as np

from .audit import (
    SetAudit,
    VolumeAudit,
    apply_verified,
    embed_queries,
    finalize_flags,
    record_slice,
    score_slices,
)
from .audit_output import SliceScore, evidence_order
from .embedding import ProgressCallback
from .encoders.base import Encoder
from .image_sets import SET_AXIS, ImageSet, iter_set_files
from .index_verification import SecondStage
from .preprocess import nonempty_mask
from .reference_index import ReferenceIndex

CHUNK_BATCHES = 4  # encoder batches embedded and scored together
MASK_P = 0.05  # copy masks kept while scoring (verified p-value below this); flagged ones are written


def _score_chunk(
    index: ReferenceIndex,
    encoder: Encoder,
    chunk: list[tuple[VolumeAudit, int, np.ndarray]],
    stage: SecondStage,
    *,
    alpha: float,
    batch_size: int,
    top_k: int,
    cancel: threading.Event | None,
) -> tuple[list[SliceScore], np.ndarray]:
    """Embed, search, verify and score queued (member, slice index, slice) entries into their
    members; returns their scores and feature energies (``ReferenceIndex.feature_energy``) in queue
    order. Copy masks with a verified p-value below ``MASK_P`` are kept in the members (pruned to
    flagged and evidence slices at the end)."""
    slices = [s for _, _, s in chunk]
    raw, tiles = embed_queries(index, encoder, slices, stage, batch_size=batch_size, cancel=cancel)
    rows, ids, scores, verified = score_slices(
        index, encoder, slices, raw, tiles, stage, alpha=alpha, top_k=top_k, batch_size=batch_size, cancel=cancel
    )
    result = []
    for i, (member, k, _) in enumerate(chunk):
        result.append(record_slice(member, index, k, rows[i], ids[i], scores[i]))
        mask = apply_verified(result[-1], verified[i], index) if verified is not None else None
        if mask is not None:
            member.copy_masks[int(k)] = mask
    if verified is not None:  # keep only the masks of likely copies (one p-value computation per chunk)
        for (member, k, _), p in zip(chunk, index.verified_null.verified_p_of(verified)):
            if p >= MASK_P:
                member.copy_masks.pop(int(k), None)
    return result, index.feature_energy(raw)


def audit_set(
    index: ReferenceIndex,
    image_set: ImageSet,
    *,
    encoder: Encoder,
    alpha: float,
    batch_size: int = 32,
    top_k: int = 5,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    keep_evidence: int = 24,
    stage: SecondStage | None = None,
) -> SetAudit:
    """Score every non-empty slice of every file of ``image_set`` against ``index``.

    ``keep_evidence``: the members keep the query slices of this many highest-scoring slices of
    the set in their ``evidence_slices`` (for the report's gallery).
    """
    threshold = index.null_model.threshold(alpha)
    stage = SecondStage(index) if stage is None else stage
    members = {
        path: VolumeAudit(str(path), 0, SET_AXIS, n, [], [], threshold)
        for path, n in zip(image_set.files, image_set.counts)
    }
    settings, chunk_size, total = index.preprocessing, batch_size * CHUNK_BATCHES, image_set.n_slices
    chunk: list[tuple[VolumeAudit, int, np.ndarray]] = []
    best: list[tuple[tuple, VolumeAudit, int, np.ndarray]] = []  # (evidence rank, member, slice index, slice)
    energies: list[np.ndarray] = []
    done = 0  # header slices of the files read (a sample grid counts 1, as in ``total``)

    def flush(read: int) -> None:
        """Score the queued slices; ``read``: the header slices read so far (progress)."""
        if chunk:
            scored, energy = _score_chunk(
                index, encoder, chunk, stage, alpha=alpha, batch_size=batch_size, top_k=top_k, cancel=cancel
            )
            energies.append(energy)
            best.extend((evidence_order(m.volume, score), m, k, s) for (m, k, s), score in zip(chunk, scored))
            best.sort(key=lambda entry: entry[0])
            del best[max(0, keep_evidence) :]
            chunk.clear()
        if progress is not None:
            progress(read, total)

    sample_grids = 0
    for path, count, slices, mosaic in iter_set_files(image_set):
        member, sample_grids = members[path], sample_grids + (mosaic is not None)
        member.n_slices = len(slices)
        for k, slice2d in enumerate(slices):
            if nonempty_mask(slice2d[None], settings)[0]:
                chunk.append((member, k, slice2d))
            else:
                member.skipped_empty.append(k)
            if len(chunk) >= chunk_size:
                flush(done + count * (k + 1) // len(slices))
        done += count
    flush(done)
    result = SetAudit(image_set.name, list(members.values()), threshold, sample_grids=sample_grids)
    result.energy = np.concatenate(energies) if energies else np.zeros(0)
    result.calibration = finalize_flags(result.scores, index, alpha, stage, result.energy)
    for member in result.members:
        member.calibration = result.calibration
    for _, member, k, slice2d in best:
        member.evidence_slices[k] = np.array(slice2d, dtype=np.float32, order="C")
    for member in result.members:
        shown = {s.slice for s in member.scores if s.flagged} | set(member.evidence_slices)
        member.copy_masks = {k: m for k, m in member.copy_masks.items() if k in shown}
    return result
