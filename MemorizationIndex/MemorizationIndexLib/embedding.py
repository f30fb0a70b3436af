"""Turning slices into raw per-block features with an encoder, in batches, with progress and cancel."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .encoders.base import Encoder
from .preprocess import PreprocessSettings, prepare_batch

ProgressCallback = Callable[[int, int], None]


class Cancelled(Exception):
    """Raised when the caller's cancel event is set during long work."""


def embed_slices(
    encoder: Encoder,
    slices: Sequence[np.ndarray],
    settings: PreprocessSettings,
    *,
    batch_size: int = 32,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> dict[str, np.ndarray]:
    """Raw (unwhitened) features {block: float32 [len(slices), D]} of 2D slices."""
    chunks: dict[str, list[np.ndarray]] = {block: [] for block in encoder.blocks}
    total = len(slices)
    starts = list(range(0, total, batch_size))

    def prepare(start: int) -> np.ndarray:
        return prepare_batch(slices[start : start + batch_size], encoder.input_size, settings)

    # On a GPU, preprocess the next batch in a worker thread while the encoder runs on this one.
    # On a CPU the forward pass already keeps every core busy, and a second thread of work only
    # competes with it (measured: docs/performance.md), so batches are prepared in line.
    batches = (prepare(start) for start in starts) if str(encoder.device) == "cpu" else _prefetched(prepare, starts)
    for start, batch in zip(starts, batches):
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        for block, features in encoder.embed(batch).items():
            features = np.asarray(features, dtype=np.float32)
            if not np.isfinite(features).all():  # never let NaN reach the index or the scores
                raise RuntimeError(
                    f"encoder {encoder.name} produced non-finite {block} features for slices "
                    f"{start}..{start + len(batch) - 1}"
                )
            chunks[block].append(features)
        if progress is not None:
            progress(min(start + batch_size, total), total)
    return {
        block: (np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)) for block, parts in chunks.items()
    }


def _prefetched(fn: Callable[[int], np.ndarray], items: Sequence[int]) -> Iterator[np.ndarray]:
    """fn(item) for each item, computing the next one in a worker thread while this one is used."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(fn, items[0]) if items else None
        for i in range(len(items)):
            result = pending.result()
            pending = pool.submit(fn, items[i + 1]) if i + 1 < len(items) else None
            yield result
