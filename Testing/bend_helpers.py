"""A smooth bend for copy tests: a slice displaced by a sinusoidal field, then turned."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from MemorizationIndexLib.transforms import rotate


def bent_copy(source: np.ndarray, wavelength: float, amplitude: float, degrees: float) -> np.ndarray:
    """The slice bent by a sinusoidal displacement field (wavelength and largest displacement as fractions of the
    side), then turned."""
    h, w = source.shape
    rows, cols = np.mgrid[:h, :w].astype(np.float64)
    shift = amplitude * min(h, w)
    bent = ndimage.map_coordinates(
        source,
        [
            rows + shift * np.sin(2 * np.pi * cols / (wavelength * w)),
            cols + shift * np.cos(2 * np.pi * rows / (wavelength * h)),
        ],
        order=1,
        mode="constant",
    )
    return rotate(bent, degrees).astype(np.float32)
