"""Exact percentiles near the ends of large arrays, without partitioning the whole array."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_SAMPLE_STEP = 16  # every 16th value estimates where a tail starts
_TAIL_MARGIN = 2.0  # candidates kept: about this many times the values a tail needs


def percentiles(values: np.ndarray, percents: Sequence[float]) -> list[float]:
    """``np.percentile(values, percents)`` (linear interpolation) of finite values, any shape.

    A percentile near either end only needs that end's few smallest or largest values: a strided
    sample gives a cut that keeps them (checked by counting), and only the values beyond the cut
    are partitioned. Falls back to partitioning everything when the sample misjudges the cut.
    """
    flat = np.asarray(values).reshape(-1)
    n = flat.size
    if n == 0:
        raise ValueError("percentiles of an empty array")
    positions = [p / 100.0 * (n - 1) for p in percents]
    ranks = sorted({min(int(q) + j, n - 1) for q in positions for j in (0, 1)})
    value_at = _order_statistics(flat, ranks)
    out = []
    for q in positions:
        below = value_at[int(q)]
        above = value_at[min(int(q) + 1, n - 1)]
        out.append(below + (q - int(q)) * (above - below))
    return out


def _order_statistics(flat: np.ndarray, ranks: list[int]) -> dict[int, float]:
    """{rank: the rank-th smallest value} for 0-based ranks of a 1D array."""
    n = flat.size
    low = [r for r in ranks if r < n // 2]
    high = [r for r in ranks if r >= n // 2]
    found: dict[int, float] = {}
    if low:
        found.update(_tail(flat, low, largest=False))
    if high:
        found.update(_tail(flat, high, largest=True))
    return found


def _tail(flat: np.ndarray, ranks: list[int], largest: bool) -> dict[int, float]:
    n = flat.size
    need = (n - min(ranks)) if largest else (max(ranks) + 1)  # values of this tail that are needed
    if n >= 8 * _SAMPLE_STEP and need * 8 < n:
        sample = flat[::_SAMPLE_STEP]
        keep = min(sample.size - 1, int(np.ceil(_TAIL_MARGIN * need / _SAMPLE_STEP)) + 8)
        cut = np.partition(sample, sample.size - 1 - keep if largest else keep)[
            sample.size - 1 - keep if largest else keep
        ]
        candidates = flat[flat >= cut] if largest else flat[flat <= cut]
        if candidates.size >= need:  # the cut keeps the whole tail: exact
            offset = n - candidates.size if largest else 0
            local = [r - offset for r in ranks]
            part = np.partition(candidates, local)
            return {r: float(part[r - offset]) for r in ranks}
    part = np.partition(flat, ranks)
    return {r: float(part[r]) for r in ranks}
