"""The verified null and the flag's p-value.

Held-out people's slices go through the second stage exactly as audited slices do (same views,
same number of candidates, same verification) against a reference they are not in: the held-out
subject splits of the training set (as the global null), or the full reference for ``--holdout``
data. Their verified scores calibrate the verified score; with their global similarities they also
calibrate the flag, which combines both stages: a slice is flagged when the smaller of its global
and verified p-values is rarer than that minimum is among the null's slices (:meth:`VerifiedNull.flag_p`).
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
from .second_stage import DEFAULT_CANDIDATES, GridSource, candidates, grids_of_slices, search_depth, verify_slices
from .whitening import ShrinkageWhitener

VERIFIED_NULL_QUERIES = 1000  # held-out slices verified at build time: alpha = 1e-3 is attainable
MAX_SPLITS = 50


@dataclass(frozen=True)
class VerifiedNull:
    """Verified scores [n] of the null's slices and their global similarities [n]."""

    scores: np.ndarray
    global_similarity: np.ndarray

    @property
    def model(self) -> NullModel:
        """The verified scores as a null model (p-values and threshold of the verified score)."""
        return NullModel(self.scores)

    def verified_p(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated p-values of verified scores."""
        return self.model.p_value(scores)

    def _null_minimum(self, global_null: NullModel) -> np.ndarray:
        """Sorted min(global p, verified p) of the null's own slices (verified p leaving each one out)."""
        ranked = np.sort(self.scores)
        at_least = len(ranked) - np.searchsorted(ranked, self.scores, side="left")  # includes the slice itself
        leave_one_out = at_least / len(ranked)
        return np.sort(np.minimum(global_null.p_value(self.global_similarity), leave_one_out))

    def flag_p(self, global_p: np.ndarray, verified_p: np.ndarray, global_null: NullModel) -> np.ndarray:
        """(1 + #null slices whose smaller p-value is at most the query's) / (1 + n)."""
        minimum = np.minimum(np.asarray(global_p, dtype=np.float64), np.asarray(verified_p, dtype=np.float64))
        null_minimum = self._null_minimum(global_null)
        return (1.0 + np.searchsorted(null_minimum, minimum, side="right")) / (1.0 + len(null_minimum))


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
    groups, verifies a seeded sample of their slices (as cut) against the rest (with its copies),
    until ``n_queries`` slices are verified.
    """
    codes = split_groups(groups)
    unique = np.unique(codes)
    held_out = max(1, int(round(query_fraction * len(unique))))
    row_groups = codes[np.asarray(original_row)]
    rng = np.random.default_rng(seed + 1)
    per_split = max(1, n_queries // 10)
    scores, similarity = [], []
    for _ in range(MAX_SPLITS):
        if sum(len(s) for s in scores) >= n_queries:
            break
        half_a = rng.permutation(unique)[:held_out]
        queries = np.flatnonzero(np.isin(codes, half_a))
        queries = np.sort(rng.choice(queries, min(per_split, len(queries)), replace=False))
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
    """
    grids = grids_of_slices(slices, settings)
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
