"""Turning slices into raw per-block features with an encoder, in batches, with progress and cancel."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .encoders.base import Encoder
from .preprocess import PreprocessSettings, framed, prepare_batch
from .region_search import Tiles

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
    features, _ = embed_slices_and_tiles(
        encoder, slices, settings, tiled=0, batch_size=batch_size, progress=progress, cancel=cancel
    )
    return features


def embed_slices_and_tiles(
    encoder: Encoder,
    slices: Sequence[np.ndarray],
    settings: PreprocessSettings,
    *,
    tiled: int | None = None,
    batch_size: int = 32,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> tuple[dict[str, np.ndarray], Tiles | None]:
    """Raw features of 2D slices (as :func:`embed_slices`) and the raw tile features {key: float32 [tiled, tiles,
    D]} (``Encoder.tile_keys``: coarse tiles from the same forward passes, fine tiles from the slices in their whole
    field of view, ``preprocess.framed``) of the first ``tiled`` slices (all when None); the tiles are None when the
    encoder has none (``Encoder.has_tiles``) or ``tiled`` is 0."""
    total = len(slices)
    tiled = total if tiled is None else min(int(tiled), total)
    if not encoder.has_tiles:
        tiled = 0
    chunks: dict[str, list[np.ndarray]] = {block: [] for block in encoder.blocks}
    tile_chunks: dict[str, list[np.ndarray]] = {key: [] for key in encoder.tile_keys}
    starts = list(range(0, total, batch_size))

    whole_view = framed(settings)

    def prepare(start: int) -> tuple[np.ndarray, np.ndarray | None]:
        part = slices[start : start + batch_size]
        batch = prepare_batch(part, encoder.input_size, settings)
        return batch, prepare_batch(part[: tiled - start], encoder.input_size, whole_view) if start < tiled else None

    # On a GPU, preprocess the next batch in a worker thread while the encoder runs on this one.
    # On a CPU the forward pass already keeps every core busy, and a second thread of work only
    # competes with it (measured: docs/performance.md), so batches are prepared in line.
    batches = (prepare(start) for start in starts) if str(encoder.device) == "cpu" else _prefetched(prepare, starts)
    for start, (batch, whole) in zip(starts, batches):
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        if whole is not None:
            embedded, tiles = encoder.embed_with_tiles(batch, whole)
            for block, values in tiles.items():
                tile_chunks[block].append(_finite(encoder, block, values[: tiled - start], start))
        else:
            embedded = encoder.embed(batch)
        for block, features in embedded.items():
            chunks[block].append(_finite(encoder, block, features, start))
        if progress is not None:
            progress(min(start + batch_size, total), total)
    features = {block: _joined(parts, 2) for block, parts in chunks.items()}
    return features, ({block: _joined(parts, 3) for block, parts in tile_chunks.items()} if tiled else None)


def _finite(encoder: Encoder, block: str, features: np.ndarray, start: int) -> np.ndarray:
    """The features as float32; never let NaN reach the index or the scores."""
    features = np.asarray(features, dtype=np.float32)
    if not np.isfinite(features).all():
        raise RuntimeError(
            f"encoder {encoder.name} produced non-finite {block} features for slices "
            f"{start}..{start + len(features) - 1}"
        )
    return features


def _joined(parts: list[np.ndarray], ndim: int) -> np.ndarray:
    """The batches' rows in one array (an empty one of ``ndim`` dimensions when there are none)."""
    return np.concatenate(parts) if parts else np.zeros((0,) * ndim, np.float32)


def _prefetched(fn: Callable[[int], np.ndarray], items: Sequence[int]) -> Iterator[np.ndarray]:
    """fn(item) for each item, computing the next one in a worker thread while this one is used."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(fn, items[0]) if items else None
        for i in range(len(items)):
            result = pending.result()
            pending = pool.submit(fn, items[i + 1]) if i + 1 < len(items) else None
            yield result
