"""The second stage against a loaded index: reference grids read from the training volumes (or the
index's thumbnails), candidates of every query slice, verification of every query slice, and the
flag that combines both stages with the verified null (docs/method.md §7)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .encoders.base import Encoder
from .grid_cache import GridCache
from .reference_index import ReferenceIndex
from .region_search import Tiles
from .search import Neighbours
from .second_stage import GridSource, Shortlist, Verified, candidates, slice_places, verify_shortlist
from .verified_null import null_settings

GRID_CACHE = 4096  # reference grids kept between query batches (0.4 MB for a 256 x 256 slice, 1 MB for 512 x 512)


def unavailable_reason(index: ReferenceIndex) -> str:
    """Why the second stage cannot run on this index ("" when it can): no verified null, or no
    reference pixels (neither thumbnails nor reachable training volumes)."""
    if index.verified_null is None:
        return (
            "the index has no verified null (built without verification, from features alone, or by an older "
            "version); rebuild it with build-index to verify copies"
        )
    made = index.config.get("verification", {})
    now = null_settings(index.regions is not None, patches=bool(made.get("patch_search")))
    changed = [f"{key} {made.get(key)} (now {value})" for key, value in now.items() if made.get(key) != value]
    if changed:
        return (
            f"the index's verified null was made by an older second stage ({'; '.join(changed)}); rebuild it with "
            "build-index to verify copies"
        )
    if index.store_thumbnails:
        return ""
    sources = sorted(set(index.provenance.source))
    missing = [s for s in sources if not Path(s).is_file() and not Path(s).is_dir()]
    if missing:
        return (
            f"{len(missing)} of {len(sources)} training volumes recorded in the index are not reachable "
            f"(first: {missing[0]}), and the index has no thumbnails (build-index --store-thumbnails)"
        )
    return ""


class ReferenceGrids(GridCache):
    """Verification grids of an index's reference slices (:class:`grid_cache.GridCache`), read from its
    thumbnails or training volumes, each volume's rows together; thread-safe."""

    def __init__(self, index: ReferenceIndex, capacity: int = GRID_CACHE):
        prov = index.provenance
        super().__init__(self._pixels, index.preprocessing, capacity, order=lambda row: (prov.source[row], row))
        self.index = index
        self._places: np.ndarray | None = None
        self._places_lock = threading.Lock()

    @property
    def places(self) -> np.ndarray:
        """(volume, slice) of every row of the index (``second_stage.slice_places``), made on first use."""
        with self._places_lock:
            if self._places is None:
                self._places = slice_places(self.index.provenance)
            return self._places

    def _pixels(self, rows: Sequence[int]) -> dict[int, np.ndarray | None]:
        """The reference slices of original rows as cut (None where they cannot be read)."""
        prov = self.index.provenance
        return {row: self.index.reference_slice(prov.source[row], prov.slice[row]) for row in rows}


def shortlist_queries(
    index: ReferenceIndex,
    encoder: Encoder,
    slices: Sequence[np.ndarray],
    as_cut: Neighbours,
    tiles: Tiles | None,
    *,
    batch_size: int = 32,
    cancel: threading.Event | None = None,
) -> Shortlist:
    """[n, index.candidates (+ region candidates)] candidates of the query slices (``second_stage.Shortlist``):
    the as-cut search and, for noisy slices, the smoothed view's, in the index, then the region search of the
    slices' ``tiles`` when the index has a region index (``tiles`` must then be given); ``as_cut`` is the audit's
    own search of the slices (``second_stage.search_depth(index.candidates)`` deep)."""

    def search(raw: dict[str, np.ndarray], depth: int) -> Neighbours:
        return index.search(index.whiten(raw), k=depth)

    return candidates(
        encoder,
        slices,
        as_cut,
        search,
        np.asarray(index.provenance.original_row),
        index.preprocessing,
        k=index.candidates,
        search_regions=None if index.regions is None else index.regions.search,
        tiles=tiles,
        batch_size=batch_size,
        cancel=cancel,
    )


def verify_queries(
    index: ReferenceIndex,
    encoder: Encoder,
    slices: Sequence[np.ndarray],
    as_cut: Neighbours,
    tiles: Tiles | None,
    grids: GridSource,
    *,
    batch_size: int = 32,
    cancel: threading.Event | None = None,
) -> list[Verified]:
    """The best verified candidate of every query slice (:func:`shortlist_queries`, then
    ``second_stage.verify_shortlist`` against the reference grids)."""
    shortlisted = shortlist_queries(index, encoder, slices, as_cut, tiles, batch_size=batch_size, cancel=cancel)
    return verify_shortlist(slices, shortlisted, grids, index.preprocessing, cancel)


class SecondStage:
    """The second stage for one audit run: whether it runs (``reason`` says why not) and the
    reference grids it shares across inputs."""

    def __init__(self, index: ReferenceIndex, enabled: bool = True):
        self.reason = unavailable_reason(index) if enabled else "verification was turned off (--no-verification)"
        self.grids = ReferenceGrids(index) if not self.reason else None

    @property
    def used(self) -> bool:
        """True when query slices are verified."""
        return self.grids is not None
