"""Turning slices into raw per-block features with an encoder, in batches, with progress and cancel."""

from __future__ import annotations

import threading
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
    for start in range(0, total, batch_size):
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        batch = prepare_batch(slices[start : start + batch_size], encoder.input_size, settings)
        for block, features in encoder.embed(batch).items():
            chunks[block].append(np.asarray(features, dtype=np.float32))
        if progress is not None:
            progress(min(start + batch_size, total), total)
    return {block: (np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)) for block, parts in chunks.items()}
