"""Both stages of the audit in the benchmark (docs/method.md §7).

Every condition's queries go through the audit's functions: the global search
(``audit.score_features``), candidates searched in the benchmark index (smoothed views of noisy slices too)
(``index_verification.shortlist_queries``), pixel verification against the benchmark's reference
slices (``second_stage.verify_shortlist``) and the flag that combines both stages with the verified
null (``verified_null.flag_p``, Bonferroni; flagged = flag_p < alpha). The audit uses the combined p-value only
when the global calibration holds for the audited input (``audit.finalize_flags``); the benchmark
assumes it holds (its novel slices come from the same acquisition as the reference).

Per condition: copies flagged, provenance of the verified candidate among flagged copies, novel
slices flagged, recall of the true source among the candidates and, for partial copies, how well
the copy box and mask of the verified candidate match the copied region. Per copy (:func:`copy_rows`, the
benchmark's ``copies.csv``): its edit, where its true source ranked among the candidates and whether the region
search named it, its flag and its best verified candidate, so a missed copy can be traced to the stage that lost it;
for a partial copy, also how much anatomy it carries, and per dataset the partial copies binned by that amount
(:func:`by_copied_anatomy`): how small a copied region the audit still finds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .agreement import bounding_box
from .augment_partial import ANATOMY
from .encoders.base import Encoder
from .index_verification import shortlist_queries
from .preprocess import PreprocessSettings, scaled_foreground
from .reference_index import Provenance, ReferenceIndex
from .region_search import Tiles
from .search import Neighbours
from .second_stage import GridSource, Verified, verify_shortlist
from .verified_null import flag_p as combined_p

LOCATED_IOU = 0.5  # a partial copy is located when its copy box has at least this IoU with the copied region
NEIGHBOUR = "neighbour"  # an interpolated copy's edit: the offset (-1 or +1) of the slice it is blended with
ANATOMY_EDGES = (0.01, 0.02, 0.05)  # shares of the field of view that bin partial copies by the anatomy they carry
COPY_COLUMNS = (
    "dataset",
    "condition",
    "copy",
    "source_file",
    "source_slice",
    "edit",
    "source_rank",
    "source_named_by_region",
    "flagged",
    "flag_p",
    "verified_score",
    "verified_file",
    "verified_slice",
    "verified_is_source",
    "copy_box_iou",
    "copied_anatomy",
)


@dataclass(frozen=True)
class TwoStage:
    """Both stages of one condition's query rows: the flag's p-value [rows], the flag [rows], the
    best verified candidate of each row, the candidates' original rows [rows, k] (-1 = none), the
    global similarity [rows] and whether the region search named each candidate [rows, k]."""

    flag_p: np.ndarray
    flagged: np.ndarray
    verified: list[Verified]
    shortlisted: np.ndarray
    similarity: np.ndarray
    named: np.ndarray

    @property
    def score(self) -> np.ndarray:
        """The detection order as a score in [0, 1): the flag's order (smaller flag_p first), ties broken
        by the verified score, then by the global similarity. flag_p is 1 for most slices that are not
        flagged, so without the tie-breaks the AUROC would count every such copy as tied with every
        novel slice. Rows equal in all three keys get equal scores."""
        verified = np.array([v.score for v in self.verified], dtype=np.float64)
        keys = np.stack([self.flag_p, -verified, -np.asarray(self.similarity, dtype=np.float64)], axis=1)
        unique, position = np.unique(keys, axis=0, return_inverse=True)
        return 1.0 - position.ravel() / len(unique)


def score_two_stage(
    index: ReferenceIndex,
    encoder: Encoder,
    slices: Sequence[np.ndarray],
    tiles: Tiles | None,
    rows: Sequence[dict],
    ids: np.ndarray,
    scores: np.ndarray,
    grids: GridSource,
    *,
    alpha: float,
    batch_size: int = 32,
) -> TwoStage:
    """The second stage and the flag of query slices whose global scores are given: ``rows``, ``ids``
    and ``scores`` of ``audit.score_features`` searched ``second_stage.search_depth(index.candidates)`` deep;
    ``tiles``: the slices' tile features (for the index's region search)."""
    as_cut = Neighbours(np.array([r["similarity"] for r in rows]), ids, scores)
    shortlisted = shortlist_queries(index, encoder, slices, as_cut, tiles, batch_size=batch_size)
    verified = verify_shortlist(slices, shortlisted, grids, index.preprocessing)
    verified_p = index.verified_null.verified_p_of(verified)
    flag_p = combined_p(
        np.array([r["p_value"] for r in rows]),
        verified_p,
        np.array([v.score for v in verified]),
        np.array([v.bent for v in verified]),
    )
    named = np.isfinite(shortlisted.places).all(axis=-1)
    return TwoStage(flag_p, flag_p < alpha, verified, shortlisted.rows, as_cut.similarity, named)


def box_iou(a: tuple[int, int, int, int] | None, b: tuple[int, int, int, int] | None) -> float:
    """IoU of two (row0, col0, row1, col1) boxes, ends exclusive (0 when either is None)."""
    if a is None or b is None:
        return 0.0
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def copy_iou(
    verified: Verified, truth: np.ndarray, query: np.ndarray, settings: PreprocessSettings
) -> tuple[float, float]:
    """(box IoU, mask IoU) of a query's verified copy region with the copied region: the truth mask
    within the query's foreground (the copy mask never covers background); 0 without a copy region."""
    region = truth & (scaled_foreground(np.asarray(query, dtype=np.float32), settings) > 0)
    if verified.result is None or verified.result.box is None:
        return 0.0, 0.0
    mask = verified.result.mask
    union = int((mask | region).sum())
    return box_iou(verified.result.box, bounding_box(region)), (int((mask & region).sum()) / union if union else 0.0)


def two_stage_figures(
    stage: TwoStage,
    n: int,
    true_rows: np.ndarray,
    provenance: Provenance,
    *,
    edits: Sequence[dict] = (),
    truth: Sequence[np.ndarray] | None = None,
    queries: Sequence[np.ndarray] = (),
    settings: PreprocessSettings = PreprocessSettings(),
) -> dict:
    """Figures of one condition: the novel rows come first (``n``), then the copies of the original
    reference rows ``true_rows``; ``edits``: every row's parameters (a copy is named right when its verified
    candidate is a slice it is made of, :func:`made_of`); ``truth`` (partial copies) holds every row's
    copied-pixel mask."""
    copies = stage.flagged[n:]

    def source(row: int) -> tuple[str, int]:
        return provenance.source[row], provenance.slice[row]

    made = [made_of(source(t), edits[n + j] if edits else {}) for j, t in enumerate(true_rows)]
    correct = np.array([v.row >= 0 and source(v.row) in m for v, m in zip(stage.verified[n:], made)])
    figures = {
        "n_duplicates": int(len(true_rows)),
        "n_novel": int(n),
        "flagged": float(copies.mean()),
        "n_flagged": int(copies.sum()),
        "top1_flagged": float(correct[copies].mean()) if copies.any() else float("nan"),
        "false_positive_rate": float(stage.flagged[:n].mean()),
        "candidate_recall": float(np.mean([t in s for t, s in zip(true_rows, stage.shortlisted[n:])])),
        "candidate_recall_at": {
            str(r): float(np.mean([t in s[:r] for t, s in zip(true_rows, stage.shortlisted[n:])]))
            for r in range(1, stage.shortlisted.shape[1] + 1)
        },
    }
    if truth is not None:
        ious = np.array(
            [copy_iou(v, m, q, settings) for v, m, q in zip(stage.verified[n:], truth[n:], queries[n:])]
        ).reshape(-1, 2)
        figures |= {
            "located": float(np.mean(ious[:, 0] >= LOCATED_IOU)),
            "box_iou_mean": float(ious[:, 0].mean()),
            "mask_iou_mean": float(ious[:, 1].mean()),
        }
    return figures


def copy_rows(
    stage: TwoStage,
    n: int,
    true_rows: np.ndarray,
    provenance: Provenance,
    edits: Sequence[dict],
    *,
    truth: Sequence[np.ndarray] | None = None,
    queries: Sequence[np.ndarray] = (),
    settings: PreprocessSettings = PreprocessSettings(),
) -> list[dict]:
    """One row per copy of a condition (:data:`COPY_COLUMNS` less dataset and condition): the novel rows come
    first (``n``), then the copies of the original reference rows ``true_rows``, each with its ``edits``
    (parameters, as every query row has them); ``truth``: the copied-pixel masks of partial copies (they also get
    :func:`copied_anatomy`). The source's rank among the candidates is 1-based, empty when it was not a candidate."""
    rows = []
    for j, true_row in enumerate(true_rows):
        at, verified = n + j, stage.verified[n + j]
        listed = np.flatnonzero(stage.shortlisted[at] == true_row)
        found = (provenance.source[verified.row], provenance.slice[verified.row]) if verified.row >= 0 else ("", "")
        source = (provenance.source[true_row], provenance.slice[true_row])
        iou = copy_iou(verified, truth[at], queries[at], settings)[0] if truth is not None else ""
        carried = copied_anatomy(truth[at], queries[at]) if truth is not None else ""
        rows.append(
            {
                "copy": j,
                "source_file": source[0],
                "source_slice": source[1],
                "edit": json.dumps(edits[at], sort_keys=True, default=float),
                "source_rank": int(listed[0]) + 1 if listed.size else "",
                "source_named_by_region": bool(stage.named[at, listed[0]]) if listed.size else "",
                "flagged": bool(stage.flagged[at]),
                "flag_p": float(stage.flag_p[at]),
                "verified_score": float(verified.score),
                "verified_file": found[0],
                "verified_slice": found[1],
                "verified_is_source": found in made_of(source, edits[at]),
                "copy_box_iou": iou,
                "copied_anatomy": carried,
            }
        )
    return rows


def made_of(source: tuple[str, int], edit: dict) -> set[tuple[str, int]]:
    """The reference slices (file, slice) a copy of ``source`` is made of: the source, and for an interpolated copy
    (``edit`` with NEIGHBOUR) the neighbouring slice it is blended with. Its weight reaches one half, where the
    two are the copy's sources alike, so naming either is naming where it came from (docs/method.md §7.68)."""
    file, index = source
    return {source, (file, index + edit[NEIGHBOUR])} if NEIGHBOUR in edit else {source}


def copied_anatomy(truth: np.ndarray, query: np.ndarray) -> float:
    """The anatomy a partial copy carries: its copied pixels (``truth``) that are anatomy (unit intensity at least
    ``augment_partial.ANATOMY``, as the partial copies draw their region), as a share of the query's pixels."""
    return float(np.count_nonzero(truth & (np.asarray(query) >= ANATOMY)) / truth.size)


def by_copied_anatomy(rows: Sequence[dict]) -> list[dict]:
    """Partial copies (``copies.csv`` rows with a ``copied_anatomy``) per dataset and bin of that share
    (:data:`ANATOMY_EDGES`; ``to`` None for the last bin): how many there are, how many were flagged, had their
    source among the candidates, and were located (box IoU at least LOCATED_IOU). Empty bins are left out."""
    edges = (0.0, *ANATOMY_EDGES)
    partial = [row for row in rows if row["copied_anatomy"] != ""]
    out = []
    for dataset in dict.fromkeys(row["dataset"] for row in partial):
        for low, high in zip(edges, (*ANATOMY_EDGES, None)):
            chosen = [
                row
                for row in partial
                if row["dataset"] == dataset
                and low <= row["copied_anatomy"]
                and (high is None or row["copied_anatomy"] < high)
            ]
            if chosen:
                out.append(
                    {
                        "dataset": dataset,
                        "from": low,
                        "to": high,
                        "copies": len(chosen),
                        "flagged": sum(bool(row["flagged"]) for row in chosen),
                        "listed": sum(row["source_rank"] != "" for row in chosen),
                        "located": sum(row["copy_box_iou"] >= LOCATED_IOU for row in chosen),
                    }
                )
    return out
