"""Patch search: candidates for pasted and partial copies, named by the slices' own pixels (docs/method.md §7.52).

A pasted region keeps its source's pixels, but the region search's tiles pool encoder features whose receptive fields
reach past the region into the host's anatomy, and its source can rank far down their list (§7.51). Here every slice
is a small image of its whole field of view (``encoders.tiles.pixel_tiles``), cut into square patches of PATCH_CELLS
pixels, each the unit vector of its pixels less their mean; a patch flatter than PATCH_MIN_STD (background, flat
tissue) is none. The index holds a training slice's patches at every PATCH_STEP pixels; a query slice's patches are
searched at every pixel, so that a region moved anywhere has patches within a pixel of its source's. A query patch's
nearest training patch votes for its slice and the move between the two patches, weighted by its margin over the
query patch's deepest hit: generic anatomy is about as near many training patches as its best one, a copied patch far
nearer its source. A training slice's score is its best move's sum of votes (a copied region is many patches that
agree on one move), and its place the pair of patches of that move with the largest margin.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .encoders.tiles import PIXEL_GRID, PIXEL_KEY
from .search import FLAT, IVF, build_block_index, grouped_search, prepare_loaded, tile_margins

PATCH_CELLS = 8  # a patch's side in pixels of the small image (a seventh of the field of view)
PATCH_STEP = 2  # pixels between the patches an index holds of a training slice (a query's lie at every pixel)
PATCH_MIN_STD = 0.04  # patches whose pixels' standard deviation is below this ([0, 1] intensities) are left out
PATCH_DEPTH = 8  # hits searched per query patch; the deepest is the patch's level
MOVE_BIN = 2  # pixels of the small image per bin of the votes' moves
PATCH_CANDIDATES = 3  # training slices the patch search adds to a query slice's candidates
IVF_MIN_PATCHES = 20_000  # patches from which the index is IVF
PATCH_NPROBE = 4  # IVF cells scanned per query patch, at most
PATCH_SCAN = 2048  # about how many indexed patches a query patch is compared with, at most (:func:`cells_scanned`)
QUERY_CHUNK = 64  # query slices whose patches are searched together
# Training slices as cut above which a reference gets no patch search. Its search hardly grows with the reference
# (cells_scanned: 4.5-6.2 s for 174 query slices against 1,000 to 12,248 real slices), but its memory does: about 280
# bytes per indexed patch, some 100 KB per brain slice, so 2 GB here; fitting it took 21 s at 12,248 slices
# (docs/method.md §7.53, performance.md)
PATCH_MAX_SLICES = 20_000
FIT_CHUNK = 1024  # training slices cut into patches together
INDEX_FILE = "regions_patch.faiss"
PLACES_FILE = "region_patches.npz"

Ranked = list[tuple[int, np.ndarray]]  # (indexed slice, places [4]) best first


def searched(n_slices: int) -> bool:
    """Whether a reference of ``n_slices`` training slices as cut gets the patch search (PATCH_MAX_SLICES)."""
    return n_slices <= PATCH_MAX_SLICES


def cells_scanned(index: faiss.Index) -> int:
    """IVF cells scanned per query patch: PATCH_NPROBE, or fewer (at least one) where the cells are large, so that a
    query patch is compared with about PATCH_SCAN indexed patches at most and the search grows with the root of the
    reference rather than with the reference itself (docs/method.md §7.53)."""
    typed = faiss.downcast_index(index)
    per_cell = typed.ntotal / max(int(getattr(typed, "nlist", 1)), 1)
    return max(1, min(PATCH_NPROBE, round(PATCH_SCAN / max(per_cell, 1.0))))


def within_limit(tiles: dict[str, np.ndarray] | None) -> dict[str, np.ndarray] | None:
    """The training slices' tile features, without their small images (``encoders.tiles.PIXEL_KEY``, so no patch
    search) when the reference is too large to be :func:`searched`. The index and its verified null both take them
    through this, so an audit searches patches exactly when its null did."""
    if tiles is None or PIXEL_KEY not in tiles or searched(len(tiles[PIXEL_KEY])):
        return tiles
    return {key: raw for key, raw in tiles.items() if key != PIXEL_KEY}


def patches(images: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The patches of small images [n, 1, PIXEL_GRID²] at every ``step`` pixels, flat ones left out: unit vectors
    float32 [m, PATCH_CELLS²] of the pixels less their mean, the image each comes from [m] and its first pixel
    (row, col) [m, 2]."""
    square = np.asarray(images, dtype=np.float32).reshape(-1, PIXEL_GRID, PIXEL_GRID)
    windows = sliding_window_view(square, (PATCH_CELLS, PATCH_CELLS), axis=(1, 2))[:, ::step, ::step]
    n, rows, cols = windows.shape[:3]
    flat = windows.reshape(n * rows * cols, PATCH_CELLS * PATCH_CELLS)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1)
    kept = np.flatnonzero(norms >= PATCH_MIN_STD * PATCH_CELLS)  # the norm is the deviation times √(cells²)
    image, row, col = np.unravel_index(kept, (n, rows, cols))
    vectors = np.ascontiguousarray(flat[kept] / norms[kept, None], dtype=np.float32)
    return vectors, image, np.stack([row, col], axis=1) * step


def votes(
    image: np.ndarray, corners: np.ndarray, scores: np.ndarray, ids: np.ndarray, slice_of: np.ndarray, at: np.ndarray
) -> list[Ranked]:
    """Per query image, up to the last with a voting patch: the training slices its patches voted for, best first,
    with their places (:class:`PatchIndex`). ``image`` [m]: each query patch's image; ``corners`` [m, 2]: its first
    pixel; ``scores``, ``ids`` [m, depth]: its hits, best first (-1 = none); ``slice_of`` [V], ``at`` [V, 2]: the
    indexed patches' slices and first pixels."""
    margin = tile_margins(scores, ids)[:, 0]
    voting = np.flatnonzero(margin > 0)
    hit = ids[voting, 0]
    margin, image, corners = margin[voting], image[voting], corners[voting]
    source = slice_of[hit].astype(np.int64)
    bins = np.floor_divide(corners - at[hit], MOVE_BIN) + PIXEL_GRID  # both in [0, 2 · PIXEL_GRID)
    side = 2 * PIXEL_GRID
    keys = ((image * (int(slice_of.max()) + 1) + source) * side + bins[:, 0]) * side + bins[:, 1]
    unique, group = np.unique(keys, return_inverse=True)
    sums = np.bincount(group, weights=margin, minlength=len(unique))
    order = np.lexsort((-margin, group))  # each move's patches, largest margin first
    first = order[np.r_[0, np.flatnonzero(np.diff(group[order])) + 1]] if len(order) else order
    pair = unique // (side * side)  # (query image, training slice) of each move, ascending
    best = np.lexsort((-sums, pair))  # each pair's moves, most votes first (the smallest move on ties)
    best = best[np.r_[0, np.flatnonzero(np.diff(pair[best])) + 1]] if len(best) else best
    p = first[best]
    query, source = image[p], source[p]
    centre = PATCH_CELLS / 2.0
    places = np.concatenate([corners[p] + centre, at[hit[p]] + centre], axis=1) / PIXEL_GRID
    listed = np.lexsort((source, -sums[best], query))  # per query image, most votes first (smaller slice on ties)
    starts = np.searchsorted(query[listed], np.arange(int(image.max()) + 2 if len(image) else 1))
    return [[(int(source[j]), places[j]) for j in listed[starts[q] : starts[q + 1]]] for q in range(len(starts) - 1)]


class PatchIndex:
    """The patches of the training slices as cut (:func:`patches` at PATCH_STEP) in one FAISS inner-product index;
    ``slice_of`` [V] and ``corners`` [V, 2]: each patch's indexed slice and first pixel."""

    framed = True  # its places are fractions of the slices' whole fields of view, as the fine tiles' are

    def __init__(self, index: faiss.Index, slice_of: np.ndarray, corners: np.ndarray):
        self.index = index
        self.slice_of = np.asarray(slice_of, dtype=np.int32)
        self.corners = np.asarray(corners, dtype=np.int16)

    @classmethod
    def fit(cls, images: np.ndarray) -> PatchIndex:
        """The index of the patches of small images [n, 1, PIXEL_GRID²] (``tiles[PIXEL_KEY]``)."""
        parts = [patches(images[start : start + FIT_CHUNK], PATCH_STEP) for start in range(0, len(images), FIT_CHUNK)]
        vectors, image, corners = (np.concatenate([part[i] for part in parts]) for i in range(3))
        image += np.repeat(np.arange(0, len(images), FIT_CHUNK), [len(part[0]) for part in parts])
        kind = IVF if len(vectors) >= IVF_MIN_PATCHES else FLAT
        index = build_block_index(vectors, kind)
        return cls(prepare_loaded(index, cells_scanned(index)), image, corners)

    def ranked(self, tiles: dict[str, np.ndarray]) -> list[Ranked]:
        """Per query slice (``tiles[PIXEL_KEY]``), (indexed slice, places [4]) of the training slices its patches
        voted for, best first; places are the (row, col) centres of the query's patch and the training slice's, in
        fractions of the whole field of view (``region_search.RegionHits``)."""
        images = np.asarray(tiles[PIXEL_KEY])
        out: list[Ranked] = []
        for start in range(0, len(images), QUERY_CHUNK):
            chunk = images[start : start + QUERY_CHUNK]
            vectors, image, corners = patches(chunk, 1)
            ranked: list[Ranked] = []
            if len(vectors) and self.index.ntotal:
                scores, ids = grouped_search(self.index, vectors, PATCH_DEPTH)
                ranked = votes(image, corners, scores, ids, self.slice_of, self.corners.astype(np.int64))
            out += ranked + [[] for _ in range(len(chunk) - len(ranked))]
        return out

    def consistent(self, n_slices: int) -> bool:
        """Whether the index holds one slice number and place per patch, each of ``n_slices`` indexed slices."""
        sizes = self.index.ntotal == len(self.slice_of) == len(self.corners)
        return sizes and bool(np.all((self.slice_of >= 0) & (self.slice_of < n_slices)))

    def save(self, folder: str | Path) -> None:
        """Write the index and its patches' places into ``folder``."""
        folder = Path(folder)
        faiss.write_index(self.index, str(folder / INDEX_FILE))
        np.savez(folder / PLACES_FILE, slice_of=self.slice_of, corners=self.corners)

    @classmethod
    def load(cls, folder: str | Path) -> PatchIndex | None:
        """The patch index saved in ``folder``, or None when it has none."""
        folder = Path(folder)
        if not (folder / INDEX_FILE).exists():
            return None
        with np.load(folder / PLACES_FILE) as saved:
            slice_of, corners = saved["slice_of"], saved["corners"]
        index = faiss.read_index(str(folder / INDEX_FILE))
        return cls(prepare_loaded(index, cells_scanned(index)), slice_of, corners)
