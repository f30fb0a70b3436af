"""Keeping freed memory inside the process during CPU inference (glibc malloc only).

By default glibc serves every block over a few MB with a fresh ``mmap`` and hands it back with
``munmap`` when it is freed. A CNN forward pass allocates and frees its activation tensors
(tens of MB each) on every batch, so each batch page-faults all of them in again: measured
here, about half of the CPU time of an EfficientNet-Lite0 forward pass went to the kernel and
the pass ran 2x slower (docs/performance.md). Serving large blocks from the heap and keeping
some free memory at its top removes that cost.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
TRIM_THRESHOLD_BYTES = 256 << 20


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt  # noqa: B018 - present only in glibc (and compatible) C libraries
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory(trim_threshold_bytes: int = TRIM_THRESHOLD_BYTES) -> bool:
    """Serve large blocks from the heap and keep up to ``trim_threshold_bytes`` free at its top.

    Process-wide; call it once in a process that runs the encoder (the CLI does). Returns
    False, changing nothing, where the C library is not glibc.
    """
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold_bytes)))
