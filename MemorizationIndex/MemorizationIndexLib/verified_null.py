"""The verified null and the flag's p-value.

Held-out people's slices go through the second stage exactly as audited slices do (same views,
same number of candidates, same verification) against a reference they are not in: the held-out
subject splits of the training set (as the global null), or the full reference for ``--holdout``
data. Their verified scores calibrate the verified score; with their global similarities they also
the verified score; the flag combines both stages by Bonferroni (:func:`flag_p`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .calibration import DEFAULT_QUERY_FRACTION, split_groups
from .encoders.base import Encoder
from .preprocess import PreprocessSettings
from .scoring import NullModel
from .search import build_flat_index, search_blocks
from .second_stage import DEFAULT_CANDIDATES, GridSource, SliceGrids, candidates, search_depth, verify_slices
from .whitening import ShrinkageWhitener

VERIFIED_NULL_QUERIES = 1000  # distinct held-out slices verified at build time (at most)
MAX_SPLITS = 50
TAIL_QUANTILE = 0.9  # verified p-values above this quantile of the null come from the fitted exponential tail
MIN_TAIL_SCALE = 0.01  # floor of the tail's mean exceedance (a null of identical scores)
MIN_COPY_SCORE = 0.2  # verified scores below this are no evidence of a copy (see evidence_p)


@dataclass(frozen=True)
class VerifiedNull:
    """Verified scores [n] of the null's slices and their global similarities [n].

    Verified p-values are empirical up to the null's ``TAIL_QUANTILE``; above it the tail is the
    exponential fitted to the exceedances (a bounded score's tail is lighter than exponential, so
    this errs on the side of larger p-values). It lets a small null (a few subjects give only a
    few hundred distinct held-out slices) still reach alpha = 1e-3 for scores far above it.
    """

    scores: np.ndarray
    global_similarity: np.ndarray

    @property
    def model(self) -> NullModel:
        """The verified scores as an empirical null model."""
        return NullModel(self.scores)

    def _tail(self) -> tuple[float, float, float]:
        """(threshold u, share of the null above u, mean exceedance) of the exponential tail."""
        u = float(np.quantile(self.scores, TAIL_QUANTILE))
        above = self.scores[self.scores > u] - u
        share = max(len(above), 1) / (len(self.scores) + 1)
        return u, share, max(float(above.mean()) if len(above) else 0.0, MIN_TAIL_SCALE)

    def verified_p(self, scores: np.ndarray) -> np.ndarray:
        """P-values of verified scores: empirical below the tail threshold, exponential tail above."""
        scores = np.asarray(scores, dtype=np.float64)
        u, share, scale = self._tail()
        tail = share * np.exp(-(scores - u) / scale)
        return np.where(scores > u, np.minimum(tail, share), self.model.p_value(scores))

    def threshold(self, alpha: float) -> float:
        """The verified score above which a slice counts as a copy at ``alpha`` (at least ``MIN_COPY_SCORE``)."""
        u, share, scale = self._tail()
        if alpha >= share:
            return max(float(self.model.threshold(alpha).similarity), MIN_COPY_SCORE)
        return max(u + scale * float(np.log(share / alpha)), MIN_COPY_SCORE)


def evidence_p(verified_p: np.ndarray, verified_score: np.ndarray) -> np.ndarray:
    """The verified p-value as evidence of a copy: 1 below ``MIN_COPY_SCORE`` (less than a fifth of
    the smaller foreground reproduced is not called a copy, however rare it is among the null's
    slices: a small null's fitted tail says little about inputs unlike it)."""
    score = np.asarray(verified_score, dtype=np.float64)
    return np.where(score >= MIN_COPY_SCORE, np.asarray(verified_p, dtype=np.float64), 1.0)


def flag_p(global_p: np.ndarray, verified_p: np.ndarray, verified_score: np.ndarray) -> np.ndarray:
    """The p-value the flag uses when both stages count: Bonferroni over the two tests (twice the
    smaller p-value, at most 1), so that alpha bounds the false alarms whatever their correlation."""
    smaller = np.minimum(np.asarray(global_p, dtype=np.float64), evidence_p(verified_p, verified_score))
    return np.minimum(1.0, 2.0 * smaller)


def _split_reference(
    features: dict[str, np.ndarray], rows: np.ndarray, make_whitener: Callable[[], ShrinkageWhitener]
) -> tuple[dict[str, ShrinkageWhitener], dict]:
    """Whiteners fitted on ``rows`` of the raw features and flat indexes of those rows."""
    whiteners = {b: make_whitener().fit(raw[rows]) for b, raw in features.items()}
    indexes = {b: build_flat_index(whiteners[b].transform(raw[rows])) for b, raw in features.items()}
    return whiteners, indexes


@dataclass(frozen=True)
class NullQueries:
    """Held-out slices to verify: their pixels and raw features as cut."""

    slices: Sequence[np.ndarray]
    features: dict[str, np.ndarray]


def verify_against(
    queries: NullQueries,
    features: dict[str, np.ndarray],
    reference_rows: np.ndarray,
    original_row: np.ndarray,
    grids: GridSource,
    encoder: Encoder,
    settings: PreprocessSettings,
    make_whitener: Callable[[], ShrinkageWhitener],
    *,
    k: int = DEFAULT_CANDIDATES,
    batch_size: int = 32,
    cancel: threading.Event | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Verified scores and global similarities of held-out queries against the reference made of
    ``reference_rows`` of the indexed features (its own whiteners, as an audit would have)."""
    whiteners, indexes = _split_reference(features, reference_rows, make_whitener)

    def search(raw: dict[str, np.ndarray], depth: int):
        return search_blocks(indexes, {b: whiteners[b].transform(raw[b]) for b in indexes}, k=depth)

    local_original = np.asarray(original_row)[reference_rows]
    as_cut = search(queries.features, search_depth(k))
    shortlisted = candidates(
        encoder,
        queries.slices,
        as_cut,
        search,
        local_original,
        settings,
        k=k,
        batch_size=batch_size,
        cancel=cancel,
    )
    verified = verify_slices(queries.slices, shortlisted, grids, settings, cancel)
    return np.array([v.score for v in verified]), np.asarray(as_cut.similarity, dtype=np.float64)


def split_verified_null(
    slices: Sequence[np.ndarray],
    features: dict[str, np.ndarray],
    original_row: np.ndarray,
    groups: np.ndarray,
    grids: GridSource,
    encoder: Encoder,
    settings: PreprocessSettings,
    make_whitener: Callable[[], ShrinkageWhitener],
    *,
    query_fraction: float,
    seed: int,
    n_queries: int = VERIFIED_NULL_QUERIES,
    k: int = DEFAULT_CANDIDATES,
    batch_size: int = 32,
    cancel: threading.Event | None = None,
) -> VerifiedNull:
    """The verified null from held-out subject splits of the training set.

    slices: the reference slices as cut; original row r (a row of ``features``) is ``slices[r]``.
    original_row: for every indexed row, the original row it was made from.
    groups: split group of every original row. Each split holds out a ``query_fraction`` of the
    groups and verifies a seeded sample of their slices not verified before (as cut) against the
    rest (with its copies), until ``n_queries`` slices are verified or every slice has been.
    """
    codes = split_groups(groups)
    unique = np.unique(codes)
    held_out = max(1, int(round(query_fraction * len(unique))))
    row_groups = codes[np.asarray(original_row)]
    rng = np.random.default_rng(seed + 1)
    per_split = max(1, n_queries // 10)
    scores, similarity = [], []
    used = np.zeros(len(codes), dtype=bool)  # every null slice is verified once: repeats add no information
    for _ in range(MAX_SPLITS):
        if sum(len(s) for s in scores) >= n_queries or used.all():
            break
        half_a = rng.permutation(unique)[:held_out]
        queries = np.flatnonzero(np.isin(codes, half_a) & ~used)
        if len(queries) == 0:
            continue
        queries = np.sort(rng.choice(queries, min(per_split, len(queries)), replace=False))
        used[queries] = True
        reference_rows = np.flatnonzero(~np.isin(row_groups, half_a))
        chosen = NullQueries([slices[r] for r in queries], {b: raw[queries] for b, raw in features.items()})
        found = verify_against(
            chosen,
            features,
            reference_rows,
            original_row,
            grids,
            encoder,
            settings,
            make_whitener,
            k=k,
            batch_size=batch_size,
            cancel=cancel,
        )
        scores.append(found[0])
        similarity.append(found[1])
    return VerifiedNull(np.concatenate(scores), np.concatenate(similarity))


def reference_verified_null(
    slices: Sequence[np.ndarray],
    subjects: Sequence[str],
    features: dict[str, np.ndarray],
    original_row: np.ndarray,
    encoder: Encoder,
    settings: PreprocessSettings,
    *,
    places: np.ndarray | None,
    holdout: NullQueries | None = None,
    seed: int = 0,
    k: int = DEFAULT_CANDIDATES,
    batch_size: int = 32,
    cancel: threading.Event | None = None,
) -> VerifiedNull:
    """The verified null of a reference built from pixels (``build-index`` and the benchmark): the
    holdout slices against the whole reference when given, else held-out subject splits of the
    reference slices.

    slices, subjects: the reference slices as cut (original row r is ``slices[r]``) and their subjects.
    features, original_row: raw features of every indexed row and the original row each was made from.
    places: (volume, slice) of every reference slice (``second_stage.slice_places``): neighbouring
    candidates wait for their neighbourhood's best-ranked one, as in the audit.
    """
    grids = SliceGrids(slices, settings, places)
    original_row = np.asarray(original_row)

    def whitener() -> ShrinkageWhitener:
        return ShrinkageWhitener(seed=seed)

    common = {"k": k, "batch_size": batch_size, "cancel": cancel}
    if holdout is None:
        return split_verified_null(
            slices,
            features,
            original_row,
            np.asarray(subjects),
            grids,
            encoder,
            settings,
            whitener,
            query_fraction=DEFAULT_QUERY_FRACTION,
            seed=seed,
            **common,
        )
    rng = np.random.default_rng(seed + 1)
    chosen = np.sort(rng.choice(len(holdout.slices), min(VERIFIED_NULL_QUERIES, len(holdout.slices)), replace=False))
    queries = NullQueries([holdout.slices[i] for i in chosen], {b: raw[chosen] for b, raw in holdout.features.items()})
    every_row = np.arange(len(original_row))
    scores, similarity = verify_against(
        queries, features, every_row, original_row, grids, encoder, settings, whitener, **common
    )
    return VerifiedNull(scores, similarity)
