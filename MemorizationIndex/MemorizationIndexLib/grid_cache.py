"""A thread-safe cache of verification grids of numbered slices (reference rows), made on first use.

The pixel-work threads (:mod:`pixel_threads`) ask for the grids of their own chunk's candidates.
Grids are made outside the cache's lock, so threads that need different slices make them at the
same time; a thread that needs a grid another thread is making waits for that one instead of
making it again. Each readable slice is read and gridded once while it stays cached.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from .preprocess import PreprocessSettings
from .slice_grid import GRID_BATCH, Grid, to_grids

PixelReader = Callable[[Sequence[int]], dict[int, np.ndarray | None]]  # rows -> {row: slice, None when unreadable}


class GridCache:
    """Grids of the slices ``read`` returns, kept up to ``capacity`` (the least recently used dropped
    first; None keeps all). A call's own rows are always returned, whatever the capacity. Rows are
    read in the order of ``order`` (e.g. grouped by training volume), GRID_BATCH at a time."""

    def __init__(
        self,
        read: PixelReader,
        settings: PreprocessSettings,
        capacity: int | None = None,
        order: Callable[[int], object] | None = None,
    ):
        self.read, self.settings, self.capacity, self.order = read, settings, capacity, order
        self._grids: OrderedDict[int, Grid] = OrderedDict()
        self._making: dict[int, threading.Event] = {}  # rows another call is gridding now
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """The grids held."""
        return len(self._grids)

    def __call__(self, rows: Sequence[int]) -> dict[int, Grid]:
        """{row: grid} of the rows whose pixels can be read."""
        wanted = list(dict.fromkeys(int(row) for row in rows))
        with self._lock:
            found = {row: self._grids[row] for row in wanted if row in self._grids}
            others = {self._making[row] for row in wanted if row not in found and row in self._making}
            mine = [row for row in wanted if row not in found and row not in self._making]
            done = threading.Event()
            self._making.update(dict.fromkeys(mine, done))
        made: dict[int, Grid] = {}
        try:
            made = self._made(mine)
        finally:
            with self._lock:
                self._grids.update(made)
                for row in mine:
                    del self._making[row]
            done.set()
        for event in others:
            event.wait()
        with self._lock:
            found |= made
            found |= {row: self._grids[row] for row in wanted if row not in found and row in self._grids}
        # Rows another call was making and did not leave here (unreadable, or dropped since) are tried once more.
        found |= self._made([row for row in wanted if row not in found and row not in mine])
        with self._lock:
            for row in wanted:
                if row in found:
                    self._grids[row] = found[row]
                    self._grids.move_to_end(row)
            while self.capacity is not None and len(self._grids) > max(self.capacity, len(found)):
                self._grids.popitem(last=False)
        return {row: found[row] for row in wanted if row in found}

    def _made(self, rows: Sequence[int]) -> dict[int, Grid]:
        """Grids of the rows that can be read, GRID_BATCH slices' pixels at a time (outside the lock)."""
        out: dict[int, Grid] = {}
        rows = sorted(rows, key=self.order) if self.order is not None else list(rows)
        for start in range(0, len(rows), GRID_BATCH):
            pixels = self.read(rows[start : start + GRID_BATCH])
            readable = [row for row, values in pixels.items() if values is not None]
            out.update(zip(readable, to_grids([pixels[row] for row in readable], self.settings)))
        return out
