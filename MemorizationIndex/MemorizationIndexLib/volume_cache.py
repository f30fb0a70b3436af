"""A small cache of training volumes cut into slices, for showing reference slices (report galleries, Slicer)."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from .errors import UserError
from .volumes import image_slices, read_image

VOLUME_CACHE_SIZE = 4  # training volumes kept in memory


class SliceStackCache:
    """The slice stacks of the last few volumes read, most recently used kept; safe across threads."""

    def __init__(self, size: int = VOLUME_CACHE_SIZE):
        self.size = size
        self._stacks: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()  # most recent last
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._stacks)

    def slice(self, source: str, array_axis: int, slice_index: int) -> np.ndarray | None:
        """Slice ``slice_index`` along ``array_axis`` of the volume ``source`` (float32, a copy),
        or None when the file cannot be read or has no such slice."""
        key = (source, array_axis)
        with self._lock:
            if key in self._stacks:
                self._stacks.move_to_end(key)
            else:
                try:
                    self._stacks[key] = image_slices(read_image(source), array_axis)
                except UserError:
                    return None
                while len(self._stacks) > self.size:
                    self._stacks.popitem(last=False)
            stack = self._stacks[key]
        # A copy, so that the slice does not keep its whole volume in memory after eviction.
        return np.array(stack[slice_index], dtype=np.float32) if 0 <= slice_index < len(stack) else None
