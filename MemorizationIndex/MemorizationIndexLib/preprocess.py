"""Slice preprocessing: robust min-max scaling, background floor, crop, square padding, resizing and smoothing."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from functools import lru_cache

import numpy as np
import torch

from .order_statistics import percentiles
from .transforms import bilinear_weights


@dataclass(frozen=True)
class PreprocessSettings:
    """How slices become encoder input; stored in the index and checked at audit time.

    low/high_percentile: robust min-max window (percent of the slice's voxels).
    foreground_level: a voxel is foreground above this fraction of the volume's robust maximum.
    min_foreground_fraction: slices with less foreground than this are empty and skipped.
    smoothing_sigma: Gaussian smoothing (in output pixels) applied after resizing; damps noise
        (3.0 by default: measured to make the default encoder robust to additive noise, see
        docs/method.md).
    background_floor: after scaling to [0, 1], values below this are set to 0 and the rest
        rescaled to [0, 1]; removes noise in the dark background, which ImageNet features
        otherwise read as texture (measured in docs/method.md).
    crop_to_foreground: crop to the bounding box of the non-background rows and columns before
        padding to a square, so that a copy rescaled or re-framed by a generator (another
        matrix size, other margins) is framed like its training slice.
    """

    low_percentile: float = 0.5
    high_percentile: float = 99.5
    foreground_level: float = 0.1
    min_foreground_fraction: float = 0.02
    smoothing_sigma: float = 3.0
    min_slice_pixels: int = 16
    background_floor: float = 0.1
    crop_to_foreground: bool = True

    def to_dict(self) -> dict:
        """Plain-dict form for JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> PreprocessSettings:
        """Inverse of :meth:`to_dict`."""
        return cls(**values)


def framed(settings: PreprocessSettings) -> PreprocessSettings:
    """The settings without the crop to the foreground: a slice in its whole field of view, as the region search's
    fine tiles see it. A partial copy keeps its place in the field of view, while the crop's box depends on the
    whole slice, the part someone else's included (docs/method.md §7.31)."""
    return replace(settings, crop_to_foreground=False)


def volume_reference_level(slices: np.ndarray, settings: PreprocessSettings) -> float:
    """Robust maximum of a whole volume (its high percentile), used to find empty slices."""
    finite = slices if np.isfinite(slices).all() else slices[np.isfinite(slices)]
    if finite.size == 0:
        return 0.0
    return percentiles(finite, [settings.high_percentile])[0]


def nonempty_mask(slices: np.ndarray, settings: PreprocessSettings, reference_level: float | None = None) -> np.ndarray:
    """Boolean [n]: slices with enough foreground to be scored (others are background only)."""
    if reference_level is None:
        reference_level = volume_reference_level(slices, settings)
    low = float(np.min(slices)) if slices.size else 0.0
    if reference_level <= low:
        return np.zeros(len(slices), dtype=bool)
    threshold = low + settings.foreground_level * (reference_level - low)
    fraction = (slices > threshold).reshape(len(slices), -1).mean(axis=1)
    too_small = min(slices.shape[1:]) < settings.min_slice_pixels if slices.ndim == 3 else True
    # A constant slice carries no image (it would be embedded as an all-black input): skip it.
    varying = (
        slices.max(axis=(1, 2)) > slices.min(axis=(1, 2)) if slices.ndim == 3 else np.zeros(len(slices), dtype=bool)
    )
    return (fraction >= settings.min_foreground_fraction) & varying & (not too_small)


def robust_window(slice2d: np.ndarray, settings: PreprocessSettings) -> tuple[float, float]:
    """The slice's (low, high) percentiles."""
    low, high = percentiles(slice2d, [settings.low_percentile, settings.high_percentile])
    return low, high


def scale_unit(
    slice2d: np.ndarray, settings: PreprocessSettings, window: tuple[float, float] | None = None
) -> np.ndarray:
    """Robust min-max scale one slice to [0, 1] (a constant slice becomes all zeros); ``window`` is
    the slice's :func:`robust_window` when already known."""
    low, high = window or robust_window(slice2d, settings)
    if not high > low:
        return np.zeros_like(slice2d, dtype=np.float32)
    return np.clip((slice2d - low) / (high - low), 0.0, 1.0).astype(np.float32)


def scaled_foreground(
    slice2d: np.ndarray, settings: PreprocessSettings, window: tuple[float, float] | None = None
) -> np.ndarray:
    """:func:`scale_unit`, then the background floor (values below ``background_floor`` set to 0,
    the rest rescaled to [0, 1]), in one pass over the slice."""
    low, high = window or robust_window(slice2d, settings)
    if not high > low:
        return np.zeros(slice2d.shape, dtype=np.float32)
    floor = max(settings.background_floor, 0.0)
    start, width = low + floor * (high - low), (1.0 - floor) * (high - low)
    out = np.subtract(slice2d, np.float32(start), dtype=np.float32)
    out *= np.float32(1.0 / width)
    return np.clip(out, 0.0, 1.0, out=out)


@lru_cache(maxsize=8)
def smoothing_matrix(size: int, sigma: float) -> torch.Tensor:
    """[size, size] Gaussian smoothing along one axis, edges replicated, as a matrix.

    ``M @ x`` equals a 1D convolution of each column of ``x`` with a normalised Gaussian of
    radius round(3σ) after replicate-padding.
    """
    radius = max(1, int(round(3 * sigma)))
    taps = np.arange(-radius, radius + 1)
    kernel = np.exp(-(taps.astype(np.float64) ** 2) / (2 * sigma**2))
    kernel /= kernel.sum()
    rows = np.repeat(np.arange(size), len(taps))
    cols = np.clip(rows + np.tile(taps, size), 0, size - 1)
    matrix = np.zeros((size, size), dtype=np.float64)
    np.add.at(matrix, (rows, cols), np.tile(kernel, size))
    return torch.from_numpy(matrix.astype(np.float32))


@lru_cache(maxsize=512)
def resampling_matrix(n_in: int, n_out: int, sigma: float) -> torch.Tensor:
    """[n_out, n_in] float32: along one axis, antialiased bilinear resizing
    (``transforms.bilinear_weights``) from n_in to n_out pixels, then Gaussian smoothing of width
    ``sigma`` (none if 0).

    Both steps are linear and act on rows and columns separately, so a square slice ``x``
    becomes ``M @ x @ M.T``: two small matrix products instead of a resize and a smoothing pass.
    """
    resize = torch.from_numpy(bilinear_weights(n_in, n_out))
    if sigma > 0:
        resize = smoothing_matrix(n_out, sigma).double() @ resize
    return resize.float()


def foreground_rows(mask: np.ndarray, min_fraction: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """The rows and columns of a slice whose share of foreground (``mask``) is at least ``min_fraction``;
    all of them when fewer than two rows or columns are."""
    rows = np.flatnonzero(mask.mean(axis=1) >= min_fraction)
    cols = np.flatnonzero(mask.mean(axis=0) >= min_fraction)
    if len(rows) < 2 or len(cols) < 2:
        return np.arange(mask.shape[0]), np.arange(mask.shape[1])
    return rows, cols


def crop_foreground(unit: np.ndarray, min_fraction: float = 0.01) -> np.ndarray:
    """Crop a background-suppressed slice to the rows/columns holding at least ``min_fraction`` foreground
    (:func:`foreground_rows`)."""
    rows, cols = foreground_rows(unit > 0, min_fraction)
    return unit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def to_square(slice2d: np.ndarray) -> np.ndarray:
    """Zero-pad a 2D slice to a centred square (keeps the aspect ratio through resizing)."""
    h, w = slice2d.shape
    size = max(h, w)
    out = np.zeros((size, size), dtype=np.float32)
    top, left = (size - h) // 2, (size - w) // 2
    out[top : top + h, left : left + w] = slice2d
    return out


def prepare_slice(slice2d: np.ndarray, size: int, settings: PreprocessSettings) -> np.ndarray:
    """One raw 2D slice as encoder input: float32 [size, size] in [0, 1].

    Robust scaling, background floor, crop to foreground, centring in a zero-padded square,
    resizing to ``size`` and smoothing; the last three are one product ``A @ crop @ B.T`` with
    the columns of the square's resampling matrix that the crop occupies.
    """
    unit = scaled_foreground(np.asarray(slice2d, dtype=np.float32), settings)
    if settings.crop_to_foreground:
        unit = crop_foreground(unit)
    h, w = unit.shape
    square = max(h, w)
    matrix = resampling_matrix(square, size, float(settings.smoothing_sigma))
    top, left = (square - h) // 2, (square - w) // 2
    rows, cols, crop = (
        matrix[:, top : top + h],
        matrix[:, left : left + w],
        torch.from_numpy(np.ascontiguousarray(unit)),
    )
    # torch's matrix products run on the threads the encoder uses: numpy's BLAS would start a
    # second thread pool that keeps spinning while the encoder runs.
    out = rows @ (crop @ cols.T) if h <= w else (rows @ crop) @ cols.T
    return out.clamp_(0.0, 1.0).numpy()


def prepare_batch(slices: list[np.ndarray] | np.ndarray, size: int, settings: PreprocessSettings) -> np.ndarray:
    """Turn raw 2D slices into encoder input: float32 [N, 1, size, size] in [0, 1] (grayscale)."""
    out = np.empty((len(slices), 1, size, size), dtype=np.float32)
    for i, slice2d in enumerate(slices):
        out[i, 0] = prepare_slice(slice2d, size, settings)
    return out
