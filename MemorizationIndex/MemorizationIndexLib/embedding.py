"""Turning slices into raw per-block features with an encoder, in batches, with progress and cancel."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np

from .encoders.base import Encoder
from .preprocess import PreprocessSettings, prepare_batch

ProgressCallback = Callable[[int, int], None]
FLIPS = ("none", "hflip", "vflip")


class Cancelled(Exception):
    """Raised when the caller's cancel event is set during long work."""


def flip_slice(slice2d: np.ndarray, flip: str) -> np.ndarray:
    """hflip reverses the last (column) axis of a 2D slice, vflip the first (row) axis."""
    if flip == "hflip":
        return slice2d[:, ::-1]
    if flip == "vflip":
        return slice2d[::-1, :]
    return slice2d


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

    # Preprocess the next batch in a worker thread while the encoder runs on this one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(prepare, starts[0]) if starts else None
        for i, start in enumerate(starts):
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            batch = pending.result()
            pending = pool.submit(prepare, starts[i + 1]) if i + 1 < len(starts) else None
            for block, features in encoder.embed(batch).items():
                features = np.asarray(features, dtype=np.float32)
                if not np.isfinite(features).all():  # never let NaN reach the index or the scores
                    raise RuntimeError(f"encoder {encoder.name} produced non-finite {block} features for slices {start}..{start + len(batch) - 1}")
                chunks[block].append(features)
            if progress is not None:
                progress(min(start + batch_size, total), total)
    return {block: (np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)) for block, parts in chunks.items()}
