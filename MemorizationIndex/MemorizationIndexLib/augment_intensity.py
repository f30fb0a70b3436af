"""Intensity and sharpness generator-like edits of a [0, 1] slice [h, w]: Rician noise, bias field, gamma, blur
and resolution loss (ranges in :mod:`augment`).

Each family is ``family(slice01, rng) -> (image, parameters)``; the image is float32 [h, w] in [0, 1].
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .augment_geometry import Params, resample_to, smooth_field

RICIAN_SIGMA = (0.05, 0.15)  # σ of each of the two Gaussian channels, in units of the [0, 1] range
BIAS_AMPLITUDE = (0.2, 0.6)  # the field is exp(a · g), g smooth in [-1, 1]
BIAS_GRID = 4
GAMMA = (0.5, 2.0)  # log-uniform
BLUR_SIGMA = (1.0, 3.0)  # Gaussian σ in slice pixels
RESOLUTION_FACTOR = (2.0, 4.0)  # down-sampling factor per axis


def rician(slice01: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Params]:
    """Magnitude of the slice plus complex Gaussian noise: |x + n₁ + i·n₂|, n ~ N(0, σ²), σ ~ U[RICIAN_SIGMA]."""
    x = np.asarray(slice01, np.float32)
    sigma = float(rng.uniform(*RICIAN_SIGMA))
    real = x + rng.normal(0.0, sigma, x.shape)
    imaginary = rng.normal(0.0, sigma, x.shape)
    return np.clip(np.hypot(real, imaginary), 0.0, 1.0).astype(np.float32), {"sigma": sigma}


def bias_field(slice01: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Params]:
    """Multiply by a smooth field exp(a · g) (g from a 4×4 lattice, cubic), a ~ U[BIAS_AMPLITUDE]; divided by the
    result's maximum when that exceeds 1 (no clipping)."""
    x = np.asarray(slice01, np.float32)
    amplitude = float(rng.uniform(*BIAS_AMPLITUDE))
    out = x * np.exp(amplitude * smooth_field(x.shape, rng, BIAS_GRID))
    return (out / max(float(out.max()), 1.0)).astype(np.float32), {"amplitude": amplitude}


def gamma(slice01: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Params]:
    """x ** γ with log γ ~ U[log 0.5, log 2]."""
    value = float(np.exp(rng.uniform(np.log(GAMMA[0]), np.log(GAMMA[1]))))
    return np.power(np.clip(np.asarray(slice01, np.float32), 0.0, 1.0), value).astype(np.float32), {"gamma": value}


def blur(slice01: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Params]:
    """Gaussian blur with σ ~ U[BLUR_SIGMA] slice pixels (edges reflected)."""
    sigma = float(rng.uniform(*BLUR_SIGMA))
    return ndimage.gaussian_filter(np.asarray(slice01, np.float32), sigma).astype(np.float32), {"sigma": sigma}


def resolution_loss(slice01: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Params]:
    """Down-sample by f ~ U[RESOLUTION_FACTOR] per axis (Gaussian anti-aliasing σ = (f − 1)/2, bilinear), then
    up-sample back to [h, w] (bilinear)."""
    x = np.asarray(slice01, np.float32)
    factor = float(rng.uniform(*RESOLUTION_FACTOR))
    small_shape = (max(2, int(round(x.shape[0] / factor))), max(2, int(round(x.shape[1] / factor))))
    small = resample_to(ndimage.gaussian_filter(x, (factor - 1) / 2), small_shape)
    return np.clip(resample_to(small, x.shape), 0.0, 1.0), {"factor": factor}
