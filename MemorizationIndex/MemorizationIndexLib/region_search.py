"""Region-level search: candidates for partial copies (docs/method.md §7.14, §7.20).

A slice that copies only a half, a quarter or a pasted region of a training slice is not near that
slice in the pooled features the global search compares: the rest of the slice is someone else's.
Its copied region is near the same region of the source, though. The feature map of the encoder's
shallowest block (``Encoder.region_block``: the most local features) is therefore also pooled over
``encoders.tiles.TILES`` (windows of half and of a quarter of the side, and the four halves), every tile of
a training slice as cut is indexed, and every tile of a query slice is searched against all of them, at
any position (a copied region may have moved). The training slices whose tiles match a query's
tiles best are added to its verification candidates (:data:`REGION_CANDIDATES`). The tiles come
from the forward pass the global features come from, so the search costs no extra one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from .encoders.tiles import TILES
from .search import FLAT, IVF, build_block_index, prepare_loaded
from .whitening import ShrinkageWhitener

Tiles = dict[str, np.ndarray]  # region block -> float32 [slices, len(TILES), channels]: raw tile features

REGION_CANDIDATES = 3  # training slices the region search adds to a query slice's candidates
REGION_DEPTH = 8  # tile hits searched per query tile
IVF_MIN_VECTORS = 20_000  # tile vectors from which the region index is IVF (exact re-scoring of the hits)
# IVF cells scanned per query tile: the hits only propose candidates to verify; on docs/performance.md's
# 1.2M-tile index, 4 cells returned the same candidates as 16 in a quarter of the time
REGION_NPROBE = 4
INDEX_FILE, WHITENERS_FILE = "regions.faiss", "region_whiteners.npz"


class RegionIndex:
    """The tiles of training slices as cut, whitened per block, in one FAISS inner-product index whose
    score is the mean over blocks of the tiles' cosines; ``rows[s]`` is the original reference row of
    the s-th indexed slice (its tiles are vectors s·T … s·T + T − 1)."""

    def __init__(self, whiteners: dict[str, ShrinkageWhitener], index: faiss.Index, rows: np.ndarray):
        self.whiteners, self.index, self.rows = whiteners, index, np.asarray(rows, dtype=np.int64)

    @classmethod
    def fit(
        cls, tiles: Tiles, rows: np.ndarray, make_whitener: Callable[[], ShrinkageWhitener] = ShrinkageWhitener
    ) -> RegionIndex:
        """Whiteners fitted on the tiles of the slices at original ``rows``, and their index."""
        whiteners = {b: make_whitener().fit(_flat(raw)) for b, raw in tiles.items()}
        vectors = _vectors(whiteners, tiles)
        kind = IVF if len(vectors) >= IVF_MIN_VECTORS else FLAT
        return cls(whiteners, build_block_index(vectors, kind, nprobe=REGION_NPROBE), rows)

    def search(self, tiles: Tiles, k: int = REGION_CANDIDATES) -> tuple[np.ndarray, np.ndarray]:
        """([n, k] original rows, [n, k] scores) of the query slices' best-matching training slices: a
        slice's score is the best cosine of any of its tiles with any query tile (-1 and -inf where none)."""
        n = len(next(iter(tiles.values())))
        scores, ids = self.index.search(_vectors(self.whiteners, tiles), REGION_DEPTH)
        scores = scores.reshape(n, -1).astype(np.float64)
        slices = np.where(ids >= 0, ids // len(TILES), -1).reshape(n, -1)
        rows_out, scores_out = np.full((n, k), -1, dtype=np.int64), np.full((n, k), -np.inf)
        for i in range(n):
            best: dict[int, float] = {}
            for s, score in zip(slices[i], scores[i]):
                if s >= 0 and score > best.get(int(s), -np.inf):
                    best[int(s)] = float(score)
            ranked = sorted(best.items(), key=lambda item: -item[1])[:k]
            rows_out[i, : len(ranked)] = self.rows[[s for s, _ in ranked]]
            scores_out[i, : len(ranked)] = [score for _, score in ranked]
        return rows_out, scores_out

    def save(self, folder: str | Path) -> None:
        """Write the index and its whiteners into ``folder``."""
        folder = Path(folder)
        faiss.write_index(self.index, str(folder / INDEX_FILE))
        arrays = {f"{b}/{key}": value for b, w in self.whiteners.items() for key, value in w.state().items()}
        np.savez(folder / WHITENERS_FILE, rows=self.rows, **arrays)

    @classmethod
    def load(cls, folder: str | Path) -> RegionIndex | None:
        """The region index saved in ``folder``, or None when it has none."""
        folder = Path(folder)
        if not (folder / INDEX_FILE).exists():
            return None
        with np.load(folder / WHITENERS_FILE) as saved:
            states: dict[str, dict[str, np.ndarray]] = {}
            for name in saved.files:
                if name != "rows":
                    block, key = name.split("/", 1)
                    states.setdefault(block, {})[key] = saved[name]
            rows = saved["rows"]
        whiteners = {b: ShrinkageWhitener.from_state(state) for b, state in states.items()}
        return cls(whiteners, prepare_loaded(faiss.read_index(str(folder / INDEX_FILE)), REGION_NPROBE), rows)


def _flat(raw: np.ndarray) -> np.ndarray:
    """[slices · T, C] rows of raw tiles [slices, T, C]."""
    return np.asarray(raw, dtype=np.float32).reshape(-1, raw.shape[-1])


def _vectors(whiteners: dict[str, ShrinkageWhitener], tiles: Tiles) -> np.ndarray:
    """[slices · T, D] search vectors: every block's whitened unit tile, concatenated and divided by √blocks."""
    parts = [w.transform(_flat(tiles[b])) for b, w in whiteners.items()]
    return np.ascontiguousarray(np.concatenate(parts, axis=1) / np.sqrt(len(parts)), dtype=np.float32)
