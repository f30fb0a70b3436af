"""The tiles of a slice's feature maps: windows of half the side at quarter steps, and the four halves,
each pooled to one feature vector per block (the region search's features, region_search.py)."""

from __future__ import annotations

import torch

_STEPS = (0.0, 0.25, 0.5)
# (top, bottom, left, right) of every tile, as fractions of the feature map's height and width
TILES: tuple[tuple[float, float, float, float], ...] = tuple(
    (top, top + 0.5, left, left + 0.5) for top in _STEPS for left in _STEPS
) + ((0.0, 0.5, 0.0, 1.0), (0.5, 1.0, 0.0, 1.0), (0.0, 1.0, 0.0, 0.5), (0.0, 1.0, 0.5, 1.0))


def _span(start: float, stop: float, size: int) -> slice:
    """Map rows or columns of a fraction range (at least one)."""
    first = int(round(start * size))
    return slice(first, max(int(round(stop * size)), first + 1))


def pool_tiles(maps: torch.Tensor) -> torch.Tensor:
    """[N, T, C] means of feature maps [N, C, H, W] over every tile of :data:`TILES`."""
    h, w = maps.shape[-2:]
    means = [maps[:, :, _span(t, b, h), _span(left, r, w)].mean(dim=(2, 3)) for t, b, left, r in TILES]
    return torch.stack(means, dim=1)
