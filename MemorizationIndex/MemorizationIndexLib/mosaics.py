"""Sample grids: one picture that holds many generated samples as a padded mosaic.

Training loops save their samples as one picture, laid out as torchvision's ``make_grid``/``save_image``
and scikit-image's ``montage`` lay them out: ``rows`` × ``columns`` tiles of one shape, separated and
surrounded by bands of ``padding`` pixels of one value, the tiles filled row by row and the places left
over at the end filled with that value. Audited as one slice, such a picture hides every sample in it (the
encoder sees a dozen shrunken slices, and no training slice looks like that), so a picture with this layout
is read as its tiles.

A picture counts as a mosaic only when every band of the layout is flat (each line's spread and its
distance from the bands' common value within ``FLAT_SHARE`` of the picture's range, which JPEG's ringing
mostly stays under; :func:`find_mosaic` says what is done when it does not), the tiles are at least
``MIN_TILE`` pixels on each side and at most ``MAX_ASPECT`` times longer than wide, there are at least 2
rows and 2 columns of them or a strip of at least ``MIN_STRIP``, and every tile is either blank (under
``BLANK_SHARE`` of it off the bands' value) or holds an image (``IMAGE_SHARE`` or more), at least half of
them and ``MIN_SAMPLES`` the latter. The edge slices of a skull-stripped scan, whose background is as flat
as a band, are ruled out by the last rule: the specks of anatomy left in them are neither blank tiles nor
images. A grid written without padding has no bands and stays one slice.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

MIN_TILE = 16  # pixels, each side of a tile
MAX_PADDING = 16  # pixels, the widest band tried
FLAT_SHARE = 0.05  # of the picture's range: a band line's spread and its offset from the bands' value
MIN_STRIP = 3  # tiles of a one-row (or one-column) strip
MIN_SAMPLES = 3  # tiles that hold an image
MAX_ASPECT = 2.0  # longer over shorter side of a tile
BLANK_SHARE = 0.01  # of a tile off the bands' value: at most this, a blank place
IMAGE_SHARE = 0.10  # of a tile off the bands' value: at least this, an image


@dataclass(frozen=True)
class Mosaic:
    """The layout of a sample grid: ``rows`` × ``columns`` tiles of ``tile_shape`` pixels, bands of
    ``padding`` pixels; ``samples`` tiles in row-major order are read (the blank places after the last
    image are the layout's filler, not samples)."""

    rows: int
    columns: int
    tile_shape: tuple[int, int]
    padding: int
    samples: int

    def describe(self) -> str:
        """One line, e.g. "a 4x8 sample grid of 64x64 tiles, 2-pixel padding, 30 samples"."""
        height, width = self.tile_shape
        return (
            f"a {self.rows}x{self.columns} sample grid of {height}x{width} tiles, {self.padding}-pixel padding, "
            f"{self.samples} samples"
        )


@dataclass(frozen=True)
class _Bands:
    """One axis's layout: ``count`` tiles of ``tile`` pixels between bands of ``padding`` pixels whose
    lines' means lie in [low, high]."""

    count: int
    tile: int
    padding: int
    low: float
    high: float

    @property
    def step(self) -> int:
        """From one tile's start to the next one's."""
        return self.tile + self.padding

    @property
    def extent(self) -> int:
        """The picture's side along this axis."""
        return self.count * self.step + self.padding


def _line_stats(image: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Each line's mean and spread (standard deviation) along ``axis``: rows with ``axis`` 1."""
    return image.mean(axis=axis, dtype=np.float64), image.std(axis=axis, dtype=np.float64)


def _axis_layouts(means: np.ndarray, spreads: np.ndarray, tolerance: float) -> Iterator[_Bands]:
    """Every layout of one axis whose bands are flat lines of one value (within ``tolerance``)."""
    length = len(means)
    flat = spreads <= tolerance
    for padding in range(1, MAX_PADDING + 1):
        for count in range(1, (length - padding) // (MIN_TILE + padding) + 1):
            if (length - padding) % count:
                continue
            tile = (length - padding) // count - padding
            lines = (np.arange(count + 1)[:, None] * (tile + padding) + np.arange(padding)).ravel()
            if not flat[lines].all():
                continue
            low, high = float(means[lines].min()), float(means[lines].max())
            if high - low <= tolerance:
                yield _Bands(count, tile, padding, low, high)


def _tiles(image: np.ndarray, rows: _Bands, columns: _Bands) -> np.ndarray:
    """The tiles [rows × columns, tile height, tile width] in row-major order."""
    body = image[rows.padding : rows.extent, columns.padding : columns.extent]
    tiles = body.reshape(rows.count, rows.step, columns.count, columns.step)[:, : rows.tile, :, : columns.tile]
    return tiles.transpose(0, 2, 1, 3).reshape(rows.count * columns.count, rows.tile, columns.tile)


def _shape_allowed(rows: _Bands, columns: _Bands) -> bool:
    counts_allowed = (rows.count >= 2 and columns.count >= 2) or max(rows.count, columns.count) >= MIN_STRIP
    return counts_allowed and max(rows.tile, columns.tile) <= MAX_ASPECT * min(rows.tile, columns.tile)


def _summed(mask: np.ndarray) -> np.ndarray:
    """The summed-area table [H + 1, W + 1] of a mask: entry (i, j) counts ``mask[:i, :j]``."""
    kind = np.int32 if mask.size < 2**31 else np.int64  # counts up to the pixels: half the memory of int64
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=kind)
    table[1:, 1:] = mask.cumsum(axis=0, dtype=kind).cumsum(axis=1, dtype=kind)
    return table


def _images(summed_off: np.ndarray, rows: _Bands, columns: _Bands) -> np.ndarray | None:
    """Which tiles [n] (row-major) hold an image, or None when one is neither an image nor blank;
    ``summed_off``: the summed-area table of the pixels off the bands' value."""
    top, left = (
        rows.padding + rows.step * np.arange(rows.count),
        columns.padding + columns.step * np.arange(columns.count),
    )
    bottom, right = top + rows.tile, left + columns.tile
    counts = (
        summed_off[np.ix_(bottom, right)]
        - summed_off[np.ix_(top, right)]
        - summed_off[np.ix_(bottom, left)]
        + summed_off[np.ix_(top, left)]
    )
    off = counts.ravel() / float(rows.tile * columns.tile)
    if np.any((off > BLANK_SHARE) & (off < IMAGE_SHARE)):
        return None
    return off >= IMAGE_SHARE


def _preference(layout: tuple[_Bands, _Bands]) -> tuple[int, int, int]:
    """Layouts that fit, best last: the most tiles (a coarser layout fits whenever a finer one does), then
    tiles whose sides hold the higher power of two (a band as flat as the tiles' own background also fits
    one pixel narrower or wider; samples are mostly 64, 128, 256 pixels), then the narrower bands."""
    rows, columns = layout
    twos = min((rows.tile & -rows.tile).bit_length(), (columns.tile & -columns.tile).bit_length())
    return rows.count * columns.count, twos, -rows.padding


def _layout(picture: np.ndarray, tolerance: float) -> Mosaic | None:
    """The preferred layout whose bands are flat within ``tolerance`` and whose tiles pass, or None."""
    border = (picture[0], picture[-1], picture[:, 0], picture[:, -1])  # a band of every layout (cheap)
    means = [float(line.mean()) for line in border]
    if max(float(line.std()) for line in border) > tolerance or max(means) - min(means) > tolerance:
        return None
    row_layouts = list(_axis_layouts(*_line_stats(picture, 1), tolerance))
    column_layouts = list(_axis_layouts(*_line_stats(picture, 0), tolerance))
    pairs = [
        (r, c)
        for r in row_layouts
        for c in column_layouts
        if r.padding == c.padding and _shape_allowed(r, c) and max(r.high, c.high) - min(r.low, c.low) <= tolerance
    ]
    summed_off: dict[int, np.ndarray] = {}  # by the bands' value, in quarters of the tolerance
    for rows, columns in sorted(pairs, key=_preference, reverse=True):
        value = (min(rows.low, columns.low) + max(rows.high, columns.high)) / 2
        key = round(4 * value / tolerance)
        if key not in summed_off:
            summed_off[key] = _summed(np.abs(picture - np.float32(value)) > tolerance)
        holding = _images(summed_off[key], rows, columns)
        if holding is None or holding.sum() < max(MIN_SAMPLES, len(holding) / 2):
            continue
        samples = int(np.flatnonzero(holding)[-1]) + 1
        return Mosaic(rows.count, columns.count, (rows.tile, columns.tile), rows.padding, samples)
    return None


def _refines(finer: Mosaic, coarser: Mosaic) -> bool:
    """Whether ``finer``'s bands include all of ``coarser``'s (same padding, its tiles cut into whole tiles)."""
    steps = [(f + finer.padding, c + coarser.padding) for f, c in zip(finer.tile_shape, coarser.tile_shape)]
    return (
        finer.padding == coarser.padding
        and finer.rows * finer.columns > coarser.rows * coarser.columns
        and all(c % f == 0 for f, c in steps)
    )


def find_mosaic(image: np.ndarray) -> Mosaic | None:
    """The sample-grid layout of a 2D picture [H, W] (grey), or None when it is not one (module docstring).

    A grid found is then sought again with twice the tolerance: a JPEG's ringing can leave an inner band
    just over it, and the coarser layout without that band would put several samples in one tile. The
    looser search only refines a grid already found, so it adds no grid where there was none."""
    picture = np.asarray(image, dtype=np.float32)
    if picture.ndim != 2 or min(picture.shape) < MIN_TILE + 2:
        return None
    span = float(picture.max() - picture.min())
    if not np.isfinite(span) or span <= 0:
        return None
    found = _layout(picture, FLAT_SHARE * span)
    if found is None:
        return None
    finer = _layout(picture, 2 * FLAT_SHARE * span)
    return finer if finer is not None and _refines(finer, found) else found


def sample_grid_warning(volume: str, layout: str) -> str:
    """What to say of a one-slice volume whose slice is a sample grid (``layout``: :meth:`Mosaic.describe`):
    audited as a volume, it is one slice, which hides its samples."""
    return (
        f"{volume} is one picture holding {layout}; as a volume it was audited as one slice, which hides its "
        "samples: give the picture file (PNG/JPEG/TIFF) or its folder to memorization-index audit to score each sample"
    )


def mosaic_samples(image: np.ndarray, mosaic: Mosaic) -> np.ndarray:
    """The samples [mosaic.samples, tile height, tile width] float32 of a picture with this layout."""
    picture = np.asarray(image, dtype=np.float32)
    rows = _Bands(mosaic.rows, mosaic.tile_shape[0], mosaic.padding, 0.0, 0.0)
    columns = _Bands(mosaic.columns, mosaic.tile_shape[1], mosaic.padding, 0.0, 0.0)
    expected = (rows.extent, columns.extent)
    if picture.shape != expected:
        raise ValueError(f"picture of shape {picture.shape} does not have the mosaic's shape {expected}")
    return np.ascontiguousarray(_tiles(picture, rows, columns)[: mosaic.samples])
