"""Region-level search: candidates for partial copies (docs/method.md §7.14, §7.20, §7.23).

A slice that copies only a half, a quarter or a pasted region of a training slice is not near that
slice in the pooled features the global search compares: the rest of the slice is someone else's.
Its copied region is near the same region of the source, though. The encoder's feature maps are
therefore also pooled over tiles (``encoders.tiles``): coarse tiles of every block (halves and windows of
half the side) and fine tiles of the shallowest block (windows of a quarter of the side, which fit inside
a copied region of any shape). Every tile of a training slice as cut is indexed, one FAISS index per kind,
and every tile of a query slice is searched against the tiles of its kind, at any position (a copied region
may have moved). A hit is ranked by its margin over the query tile's deepest hit: a tile of background or
generic tissue is about as near many training tiles as its best one, so only a tile that stands out names a
source. A query slice's fine tiles lie at half the step of those indexed, so that a copied region moved anywhere
has a window near one of its source's (§7.48). The training slices with the best margins, by each kind in turn, are
added to the query's verification candidates (:data:`REGION_CANDIDATES`). The coarse tiles come from the forward
pass the global features come from; the fine tiles from a pass, stopped at the shallowest block, over the slice in
its whole field of view, where a partial copy keeps its place and scale (§7.31). The training slices that the query's
own pixel patches name (``patch_search``, §7.52) come first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from .encoders.tiles import PIXEL_KEY, Window, indexed, indexed_windows_of, is_fine, windows_of
from .patch_search import PATCH_CANDIDATES, PatchIndex
from .search import FLAT, IVF, build_block_index, prepare_loaded, tile_margins
from .whitening import ShrinkageWhitener

Tiles = dict[str, np.ndarray]  # tile key (encoders.tiles) -> float32 [slices, tiles, channels]: raw tile features

REGION_CANDIDATES = 6  # training slices the region search adds to a query slice's candidates; method.md §7.29
# Further training slices it adds that count only by their near-exact part at the slice's own resolution (§7.46, §7.47)
NATIVE_ONLY_CANDIDATES = 6
REGION_DEPTH = 8  # tile hits searched per query tile; the deepest is the tile's level (:func:`tile_margins`)
IVF_MIN_VECTORS = 20_000  # tile vectors from which a tile index is IVF (exact re-scoring of the hits)
# IVF cells scanned per query tile: the hits only propose candidates to verify; on docs/performance.md's
# 1.2M-tile index, 4 cells returned the same candidates as 16 in a quarter of the time
REGION_NPROBE = 4
WHITENERS_FILE = "region_whiteners.npz"
INDEX_FILES = {"coarse": "regions.faiss", "fine": "regions_fine.faiss"}  # one FAISS index per kind of tile


@dataclass(frozen=True)
class RegionHits:
    """The region search's proposals for query slices: ``rows`` [n, m] original reference rows, best first (-1 =
    none), and ``places`` [n, m, 4]: the pair of tiles that gave each row its best margin, the (row, col) centre
    of the query's tile and then of the training slice's, each in fractions of its slice's square as the encoder
    saw it (nan where there is no row): the square of the slice's foreground crop, or where ``framed`` [n, m] is
    True (fine tiles), of its whole field of view (``preprocess.framed``). A copied region moved elsewhere shows
    as the move from one to the other (docs/method.md §7.25). ``patched``: how many of a slice's first rows the
    patch search named (``patch_search``; 0 without one), ahead of the tiles'."""

    rows: np.ndarray
    places: np.ndarray
    framed: np.ndarray
    patched: int = 0

    @classmethod
    def of(cls, chosen: list[dict[int, Place]], width: int, patched: int = 0) -> RegionHits:
        """Hits [len(chosen), width] from each query slice's {row: (places, framed)}, best first; ``patched`` as
        the class says."""
        rows = np.full((len(chosen), width), -1, dtype=np.int64)
        places = np.full((len(chosen), width, 4), np.nan)
        framed = np.zeros((len(chosen), width), dtype=bool)
        for i, named in enumerate(chosen):
            rows[i, : len(named)] = list(named)
            for j, (place, whole) in enumerate(named.values()):
                places[i, j], framed[i, j] = place, whole
        return cls(rows, places, framed, patched)

    def ranking(self, i: int) -> list[tuple[int, Place]]:
        """The i-th query slice's hits as (row, (places, framed)), best first."""
        return [(int(r), (p, bool(f))) for r, p, f in zip(self.rows[i], self.places[i], self.framed[i]) if r >= 0]

    def with_view(self, positions: np.ndarray, view: RegionHits, alone: np.ndarray) -> RegionHits:
        """These hits, with the hits of another view of the query slices at ``positions`` (``view``'s i-th row is
        the slice at ``positions[i]``'s) taken in turn with the slice's own, the view's first and without repeats;
        for the i in ``alone``, the view's hits replace the slice's own."""
        width = self.rows.shape[1] + view.rows.shape[1]
        chosen = [dict(self.ranking(q)) for q in range(len(self.rows))]
        alone_ = set(np.asarray(alone, dtype=np.int64).tolist())
        for i, q in enumerate(np.asarray(positions, dtype=np.int64).tolist()):
            views = [view.ranking(i)] + ([] if i in alone_ else [self.ranking(q)])
            chosen[q] = in_turn(views, width)
        return RegionHits.of(chosen, width, max(self.patched, view.patched))


Place = tuple[np.ndarray, bool]  # a hit's tile centres [4] and whether they are fractions of the whole field of view


def in_turn(rankings: list[list[tuple[int, Place]]], depth: int) -> dict[int, Place]:
    """{row: place} from the first ``depth`` entries of each ranking of (row, place), best first, taken from the
    rankings in turn; a row keeps the place of its first entry."""
    chosen: dict[int, Place] = {}
    for position in range(depth):
        for ranking in rankings:
            if position < len(ranking):
                chosen.setdefault(*ranking[position])
    return chosen


def _kind(key: str) -> str:
    """The kind of tile (a key of :data:`INDEX_FILES`) a tile-features key holds."""
    return "fine" if is_fine(key) else "coarse"


class TileIndex:
    """One kind of tile of the training slices, whitened per key, in one FAISS inner-product index whose score
    is the mean over keys of the tiles' cosines; the s-th indexed slice's tiles are vectors s·T … s·T + T − 1."""

    def __init__(self, whiteners: dict[str, ShrinkageWhitener], index: faiss.Index):
        self.whiteners, self.index = whiteners, index
        key = next(iter(whiteners))
        self.centres = _centres(indexed_windows_of(key))  # [T, 2] of the indexed tiles
        self.n_tiles = len(self.centres)
        self.query_centres = _centres(windows_of(key))  # of a query slice's tiles

    @classmethod
    def fit(cls, tiles: Tiles, make_whitener: Callable[[], ShrinkageWhitener]) -> TileIndex:
        """Whiteners fitted on the indexed tiles (``encoders.tiles.indexed``) of raw tiles of one kind, and their
        index."""
        tiles = {key: indexed(key, raw) for key, raw in tiles.items()}
        whiteners = {key: make_whitener().fit(_flat(raw)) for key, raw in tiles.items()}
        vectors = _vectors(whiteners, tiles)
        kind = IVF if len(vectors) >= IVF_MIN_VECTORS else FLAT
        return cls(whiteners, build_block_index(vectors, kind, nprobe=REGION_NPROBE))

    @property
    def framed(self) -> bool:
        """Whether these tiles were pooled from the slices' whole fields of view (the fine tiles) rather than their
        foreground crops (``encoders.tiles``)."""
        return is_fine(next(iter(self.whiteners)))

    def ranked(self, tiles: Tiles) -> list[list[tuple[int, np.ndarray]]]:
        """Per query slice, (indexed slice, places [4]) of the slices its tiles hit, best first: a slice's score is
        the best margin (:func:`tile_margins`) of any of its tiles over the deepest hit of the query tile that hit
        it, and its places the centres of those two tiles (:class:`RegionHits`). A query slice has the tiles
        ``encoders.tiles.windows_of`` says; the index holds ``indexed_windows_of`` of each training slice."""
        tiles = {key: tiles[key] for key in self.whiteners}
        if any(raw.shape[1] != len(self.query_centres) for raw in tiles.values()):
            raise ValueError(f"query slices need {len(self.query_centres)} tiles of each key; re-embed them")
        n = len(next(iter(tiles.values())))
        scores, ids = self.index.search(_vectors(self.whiteners, tiles), REGION_DEPTH)
        margins = tile_margins(scores, ids).reshape(n, -1)
        hits = ids.reshape(n, -1)
        query_tile = np.arange(hits.shape[1]) // REGION_DEPTH
        out = []
        for i in range(n):
            best: dict[int, tuple[float, int]] = {}  # slice -> (its best margin, where in the query's hits)
            for j, (hit, margin) in enumerate(zip(hits[i].tolist(), margins[i].tolist())):
                s = hit // self.n_tiles
                if hit >= 0 and margin > best.get(s, (-np.inf, -1))[0]:
                    best[s] = (margin, j)
            order = sorted(best, key=lambda s: -best[s][0])
            at = [best[s][1] for s in order]
            places = np.concatenate(
                [self.query_centres[query_tile[at]], self.centres[hits[i, at] % self.n_tiles]], axis=1
            )
            out.append(list(zip(order, places)))
        return out


class RegionIndex:
    """The coarse and fine tile indexes of the training slices as cut, and their pixel patches' index (``patches``;
    None without one); ``rows[s]`` is the original reference row of the s-th indexed slice."""

    def __init__(self, kinds: dict[str, TileIndex], rows: np.ndarray, patches: PatchIndex | None = None):
        self.kinds, self.rows, self.patches = kinds, np.asarray(rows, dtype=np.int64), patches
        # The small images of the indexed slices, read when the patch search is first needed (an index saved without
        # pixels: :meth:`save`); None when there is nothing to read them from.
        self.small_images: Callable[[], np.ndarray] | None = None
        self._lock = threading.Lock()

    def patch_index(self) -> PatchIndex | None:
        """The patch index: the saved one, else one made once from :attr:`small_images` (None without either)."""
        with self._lock:
            if self.patches is None and self.small_images is not None:
                self.patches, self.small_images = PatchIndex.fit(self.small_images()), None
            return self.patches

    @classmethod
    def fit(
        cls, tiles: Tiles, rows: np.ndarray, make_whitener: Callable[[], ShrinkageWhitener] = ShrinkageWhitener
    ) -> RegionIndex:
        """The tile indexes of the slices at original ``rows`` (raw ``tiles`` of every key), and their patches'
        index when the tiles hold their small images (``encoders.tiles.PIXEL_KEY``)."""
        grouped: dict[str, Tiles] = {}
        for key, raw in tiles.items():
            if key != PIXEL_KEY:  # the small images are the patch index's, not a kind of tile
                grouped.setdefault(_kind(key), {})[key] = raw
        kinds = {kind: TileIndex.fit(grouped[kind], make_whitener) for kind in INDEX_FILES if kind in grouped}
        return cls(kinds, rows, PatchIndex.fit(tiles[PIXEL_KEY]) if PIXEL_KEY in tiles else None)

    def search(self, tiles: Tiles, k: int = REGION_CANDIDATES + NATIVE_ONLY_CANDIDATES) -> RegionHits:
        """The query slices' best-matching training slices, [n, ≤ PATCH_CANDIDATES + 2k] (:class:`RegionHits`): the
        patch search's best PATCH_CANDIDATES (:meth:`PatchIndex.ranked`) when the index has one and the tiles hold
        the slices' small images, then each tile kind's best k by tile margin (:meth:`TileIndex.ranked`), taken from
        the kinds in turn (coarse first), without repeats. A row the patch search named keeps its patches' places; a
        row among both tile kinds' best k keeps the fine tiles' places: a quarter of the side at sixteenth steps of
        the whole view place a moved copy closer than windows of half the side at quarter steps of the crop
        (method.md §7.49)."""
        n = len(next(iter(tiles.values())))
        rankings = {
            kind: [[(int(self.rows[s]), (p, index.framed)) for s, p in hits] for hits in index.ranked(tiles)]
            for kind, index in self.kinds.items()
        }
        chosen = [in_turn([ranking[i] for ranking in rankings.values()], k) for i in range(n)]
        for named, finest in zip(chosen, rankings.get("fine", [])):
            named.update(finest[:k])  # rows already named keep their order
        patches = self.patch_index() if PIXEL_KEY in tiles else None
        if patches is None:
            return RegionHits.of(chosen, k * len(rankings))
        patched = patches.ranked(tiles)
        for i, hits in enumerate(patched):
            first: dict[int, Place] = {int(self.rows[s]): (p, PatchIndex.framed) for s, p in hits[:PATCH_CANDIDATES]}
            chosen[i] = first | {row: place for row, place in chosen[i].items() if row not in first}
        return RegionHits.of(chosen, PATCH_CANDIDATES + k * len(rankings), PATCH_CANDIDATES)

    def consistent(self, n_rows: int) -> bool:
        """Whether every tile index holds its tiles of every indexed slice, and the slices are rows of an index
        of ``n_rows``."""
        sizes = all(index.index.ntotal == len(self.rows) * index.n_tiles for index in self.kinds.values())
        patches = self.patches is None or self.patches.consistent(len(self.rows))
        return sizes and patches and bool(np.all((self.rows >= 0) & (self.rows < n_rows)))

    def save(self, folder: str | Path, with_patches: bool) -> None:
        """Write the tile indexes and their whiteners into ``folder``, and the patch index when ``with_patches``: its
        patches are the training slices' own pixels, which an index holds only when its user asks for them
        (``--store-thumbnails``); without them an audit makes the patch index from the training volumes
        (:attr:`small_images`)."""
        folder = Path(folder)
        for kind, index in self.kinds.items():
            faiss.write_index(index.index, str(folder / INDEX_FILES[kind]))
        arrays = {
            f"{key}/{name}": value
            for index in self.kinds.values()
            for key, w in index.whiteners.items()
            for name, value in w.state().items()
        }
        np.savez(folder / WHITENERS_FILE, rows=self.rows, **arrays)
        if with_patches and self.patches is not None:
            self.patches.save(folder)

    @classmethod
    def load(cls, folder: str | Path) -> RegionIndex | None:
        """The region index saved in ``folder``, or None when it has none."""
        folder = Path(folder)
        if not (folder / INDEX_FILES["coarse"]).exists():
            return None
        with np.load(folder / WHITENERS_FILE) as saved:
            states: dict[str, dict[str, np.ndarray]] = {}
            for name in saved.files:
                if name != "rows":
                    key, field = name.split("/", 1)
                    states.setdefault(key, {})[field] = saved[name]
            rows = saved["rows"]
        kinds = {}
        for kind, file in INDEX_FILES.items():
            whiteners = {
                key: ShrinkageWhitener.from_state(state) for key, state in states.items() if _kind(key) == kind
            }
            if whiteners and (folder / file).exists():
                kinds[kind] = TileIndex(whiteners, prepare_loaded(faiss.read_index(str(folder / file)), REGION_NPROBE))
        return cls(kinds, rows, PatchIndex.load(folder))


def _centres(windows: Sequence[Window]) -> np.ndarray:
    """[T, 2] (row, col) centres of windows (fractions of the side)."""
    spans = np.array(windows, dtype=np.float64)  # [T, 4]: top, bottom, left, right
    return np.stack([spans[:, :2].mean(axis=1), spans[:, 2:].mean(axis=1)], axis=1)


def _flat(raw: np.ndarray) -> np.ndarray:
    """[slices · T, C] rows of raw tiles [slices, T, C]."""
    return np.asarray(raw, dtype=np.float32).reshape(-1, raw.shape[-1])


def _vectors(whiteners: dict[str, ShrinkageWhitener], tiles: Tiles) -> np.ndarray:
    """[slices · T, D] search vectors: every key's whitened unit tile, concatenated and divided by √keys."""
    parts = [w.transform(_flat(tiles[key])) for key, w in whiteners.items()]
    return np.ascontiguousarray(np.concatenate(parts, axis=1) / np.sqrt(len(parts)), dtype=np.float32)
