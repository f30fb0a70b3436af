"""The grid cache makes the grids of different rows on several threads at once, and each row once."""

from __future__ import annotations

import threading

import numpy as np

from MemorizationIndexLib.grid_cache import GridCache
from MemorizationIndexLib.preprocess import PreprocessSettings
from MemorizationIndexLib.slice_grid import to_grid


def _slices(n: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(3)
    return {row: np.pad(rng.random((40, 40)).astype(np.float32), 12) for row in range(n)}


def test_threads_grid_different_rows_at_once_and_share_the_rows_they_both_need() -> None:
    slices = _slices(6)
    both_reading = threading.Barrier(2, timeout=20)  # broken unless two threads read at the same time
    reads: list[int] = []
    lock = threading.Lock()

    def read(rows):
        with lock:
            reads.extend(rows)
        if 5 not in rows:
            both_reading.wait()
        return {row: slices[row] for row in rows}

    cache = GridCache(read, PreprocessSettings())
    asked = [[0, 1, 2], [3, 4]]
    found: list[dict] = [{}, {}]
    threads = [threading.Thread(target=lambda i=i: found[i].update(cache(asked[i]))) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not both_reading.broken
    for rows, got in zip(asked, found):
        assert sorted(got) == rows
        for row in rows:
            np.testing.assert_array_equal(got[row].image, to_grid(slices[row]).image)
    assert sorted(reads) == [0, 1, 2, 3, 4]
    assert sorted(cache([4, 5, 0])) == [0, 4, 5] and sorted(reads) == [0, 1, 2, 3, 4, 5]  # kept: not read again


def test_unreadable_rows_are_left_out_and_the_order_groups_the_reads() -> None:
    slices = _slices(4)
    batches: list[list[int]] = []

    def read(rows):
        batches.append(list(rows))
        return {row: None if row == 2 else slices[row] for row in rows}

    cache = GridCache(read, PreprocessSettings(), capacity=1, order=lambda row: -row)
    assert sorted(cache([0, 1, 2, 3])) == [0, 1, 3] and batches == [[3, 2, 1, 0]]
    assert len(cache) == 3  # a call's own rows stay, whatever the capacity
    assert sorted(cache([1])) == [1] and len(cache) == 1
