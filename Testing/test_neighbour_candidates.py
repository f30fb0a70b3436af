"""Neighbouring candidates wait for their neighbourhood's best-ranked one (docs/method.md §7.11): which
candidate waits for which, what is verified for a copy and for a novel slice, and where the slices
lie (``slice_places``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from MemorizationIndexLib.preprocess import PreprocessSettings
from MemorizationIndexLib.reference_index import Provenance
from MemorizationIndexLib.second_stage import (
    NEIGHBOUR_GATE,
    SliceGrids,
    slice_places,
    verify_slices,
    waits_for,
)
from MemorizationIndexLib.verified_null import MIN_COPY_SCORE


def test_a_candidate_waits_for_the_best_ranked_of_its_neighbourhood() -> None:
    # rows 0..5: volume 0 slices 10, 11, 12, 30; volume 1 slice 11; volume 0 slice 9
    places = np.array([[0, 10], [0, 11], [0, 12], [0, 30], [1, 11], [0, 9]])
    assert waits_for([1, 4, 3, 0, 2, 5], places) == [0, 1, 2, 0, 0, 0]  # a chain 11 <- 10 <- 9, 12 joins it
    assert waits_for([3, 4], places) == [0, 1]
    assert waits_for([1, 0, 2], None) == [0, 1, 2]
    assert waits_for([], places) == []
    named = [False, False, False, True, False, False]  # the region search named slice 10: it and 9 lead
    assert waits_for([1, 4, 3, 0, 2, 5], places, named) == [0, 1, 2, 3, 0, 3]
    assert NEIGHBOUR_GATE <= MIN_COPY_SCORE / 2


def test_slice_places_number_each_volume_and_axis() -> None:
    provenance = Provenance()
    for source, axis, k in (("a.nii", 0, 4), ("b.nii", 0, 4), ("a.nii", 1, 7), ("a.nii", 0, 5)):
        provenance.append(source, k, "axial", axis, "none", 0, "s")
    assert slice_places(provenance).tolist() == [[0, 4], [1, 4], [2, 7], [0, 5]]
    assert slice_places(Provenance()).shape == (0, 2)


class RecordedGrids(SliceGrids):
    """SliceGrids that records every row asked for."""

    def __init__(self, slices: Sequence[np.ndarray], places: np.ndarray | None):
        super().__init__(slices, PreprocessSettings(), places)
        self.asked: list[int] = []

    def __call__(self, rows: Sequence[int]):
        self.asked += list(rows)
        return super().__call__(rows)


@pytest.fixture(scope="module")
def consecutive(brain_query_and_reference) -> np.ndarray:
    """The reference slices as consecutive slices of one volume."""
    _, reference = brain_query_and_reference
    return np.array([[0, k] for k in range(len(reference))])


def test_a_copy_is_found_through_its_neighbour(brain_query_and_reference, consecutive) -> None:
    """Reference 5 copied, ranked after its neighbour 4: 4 verifies (neighbouring slices are near-duplicates,
    here 0.4-0.5), so 5 is verified too and wins."""
    _, reference = brain_query_and_reference
    grids = RecordedGrids(reference, consecutive)
    [found] = verify_slices([reference[5]], np.array([[4, 5, 9]]), grids, PreprocessSettings())
    assert grids.asked == [4, 9, 5]
    assert found.row == 5 and found.score > 0.9


def test_a_novel_slice_skips_the_neighbours_of_what_does_not_verify(brain_query_and_reference, consecutive) -> None:
    query, reference = brain_query_and_reference
    settings = PreprocessSettings()
    waiting = RecordedGrids(reference, consecutive)
    [found] = verify_slices([query[0]], np.array([[4, 5, 9, 10, -1]]), waiting, settings)
    assert waiting.asked == [4, 9] and found.row in (4, 9) and found.score < NEIGHBOUR_GATE
    every = RecordedGrids(reference, None)
    [alone] = verify_slices([query[0]], np.array([[4, 5, 9, 10, -1]]), every, settings)
    assert every.asked == [4, 5, 9, 10] and alone.score >= found.score


def test_a_candidate_the_region_search_named_does_not_wait(brain_query_and_reference, consecutive) -> None:
    """Reference 5, named by the region search (its tiles' places are given), is verified although its
    better-ranked neighbour 4 does not verify; 10 still waits for 9 (docs/method.md §7.26)."""
    query, reference = brain_query_and_reference
    settings = PreprocessSettings()
    places = np.full((1, 4, 4), np.nan)
    places[0, 1] = [0.5, 0.5, 0.5, 0.5]
    grids = RecordedGrids(reference, consecutive)
    [found] = verify_slices([query[0]], np.array([[4, 5, 9, 10]]), grids, settings, places=places)
    assert grids.asked == [4, 5, 9] and found.score < NEIGHBOUR_GATE
