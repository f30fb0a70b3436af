"""Fourier tools of the verification: batched real FFTs, phase correlation's whole-pixel peaks, and the
log-polar magnitude spectra that give a pair's rotation and scale (Fourier–Mellin).

A rotation of an image shifts its log-polar map along the rows and a scaling along the columns, while a translation
leaves it unchanged; phase correlation of two maps therefore gives the turn and scale between two slices, and phase
correlation of the images, once turned and scaled, their translation.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from scipy import fft, sparse

from .separable import gaussian_smoothed_together

SPECTRUM_GRID = 128  # side of the grid whose spectrum gives rotation and scale
POLAR_ROWS = 360  # one row per degree; the magnitude spectrum repeats after 180 rows
_POLAR_INNER = SPECTRUM_GRID // 8  # log-polar columns of the lowest frequencies, left out
_BAND = (0.5, 6.0)  # difference-of-Gaussians band-pass of the spectrum grid (sigmas, pixels)


@lru_cache(maxsize=1)
def _spectrum_tools() -> tuple[np.ndarray, sparse.csr_array]:
    """Hann window [SPECTRUM_GRID, SPECTRUM_GRID] and the log-polar sampling of the centred
    spectrum as a sparse matrix [180 * columns, half spectrum]: one row per degree, radii growing
    geometrically from 1 to SPECTRUM_GRID / 2 over SPECTRUM_GRID columns, bilinear (as
    ``ndimage.map_coordinates(order=1)``). The half spectrum is ``fft.rfftn(x, axes=(1, 0))``
    [SPECTRUM_GRID // 2 + 1, SPECTRUM_GRID]: the angles lie in [0°, 180°), i.e. in its rows."""
    centre = SPECTRUM_GRID // 2
    angles = np.deg2rad(np.arange(POLAR_ROWS // 2) * 360.0 / POLAR_ROWS)[:, None]
    radii = np.exp(np.arange(_POLAR_INNER, SPECTRUM_GRID) * math.log(centre) / SPECTRUM_GRID)[None, :]
    row, col = (centre + radii * np.sin(angles)).ravel(), (centre + radii * np.cos(angles)).ravel()
    row0, col0 = np.floor(row), np.floor(col)
    weights, columns = [], []
    for dr, dc in ((0, 0), (0, 1), (1, 0), (1, 1)):
        weights.append((1 - abs(row - row0 - dr)) * (1 - abs(col - col0 - dc)))
        frequency = (row0 + dr - centre).astype(int), (col0 + dc - centre).astype(int) % SPECTRUM_GRID
        columns.append(frequency[0] * SPECTRUM_GRID + frequency[1])
    points = np.tile(np.arange(row.size), 4)
    shape = (row.size, (centre + 1) * SPECTRUM_GRID)
    sampling = sparse.csr_array((np.concatenate(weights), (points, np.concatenate(columns))), shape=shape)
    # Imported here, on the first verification: skimage.filters loads scipy.signal (~0.7 s), which a process
    # that never verifies (an audit without reference pixels, the report) need not pay (docs/performance.md).
    from skimage.filters import window

    return window("hann", (SPECTRUM_GRID, SPECTRUM_GRID)).astype(np.float32), sampling


@lru_cache(maxsize=1)
def transposed_rows() -> np.ndarray:
    """Row order that turns a log-polar map of a slice into that of the transposed slice: the
    transposed spectrum at angle a is the spectrum at 90° − a (modulo 180°, its period)."""
    rows = POLAR_ROWS // 2
    return (POLAR_ROWS // 4 - np.arange(rows)) % rows


def log_polar_maps(images: np.ndarray) -> np.ndarray:
    """Log-polar maps [n, 180, columns] (see :func:`_spectrum_tools`) of the log-magnitude spectra of
    band-passed (``difference_of_gaussians(image, 0.5, 6.0)``), Hann-windowed images [n, SPECTRUM_GRID,
    SPECTRUM_GRID]: rotating an image shifts its map along rows, scaling along columns, translating
    leaves it unchanged."""
    hann, sampling = _spectrum_tools()
    low, high = (gaussian_smoothed_together(images, sigma, "nearest") for sigma in _BAND)
    spectra = np.log1p(np.abs(fft.rfftn((low - high) * hann, axes=(2, 1))))
    return (sampling @ spectra.reshape(len(images), -1).T).T.reshape(len(images), POLAR_ROWS // 2, -1)


def rfft2(images: np.ndarray) -> np.ndarray:
    """Half spectra of a stack of real images [..., n, m] (torch's FFT: MKL on CPU, faster than
    NumPy's and SciPy's pocketfft at these sizes)."""
    return torch.fft.rfft2(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))).numpy()


def irfft2(spectra: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Real images [..., *shape] from half spectra (the inverse of :func:`rfft2`)."""
    return torch.fft.irfft2(torch.from_numpy(spectra), s=shape).numpy()


def whitened(spectrum: np.ndarray) -> np.ndarray:
    """A spectrum divided by its magnitude (phase correlation's normalisation, applied to each factor
    of the cross-power spectrum instead of their product: the same up to rounding and saves a pass)."""
    return spectrum / np.maximum(np.abs(spectrum), 100 * np.finfo(np.float32).eps)


def phase_peaks(cross: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """int [..., 2] (row, col) shifts registering each moving image onto its reference, given their
    cross-power spectra (the reference's whitened half spectrum times the moving one's conjugate,
    ``fft.rfft2``): the peak of the phase-normalised cross-correlation, wrapped to (-size / 2, size / 2],
    as skimage's ``phase_cross_correlation`` finds it."""
    correlation = np.abs(irfft2(cross, shape))
    flat = correlation.reshape(*correlation.shape[:-2], -1).argmax(axis=-1)
    shifts = np.stack(np.unravel_index(flat, shape), axis=-1)
    size = np.asarray(shape)
    return np.where(shifts > size // 2, shifts - size, shifts)
