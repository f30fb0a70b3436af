"""The benchmark's data: datasets split by subject (seeded), slices sampled from each side, the duplicates that replace
test slices, every query augmented by each condition, and the features of the reference and the queries.

Levels are nested (the duplicates of 5% are among those of 15%, ...) and every distinct (slice, condition) is
augmented and embedded once and reused across levels (``benchmark``).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .augment import (
    ALL_CONDITIONS,
    PARTIAL_COPIES,
    Augmented,
    augment_condition,
)
from .augment_geometry import Params
from .benchmark_stages import (
    NEIGHBOUR,
)
from .embedding import embed_slices_and_tiles
from .encoders.base import Encoder
from .errors import UserError
from .index_build import subject_of, with_reference_copies
from .preprocess import PreprocessSettings, nonempty_mask, scale_unit
from .reference_index import Provenance
from .region_search import Tiles
from .transforms import REFERENCE_COPIES
from .volumes import axis_name, expand_inputs, image_slices, read_image, resolve_axis

DEFAULT_LEVELS: tuple[float, ...] = (0.05, 0.15, 0.30, 0.45)
DEFAULT_SLICES_PER_SPLIT = 250

Log = Callable[[str], None]


@dataclass
class DatasetSpec:
    """One ``--dataset NAME=PATH[,PATH...]`` with its optional subject pattern."""

    name: str
    paths: list[str]
    subject_pattern: str | None = None


@dataclass
class PreparedDataset:
    """Sampled, split and augmented slices of one dataset (no features yet)."""

    name: str
    reference_subjects: list[str]
    test_subjects: list[str]
    reference_slices: list[np.ndarray]  # raw, as cut
    reference_provenance: Provenance  # one row per reference slice, flip "none"
    test_slices: list[np.ndarray]  # raw, as cut
    test_slice_subjects: list[str]
    duplicate_rows: np.ndarray  # [n_dup_max] reference rows, in order of use
    replaced_positions: np.ndarray  # [n_dup_max] test positions they replace, same order
    queries: dict[str, list[np.ndarray]] = field(default_factory=dict)  # condition -> test then duplicates, [0,1]
    parameters: dict[str, list[Params]] = field(default_factory=dict)  # condition -> per query row
    # partial copies: condition -> per query row, bool [h, w] in query pixels, True where the pixel was copied
    # from a reference slice (all False for novel rows)
    copy_masks: dict[str, list[np.ndarray]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        """Slices per split (reference and test)."""
        return len(self.test_slices)

    def n_duplicates(self, level: float) -> int:
        """How many test slices a level replaces."""
        return int(round(level * self.n))


def seeded_rng(seed: int, *names: str) -> np.random.Generator:
    """A generator seeded by ``seed`` and the names of what it draws (dataset, purpose, condition): each draw has a
    stream of its own, so adding a condition or a dataset leaves the others' draws as they were."""
    return np.random.default_rng([seed] + [zlib.crc32(name.encode()) for name in names])


def split_subjects(subjects: Sequence[str], seed: int, name: str = "") -> tuple[list[str], list[str]]:
    """Seeded split of distinct subjects into reference (the larger half) and test subjects."""
    unique = sorted(set(subjects))
    if len(unique) < 2:
        raise UserError(
            f"dataset {name!r} has {len(unique)} subject(s); a benchmark needs at least 2 (one per side). "
            "Give more files or fix --subject-pattern"
        )
    order = seeded_rng(seed, name, "subjects").permutation(len(unique))
    n_ref = (len(unique) + 1) // 2
    return sorted(unique[i] for i in order[:n_ref]), sorted(unique[i] for i in order[n_ref:])


Neighbours = tuple[np.ndarray | None, np.ndarray | None]  # the previous and next slice of the volume


def _nonempty_candidates(
    files: Sequence[Path], sides: Sequence[str], axis: str, preprocessing: PreprocessSettings
) -> dict[str, list[tuple[int, int]]]:
    """(file, slice) of every non-empty slice, per side (volumes are not kept in memory)."""
    candidates: dict[str, list[tuple[int, int]]] = {"reference": [], "test": []}
    for i, path in enumerate(files):
        image = read_image(path)
        stack = image_slices(image, resolve_axis(image, axis))
        candidates[sides[i]] += [(i, int(k)) for k in np.flatnonzero(nonempty_mask(stack, preprocessing))]
    return candidates


def _cut_slices(
    files: Sequence[Path], file_subjects: Sequence[str], chosen: dict[str, list[tuple[int, int]]], axis: str
) -> tuple[dict[str, list[np.ndarray]], dict[str, list[Neighbours]], Provenance]:
    """The chosen slices per side, their neighbouring slices and the reference provenance (one row per slice)."""
    n = len(chosen["reference"])
    wanted: dict[int, list[tuple[str, int]]] = {}
    for side, items in chosen.items():
        for position, (i, _) in enumerate(items):
            wanted.setdefault(i, []).append((side, position))
    slices: dict[str, list] = {"reference": [None] * n, "test": [None] * n}
    neighbours: dict[str, list] = {"reference": [None] * n, "test": [None] * n}
    provenance_rows: list[tuple] = [None] * n  # type: ignore[list-item]
    for i in sorted(wanted):
        image = read_image(files[i])
        array_axis = resolve_axis(image, axis)
        stack = image_slices(image, array_axis)
        for side, position in wanted[i]:
            k = chosen[side][position][1]
            slices[side][position] = stack[k].copy()
            neighbours[side][position] = (
                stack[k - 1].copy() if k > 0 else None,
                stack[k + 1].copy() if k + 1 < len(stack) else None,
            )
            if side == "reference":
                provenance_rows[position] = (
                    str(files[i].resolve()),
                    k,
                    axis_name(image, array_axis),
                    array_axis,
                    file_subjects[i],
                )
    provenance = Provenance()
    for row, (source, k, plane, array_axis, subject) in enumerate(provenance_rows):
        provenance.append(source, k, plane, array_axis, "none", row, subject)
    return slices, neighbours, provenance


def prepare_dataset(
    spec: DatasetSpec,
    *,
    slices_per_split: int = DEFAULT_SLICES_PER_SPLIT,
    levels: Sequence[float] = DEFAULT_LEVELS,
    conditions: Sequence[str] = ALL_CONDITIONS,
    seed: int = 0,
    preprocessing: PreprocessSettings = PreprocessSettings(),
    axis: str = "auto",
    log: Log = lambda message: None,
) -> PreparedDataset:
    """Read, split by subject, sample, choose duplicates and augment the query slices of one dataset."""
    files = expand_inputs(spec.paths)
    file_subjects = [subject_of(f, spec.subject_pattern) for f in files]
    reference_subjects, test_subjects = split_subjects(file_subjects, seed, spec.name)
    sides = ["reference" if subject in reference_subjects else "test" for subject in file_subjects]
    candidates = _nonempty_candidates(files, sides, axis, preprocessing)
    n = min(slices_per_split, len(candidates["reference"]), len(candidates["test"]))
    if n < 4:
        raise UserError(f"dataset {spec.name!r}: only {n} non-empty slices per split; need at least 4")
    rng = seeded_rng(seed, spec.name, "slices")
    chosen = {
        side: sorted(candidates[side][j] for j in rng.choice(len(candidates[side]), n, replace=False))
        for side in candidates
    }
    slices, neighbours, provenance = _cut_slices(files, file_subjects, chosen, axis)
    n_dup_max = max(int(round(max(levels) * n)), 1) if levels else 0
    duplicate_rows = rng.choice(n, n_dup_max, replace=False)
    replaced_positions = rng.permutation(n)[:n_dup_max]
    prepared = PreparedDataset(
        spec.name,
        reference_subjects,
        test_subjects,
        slices["reference"],
        provenance,
        slices["test"],
        [file_subjects[i] for i, _ in chosen["test"]],
        duplicate_rows,
        replaced_positions,
    )
    if len(reference_subjects) == 1 or len(test_subjects) == 1:
        prepared.notes.append(
            f"{spec.name}: the split is {len(reference_subjects)} reference subject(s) vs {len(test_subjects)} "
            f"test subject(s) ({', '.join(reference_subjects)} vs {', '.join(test_subjects)}); a benchmark this small "
            "is weak evidence, and novel slices differ from the reference in person and acquisition protocol at once."
        )
    if n < slices_per_split:
        prepared.notes.append(f"{spec.name}: only {n} slices per split were available (asked for {slices_per_split}).")
    query_neighbours = neighbours["test"] + [neighbours["reference"][r] for r in duplicate_rows]
    for condition in conditions:
        _augment_queries(
            prepared, condition, seeded_rng(seed, spec.name, "augment", condition), query_neighbours, preprocessing
        )
    log(
        f"{spec.name}: {len(reference_subjects)} reference / {len(test_subjects)} test subjects, {n} slices per split, "
        f"up to {n_dup_max} duplicates"
    )
    return prepared


def _hosts(prepared: PreparedDataset, rng: np.random.Generator) -> list[int]:
    """Per query row, the test position whose slice fills what a partial copy does not copy: another person's
    slice (for a novel row another test subject's, or another slice of the same one when the test side has one)."""
    subjects = np.array(prepared.test_slice_subjects)
    hosts = []
    for row in range(prepared.n + len(prepared.duplicate_rows)):
        allowed = np.arange(prepared.n)
        if row < prepared.n:
            others = np.flatnonzero(subjects != subjects[row])
            allowed = others if others.size else np.delete(allowed, row)
        hosts.append(int(rng.choice(allowed)))
    return hosts


def _neighbour(pair: Neighbours, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """The previous or the next slice (equal odds when the volume has both) and its offset (-1 or +1)."""
    present = [(s, offset) for s, offset in zip(pair, (-1, 1)) if s is not None]
    return present[int(rng.integers(len(present)))]


def _augment_queries(
    prepared: PreparedDataset,
    condition: str,
    rng: np.random.Generator,
    neighbours: Sequence[Neighbours],
    preprocessing: PreprocessSettings,
) -> None:
    """Fill ``queries``, ``parameters`` (and ``copy_masks`` for partial copies) of one condition: novel test
    slices first, then the duplicates."""
    base = [prepared.test_slices[p] for p in range(prepared.n)] + [
        prepared.reference_slices[r] for r in prepared.duplicate_rows
    ]
    hosts = _hosts(prepared, rng) if condition in PARTIAL_COPIES else None
    augmented: list[Augmented] = []
    for row, raw in enumerate(base):
        other = scale_unit(prepared.test_slices[hosts[row]], preprocessing) if hosts else None
        neighbour, offset = _neighbour(neighbours[row], rng) if condition == "interp" else (None, 0)
        neighbour = scale_unit(neighbour, preprocessing) if neighbour is not None else None
        image = augment_condition(scale_unit(raw, preprocessing), condition, rng, other=other, neighbour=neighbour)
        if neighbour is not None:  # the copy is made of its slice and this one (benchmark_stages.made_of)
            image = replace(image, parameters=image.parameters | {NEIGHBOUR: offset})
        augmented.append(image)
    prepared.queries[condition] = [a.image for a in augmented]
    prepared.parameters[condition] = [a.parameters for a in augmented]
    if condition in PARTIAL_COPIES:  # novel rows copy nothing of a reference slice
        prepared.copy_masks[condition] = [
            a.copy_mask if row >= prepared.n else np.zeros_like(a.copy_mask) for row, a in enumerate(augmented)
        ]


@dataclass
class DatasetFeatures:
    """Raw per-block features of one prepared dataset."""

    reference: dict[str, np.ndarray]  # rows: reference slices, then each copy in REFERENCE_COPIES order
    queries: dict[str, dict[str, np.ndarray]]  # condition -> block -> rows as PreparedDataset.queries
    reference_tiles: Tiles | None = None  # tile features of the reference slices as cut (None: no region search)
    query_tiles: dict[str, Tiles | None] = field(default_factory=dict)  # condition -> tiles of its query rows


def embed_dataset(
    prepared: PreparedDataset,
    encoder: Encoder,
    preprocessing: PreprocessSettings,
    *,
    batch_size: int = 32,
    log: Log = lambda m: None,
) -> DatasetFeatures:
    """Embed the reference (with its copies) and every condition's query slices once, with the tile features
    of the reference slices as cut (the first rows) and of the queries."""
    _, ref_slices = with_reference_copies(prepared.reference_slices, prepared.reference_provenance, REFERENCE_COPIES)
    start = time.perf_counter()
    reference, reference_tiles = embed_slices_and_tiles(
        encoder, ref_slices, preprocessing, tiled=prepared.n, batch_size=batch_size
    )
    queries, query_tiles = {}, {}
    for condition, slices in prepared.queries.items():
        queries[condition], query_tiles[condition] = embed_slices_and_tiles(
            encoder, slices, preprocessing, batch_size=batch_size
        )
    count = len(ref_slices) + sum(len(q) for q in prepared.queries.values())
    elapsed = time.perf_counter() - start
    log(f"{prepared.name}: embedded {count} slices in {elapsed:.0f} s ({count / max(elapsed, 1e-9):.1f} slices/s)")
    return DatasetFeatures(reference, queries, reference_tiles, query_tiles)
