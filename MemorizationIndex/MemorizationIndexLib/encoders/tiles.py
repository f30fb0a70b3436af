"""The tiles of a slice's feature maps, each pooled to one feature vector (the region search's features,
region_search.py; docs/method.md §7.14, §7.20).

Coarse tiles (windows of half the side at quarter steps, and the four halves) are pooled from every block of
the slice as the global features see it, cropped to its foreground. Fine tiles (windows of a quarter of the side
at sixteenth steps, of which a region index holds those at eighth steps) are pooled from the encoder's shallowest
block only, whose features see the least of a window's surroundings, and from the slice in its whole field of view
(``preprocess.framed``): a fine tile can lie inside a copied region of any shape and place (a disc, a strip, a moved
patch) and still match the same window of the source, at the same scale, whatever the rest of the slice makes of the
foreground crop (docs/method.md §7.31, §7.48). The slice in its whole field of view is also kept as a small image
(:data:`PIXEL_KEY`), whose own pixel patches the patch search compares (``patch_search``, docs/method.md §7.52).
"""

from __future__ import annotations

import numpy as np
import torch

Window = tuple[float, float, float, float]  # (top, bottom, left, right) as fractions of the map's height and width


def _windows(side: float, step: float) -> tuple[Window, ...]:
    """Square windows of ``side`` at ``step`` over the unit square, row by row."""
    starts = [i * step for i in range(int(round((1.0 - side) / step)) + 1)]
    return tuple((top, top + side, left, left + side) for top in starts for left in starts)


_HALVES: tuple[Window, ...] = ((0.0, 0.5, 0.0, 1.0), (0.5, 1.0, 0.0, 1.0), (0.0, 1.0, 0.0, 0.5), (0.0, 1.0, 0.5, 1.0))
COARSE_TILES: tuple[Window, ...] = _windows(0.5, 0.25) + _HALVES
FINE_STEP = 0.125  # the indexed fine tiles' step, as a fraction of the side
FINE_TILES: tuple[Window, ...] = _windows(0.25, FINE_STEP)  # the fine tiles a region index holds of a training slice
# A slice's fine tiles are pooled at half that step, FINE_TILES among them: a copied region moved anywhere then has a
# window within a sixteenth of the side of one the index holds of its source (docs/method.md §7.48).
FINE_QUERY_TILES: tuple[Window, ...] = _windows(0.25, FINE_STEP / 2)
INDEXED_FINE = tuple(FINE_QUERY_TILES.index(window) for window in FINE_TILES)  # their places among FINE_QUERY_TILES
_FINE_PREFIX = "fine:"
PIXEL_KEY = "pixels"  # the tile-features key of a slice's small image in its whole field of view (:func:`pixel_tiles`)
PIXEL_GRID = 56  # that image's side in pixels


def fine_key(block: str) -> str:
    """The tile-features key of a block's fine tiles (the coarse tiles' key is the block's name)."""
    return _FINE_PREFIX + block


def is_fine(key: str) -> bool:
    """Whether a tile-features key holds fine tiles (:func:`fine_key`)."""
    return key.startswith(_FINE_PREFIX)


def is_framed(key: str) -> bool:
    """Whether a tile-features key is made from the slice in its whole field of view (fine tiles, the small image)."""
    return is_fine(key) or key == PIXEL_KEY


def pixel_tiles(framed: np.ndarray) -> np.ndarray:
    """float32 [M, 1, PIXEL_GRID²]: slices in their whole field of view, ``framed`` [M, 1, S, S] as the encoder gets
    them (``preprocess.framed``), averaged down to PIXEL_GRID × PIXEL_GRID pixels, row by row."""
    with torch.inference_mode():
        small = torch.nn.functional.adaptive_avg_pool2d(torch.as_tensor(framed, dtype=torch.float32), PIXEL_GRID)
    return small.reshape(len(small), 1, PIXEL_GRID * PIXEL_GRID).numpy()


def block_of(key: str) -> str:
    """The block a tile-features key's tiles are pooled from."""
    return key.removeprefix(_FINE_PREFIX)


def windows_of(key: str) -> tuple[Window, ...]:
    """The tiles a tile-features key holds of a slice (a region index holds :func:`indexed_windows_of` of them)."""
    return FINE_QUERY_TILES if is_fine(key) else COARSE_TILES


def indexed_windows_of(key: str) -> tuple[Window, ...]:
    """The tiles of a tile-features key that a region index holds of a training slice."""
    return FINE_TILES if is_fine(key) else COARSE_TILES


def indexed(key: str, raw: np.ndarray) -> np.ndarray:
    """[..., slices, indexed tiles, C]: the tiles of raw tile features [..., slices, tiles, C] of a key that a region
    index holds (:func:`indexed_windows_of`)."""
    return raw[..., INDEXED_FINE, :] if is_fine(key) else raw


def _span(start: float, stop: float, size: int) -> slice:
    """Map rows or columns of a fraction range (at least one)."""
    first = int(round(start * size))
    return slice(first, max(int(round(stop * size)), first + 1))


def pool_tiles(maps: torch.Tensor, tiles: tuple[Window, ...] = COARSE_TILES) -> torch.Tensor:
    """[N, T, C] means of feature maps [N, C, H, W] over every window of ``tiles``."""
    h, w = maps.shape[-2:]
    means = [maps[:, :, _span(t, b, h), _span(left, r, w)].mean(dim=(2, 3)) for t, b, left, r in tiles]
    return torch.stack(means, dim=1)
