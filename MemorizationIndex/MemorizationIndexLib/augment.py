"""The 8 benchmark conditions (Deo et al., arXiv 2602.13066) applied to [0, 1]-scaled 2D slices.

``clean``; ``noise01`` / ``noise02``: additive Gaussian noise σ = 0.01 / 0.02, clipped to [0, 1];
``intensity``: multiplication by U[0.9, 1.1]; ``rot3`` / ``rot5``: rotation by U[-3°, 3°] /
U[-5°, 5°] about the slice centre (bilinear interpolation, nearest-edge padding); ``hflip`` /
``vflip``: every slice flipped (hflip reverses columns, vflip reverses rows).
"""

from __future__ import annotations

import numpy as np
from .transforms import flip_slice, rotate

CONDITIONS: tuple[str, ...] = ("clean", "noise01", "noise02", "intensity", "rot3", "rot5", "hflip", "vflip")
NOISE_SIGMA = {"noise01": 0.01, "noise02": 0.02}
ROTATION_DEGREES = {"rot3": 3.0, "rot5": 5.0}
INTENSITY_RANGE = (0.9, 1.1)


def augment_slice(slice01: np.ndarray, condition: str, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Apply ``condition`` to one [0, 1] slice; returns the slice and its random parameter.

    The parameter is the noise σ, the intensity factor or the rotation angle in degrees
    (0 for clean and the flips).
    """
    x = np.asarray(slice01, dtype=np.float32)
    if condition == "clean":
        return x.copy(), 0.0
    if condition in NOISE_SIGMA:
        sigma = NOISE_SIGMA[condition]
        return np.clip(x + rng.normal(0.0, sigma, size=x.shape).astype(np.float32), 0.0, 1.0), sigma
    if condition == "intensity":
        factor = float(rng.uniform(*INTENSITY_RANGE))
        return x * np.float32(factor), factor
    if condition in ROTATION_DEGREES:
        limit = ROTATION_DEGREES[condition]
        angle = float(rng.uniform(-limit, limit))
        return rotate(x, angle), angle
    if condition in ("hflip", "vflip"):
        return np.ascontiguousarray(flip_slice(x, condition)), 0.0
    raise ValueError(f"unknown condition {condition!r}; choose from {', '.join(CONDITIONS)}")
