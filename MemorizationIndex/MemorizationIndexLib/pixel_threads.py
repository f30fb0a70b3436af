"""Threads for the second stage's pixel work (grids and pair verification, docs/performance.md).

Most of that work is FFTs, warps and matrix products that release the GIL, so chunks of it run in
parallel on as many threads as torch's forward passes use (``torch.get_num_threads()``, which the
Ray engine sets per worker). Each BLAS call inside is small, so BLAS is held to one thread while the
chunks run, and so are each worker's own torch calls (warps, FFTs) where torch's thread count is per
thread (its OpenMP backend): nested threads would only compete for the same cores. Results do not
depend on the number of threads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch
from threadpoolctl import threadpool_limits

Item = TypeVar("Item")
Result = TypeVar("Result")


def pixel_workers() -> int:
    """Threads for pixel work: torch's intra-op thread count."""
    return max(1, torch.get_num_threads())


# torch's OpenMP backend keeps the intra-op thread count per calling thread, so a worker can hold its own to one
# without changing the caller's (the native backend's count is process-wide: left alone there).
_PER_THREAD_TORCH = "parallel backend: OpenMP" in torch.__config__.parallel_info()


def _worker_start() -> None:
    """Run in each worker thread before its first item: its torch calls on one thread (see the module docstring)."""
    if _PER_THREAD_TORCH:
        torch.set_num_threads(1)


def thread_map(function: Callable[[Item], Result], items: Iterable[Item]) -> list[Result]:
    """``[function(item) for item in items]`` on :func:`pixel_workers` threads, BLAS on one thread
    each (on several threads, each worker's torch calls too). The first exception raised by ``function``
    (in item order) is raised here; the items not yet started are then dropped."""
    items = list(items)
    workers = min(pixel_workers(), len(items))
    with threadpool_limits(1, user_api="blas"):
        if workers <= 1:
            return [function(item) for item in items]
        with ThreadPoolExecutor(workers, thread_name_prefix="pixel-work", initializer=_worker_start) as pool:
            futures = [pool.submit(function, item) for item in items]
            try:
                return [future.result() for future in futures]
            finally:
                for future in futures:
                    future.cancel()
