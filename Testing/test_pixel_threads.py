"""The second stage's pixel work on threads: same results on any number of threads, in order, errors
and cancellation raised, BLAS (and each worker's torch) held to one thread while it runs; and the
noise level's faster median."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info

from MemorizationIndexLib import pixel_threads
from MemorizationIndexLib.embedding import Cancelled
from MemorizationIndexLib.preprocess import PreprocessSettings
from MemorizationIndexLib.second_stage import SliceGrids, verify_slices
from MemorizationIndexLib.slice_grid import _median_magnitude


def _blas_threads() -> list[int]:
    """Threads of the BLAS libraries whose setting is process-wide (an OpenMP-threaded BLAS, such as
    faiss's, takes its setting per calling thread and is not used by the pixel work)."""
    return [
        info["num_threads"]
        for info in threadpool_info()
        if info["user_api"] == "blas" and info.get("threading_layer") != "openmp"
    ]


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_thread_map_keeps_the_order_and_holds_blas_to_one_thread(monkeypatch, workers: int) -> None:
    monkeypatch.setattr(pixel_threads, "pixel_workers", lambda: workers)
    seen: list[list[int]] = []
    torch_threads: set[int] = set()
    caller = torch.get_num_threads()

    def square(x: int) -> int:
        seen.append(_blas_threads())
        torch_threads.add(torch.get_num_threads())
        return x * x

    assert pixel_threads.thread_map(square, range(20)) == [x * x for x in range(20)]
    assert seen and all(threads and set(threads) == {1} for threads in seen), seen
    if workers > 1 and pixel_threads._PER_THREAD_TORCH:
        assert torch_threads == {1}  # each worker's own torch calls on one thread
    assert torch.get_num_threads() == caller  # the caller's (the forward passes') setting is untouched
    assert pixel_threads.thread_map(square, []) == []


def test_thread_map_raises_the_first_error_in_item_order(monkeypatch) -> None:
    monkeypatch.setattr(pixel_threads, "pixel_workers", lambda: 2)

    def fail_on_odd(x: int) -> int:
        if x % 2:
            raise ValueError(f"item {x}")
        return x

    with pytest.raises(ValueError, match="item 1"):
        pixel_threads.thread_map(fail_on_odd, range(10))


def test_verify_slices_gives_the_same_on_one_and_on_several_threads(monkeypatch, brain_query_and_reference) -> None:
    query, reference = brain_query_and_reference
    settings = PreprocessSettings()
    rng = np.random.default_rng(0)
    shortlisted = np.stack([rng.permutation(len(reference))[:4] for _ in query])
    shortlisted[2, 1], shortlisted[5, 3], shortlisted[7] = 4, 9, -1  # the sources; a slice without candidates
    runs = []
    for workers in (1, 2):
        monkeypatch.setattr(pixel_threads, "pixel_workers", lambda workers=workers: workers)
        runs.append(verify_slices(query, shortlisted, SliceGrids(reference, settings, None), settings))
    for one, many in zip(*runs):
        assert (one.score, one.row) == (many.score, many.row)
        assert (one.result is None) == (many.result is None)
        if one.result is not None:
            assert np.array_equal(one.result.mask, many.result.mask)
            assert np.array_equal(one.result.alignment.matrix, many.result.alignment.matrix)
    assert (runs[0][2].row, runs[0][5].row, runs[0][7].row) == (4, 9, -1)
    assert min(runs[0][2].score, runs[0][5].score) >= 0.5 and runs[0][7].score == 0.0


def test_verify_slices_stops_when_cancelled(monkeypatch, brain_query_and_reference) -> None:
    monkeypatch.setattr(pixel_threads, "pixel_workers", lambda: 2)
    query, reference = brain_query_and_reference
    settings = PreprocessSettings()
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        verify_slices(
            query, np.zeros((len(query), 2), dtype=np.int64), SliceGrids(reference, settings, None), settings, cancel
        )


def test_median_magnitude_equals_numpys_median() -> None:
    rng = np.random.default_rng(0)
    for trial in range(3000):
        n = int(rng.integers(1, 60))
        values = rng.normal(size=n).astype(np.float32)
        values[rng.random(n) < rng.random()] = 0.0  # often mostly zeros, as the background's steps are
        if trial % 3 == 0:
            values = np.round(values, 1)  # ties
        expected = np.median(np.abs(values))
        found = _median_magnitude(values.copy())
        assert found == expected and found.dtype == expected.dtype, (values, found, expected)
    with_nan = np.array([0.0, np.nan, 1.0], dtype=np.float32)
    assert np.isnan(_median_magnitude(with_nan))
