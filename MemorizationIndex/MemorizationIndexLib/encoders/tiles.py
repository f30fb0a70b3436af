"""The tiles of a slice's feature map: windows of half the side at quarter steps, the four halves, and
windows of a quarter of the side at eighth steps, each pooled to one feature vector (the region search's
features, region_search.py; docs/method.md §7.20)."""

from __future__ import annotations

import torch


def _windows(side: float, step: float) -> tuple[tuple[float, float, float, float], ...]:
    """Square windows of ``side`` at ``step`` over the unit square, row by row."""
    starts = [i * step for i in range(int(round((1.0 - side) / step)) + 1)]
    return tuple((top, top + side, left, left + side) for top in starts for left in starts)


_HALVES = ((0.0, 0.5, 0.0, 1.0), (0.5, 1.0, 0.0, 1.0), (0.0, 1.0, 0.0, 0.5), (0.0, 1.0, 0.5, 1.0))
# (top, bottom, left, right) of every tile, as fractions of the feature map's height and width; the small
# windows let a query tile lie inside a copied region of any shape and place (a disc, a strip, a moved patch)
TILES: tuple[tuple[float, float, float, float], ...] = _windows(0.5, 0.25) + _HALVES + _windows(0.25, 0.125)


def _span(start: float, stop: float, size: int) -> slice:
    """Map rows or columns of a fraction range (at least one)."""
    first = int(round(start * size))
    return slice(first, max(int(round(stop * size)), first + 1))


def pool_tiles(maps: torch.Tensor) -> torch.Tensor:
    """[N, T, C] means of feature maps [N, C, H, W] over every tile of :data:`TILES`."""
    h, w = maps.shape[-2:]
    means = [maps[:, :, _span(t, b, h), _span(left, r, w)].mean(dim=(2, 3)) for t, b, left, r in TILES]
    return torch.stack(means, dim=1)
