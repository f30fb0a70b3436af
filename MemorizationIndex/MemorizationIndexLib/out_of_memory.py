"""The one out-of-memory retry: run again with half the batch size, down to 1."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a (CUDA or CPU) out-of-memory error, as raised by torch or Python."""
    text = f"{type(exc).__name__}: {exc}".lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "outofmemory" in text


def halving_batch_on_out_of_memory(run: Callable[[int], T], batch_size: int) -> T:
    """``run(batch_size)``; after an out-of-memory error, ``run`` again with half the batch.

    The error is raised when it happens with a batch of 1 or is not an out-of-memory error.
    """
    batch = max(1, int(batch_size))
    while True:
        try:
            return run(batch)
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc) or batch == 1:
                raise
            batch = max(1, batch // 2)
            log.warning("out of memory; retrying with batch size %d", batch)
            _empty_cuda_cache()


def _empty_cuda_cache() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
