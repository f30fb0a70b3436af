"""The calibration null: held-out subject splits of the training set, or held-out real data."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .search import build_flat_index, max_similarity
from .whitening import ShrinkageWhitener

NULL_TRAIN_SPLIT = "train-split"
NULL_HOLDOUT = "holdout"
DEFAULT_NULL_SPLITS = 10
DEFAULT_QUERY_FRACTION = 0.1
MIN_NULL_SCORES = 2000  # enough scores that alpha = 1e-3 is attainable
MAX_QUERIES_PER_SPLIT = 5000  # keeps the null linear in reference size for large references
# Below this many training subjects, a train-split null (global or verified) is measured to run low: each split leaves
# a much smaller reference than the audit's, so people in no index are flagged more often than alpha (docs/method.md
# §3; docs/performance.md: 2 of 180 slices of a person in no index at alpha = 0.001 against a 4-subject index).
FEW_SUBJECTS = 5


def few_training_subjects(null_type: str, subjects: int) -> bool:
    """Whether an index's nulls come from held-out splits of fewer than FEW_SUBJECTS training subjects (a holdout
    null does not depend on them)."""
    return null_type != NULL_HOLDOUT and subjects < FEW_SUBJECTS


def split_groups(groups: np.ndarray, places: np.ndarray | None = None, slab_count: int = 10) -> np.ndarray:
    """Group ids for held-out splits: subjects when there are several, else slabs of slices.

    With a single subject, neighbouring slices are near-copies of each other, so the groups are
    ``slab_count`` contiguous slabs rather than interleaved slices. Given ``places`` ((volume, slice) of
    every row, ``second_stage.slice_places``), a slab holds the same share of slice positions in every
    volume, so that the same slice in another volume of the person (another echo or contrast) is on the
    same side; without them, slabs follow the row order.
    """
    groups = np.asarray(groups)
    _, codes = np.unique(groups, return_inverse=True)
    if codes.max(initial=0) > 0:
        return codes
    if places is None:
        return (np.arange(len(groups)) * slab_count) // max(len(groups), 1)
    volumes, positions = np.asarray(places)[:, 0], np.asarray(places)[:, 1]
    slabs = np.empty(len(groups), dtype=np.int64)
    for volume in np.unique(volumes):
        rows = np.flatnonzero(volumes == volume)
        rank = np.argsort(np.argsort(positions[rows], kind="stable"), kind="stable")
        slabs[rows] = (rank * slab_count) // len(rows)
    return np.unique(slabs, return_inverse=True)[1]  # numbered without gaps: slab s + 1 is next to slab s


def kept_out(held_out: np.ndarray, codes: np.ndarray, slabs: bool) -> np.ndarray:
    """The split groups (of ``codes``) a verified-null split keeps out of its reference: the held-out
    groups and, when they are slabs of one person, the slabs next to them (a slab's edge slices are
    near-copies of the next slab's), unless that would leave no reference. (The global null keeps the
    next slabs in: docs/method.md §7.15.)"""
    held_out = np.asarray(held_out)
    if not slabs:
        return held_out
    guarded = np.union1d(held_out, np.concatenate([held_out - 1, held_out + 1]))
    return guarded if np.setdiff1d(codes, guarded).size else held_out


def train_split_null(
    features: dict[str, np.ndarray],
    original_rows: np.ndarray,
    copies_of: np.ndarray,
    groups: np.ndarray,
    make_whitener: Callable[[], ShrinkageWhitener],
    n_splits: int = DEFAULT_NULL_SPLITS,
    query_fraction: float = DEFAULT_QUERY_FRACTION,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Pool similarities of held-out groups A (and their copies) to the remaining groups B (with B's copies).

    Each split mimics an audit of slices the reference never saw: whiteners are refitted on B
    alone (whitening fitted on the queries themselves makes them look less similar to the
    reference than truly new slices are), and A is a ``query_fraction`` of the groups so that
    B is nearly as large as the full reference (a half-size B lowers nearest-neighbour scores).
    A's queries are its slices *and* their flipped and rotated copies, because an audited novel
    slice may arrive in any orientation the index covers, and flipped queries can score higher
    than upright ones (measured on the spine: docs/method.md §3). At most
    ``MAX_QUERIES_PER_SPLIT`` held-out rows are scored per split (a seeded sample).

    features: raw per-block features for every indexed row (originals and their copies).
    original_rows: row ids of the reference slices as cut.
    copies_of: for every indexed row, the row id of the original slice it was made from.
    groups: split group of every original row (same order as ``original_rows``).
    Returns the pooled null, the feature energy of every null query under its split's whiteners
    (:func:`feature_energy`: novel people of the reference's domain) and the number of splits used
    (raised for small references so that at least ``MIN_NULL_SCORES`` scores exist).
    """
    codes = split_groups(groups)
    unique = np.unique(codes)
    if len(unique) < 2:
        raise ValueError("the calibration null needs at least two groups of slices")
    held_out = max(1, int(round(query_fraction * len(unique))))
    rng = np.random.default_rng(seed)
    group_of_row = np.empty(int(copies_of.max()) + 1, dtype=np.int64)
    group_of_row[original_rows] = codes
    row_groups = group_of_row[copies_of]
    pooled, energies = [], []
    splits = 0
    while splits < n_splits or sum(len(p) for p in pooled) < MIN_NULL_SCORES:
        splits += 1
        half_a = rng.permutation(unique)[:held_out]
        queries = np.flatnonzero(np.isin(row_groups, half_a))
        if len(queries) > MAX_QUERIES_PER_SPLIT:
            queries = np.sort(rng.choice(queries, MAX_QUERIES_PER_SPLIT, replace=False))
        reference_rows = np.flatnonzero(~np.isin(row_groups, half_a))
        whiteners, indexes = split_reference(features, reference_rows, make_whitener)
        query_vectors = {block: whiteners[block].transform(raw[queries]) for block, raw in features.items()}
        pooled.append(max_similarity(indexes, query_vectors))
        energies.append(feature_energy(whiteners, {block: raw[queries] for block, raw in features.items()}))
    return np.concatenate(pooled), np.concatenate(energies), splits


def split_reference(
    features: dict[str, np.ndarray], rows: np.ndarray, make_whitener: Callable[[], ShrinkageWhitener]
) -> tuple[dict[str, ShrinkageWhitener], dict]:
    """The reference of one split: whiteners fitted on ``rows`` of the raw features, and flat indexes of those
    rows whitened, per block."""
    whiteners = {b: make_whitener().fit(raw[rows]) for b, raw in features.items()}
    indexes = {b: build_flat_index(whiteners[b].transform(raw[rows])) for b, raw in features.items()}
    return whiteners, indexes


def feature_energy(whiteners: dict[str, ShrinkageWhitener], raw: dict[str, np.ndarray]) -> np.ndarray:
    """[n] mean over blocks of each row's whitened energy (``ShrinkageWhitener.energy``)."""
    return np.mean([whiteners[block].energy(raw[block]) for block in whiteners], axis=0)


def holdout_null(indexes: dict, holdout_vectors: dict[str, np.ndarray]) -> np.ndarray:
    """Similarities of held-out real slices (never trained on) to the full reference."""
    return max_similarity(indexes, holdout_vectors)
