"""Edits a generator plausibly leaves on a memorised slice, beyond the paper's 8 conditions (issue 12).

Every edit takes a [0, 1] slice [rows, cols] and returns a [0, 1] slice; ``half`` also needs a
second slice (someone else's) that fills the other half. Parameters are drawn from ``rng``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.transform import resize, rotate

EDITS: tuple[str, ...] = (
    "clean", "rician", "half", "chain", "transpose", "rot90", "rot25", "translate", "zoom_in", "zoom_out", "bias",
)
RICIAN_SIGMA = 0.12  # noise σ of both channels, in units of the slice's [0, 1] range
TRANSLATE_FRACTION = 0.12  # of the field of view, emptied band zero-filled
ZOOM_IN, ZOOM_OUT = 1.2, 0.85
BIAS_AMPLITUDE = 0.5  # the bias field is exp(±0.5) at its extremes


def _zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Scale about the centre, keeping the shape (cropped when enlarged, zero-padded when shrunk)."""
    h, w = x.shape
    big = resize(x, (max(1, round(h * factor)), max(1, round(w * factor))), order=1, anti_aliasing=factor < 1)
    out = np.zeros_like(x)
    bh, bw = big.shape
    if factor >= 1:
        top, left = (bh - h) // 2, (bw - w) // 2
        return big[top : top + h, left : left + w].astype(x.dtype)
    top, left = (h - bh) // 2, (w - bw) // 2
    out[top : top + bh, left : left + bw] = big
    return out


def _translate(x: np.ndarray, shift: tuple[int, int]) -> np.ndarray:
    """Shift by whole pixels (rows, cols); the emptied band is zero."""
    return ndimage.shift(x, shift, order=0, cval=0.0)


def _bias(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative field: a heavily smoothed random field mapped to exp([-A, A])."""
    field = ndimage.gaussian_filter(rng.normal(size=shape), sigma=max(shape) / 4)
    field = (field - field.min()) / max(np.ptp(field), 1e-12) * 2 - 1
    return np.exp(BIAS_AMPLITUDE * field)


def edit_slice(x: np.ndarray, edit: str, rng: np.random.Generator, other: np.ndarray | None = None) -> np.ndarray:
    """Apply ``edit`` to a [0, 1] slice; ``other`` (any shape, resized) fills the uncopied half of ``half``."""
    x = np.asarray(x, dtype=np.float32)
    h, w = x.shape
    if edit == "clean":
        out = x.copy()
    elif edit == "rician":
        out = np.hypot(x + rng.normal(0, RICIAN_SIGMA, x.shape), rng.normal(0, RICIAN_SIGMA, x.shape))
    elif edit == "half":
        if other is None:
            raise ValueError("the half edit needs a second slice")
        out = resize(np.asarray(other, dtype=np.float32), (h, w), order=1, anti_aliasing=True)
        keep = [slice(None), slice(None)]
        axis = int(rng.integers(2))
        keep[axis] = slice(0, x.shape[axis] // 2) if rng.random() < 0.5 else slice(x.shape[axis] // 2, None)
        out[tuple(keep)] = x[tuple(keep)]
    elif edit == "chain":
        out = ndimage.gaussian_filter(x, 1.0) ** rng.uniform(0.7, 1.4)
        out = rotate(out, rng.uniform(-8, 8), order=1, cval=0.0)
        out = _translate(out, (round(rng.uniform(-0.05, 0.05) * h), round(rng.uniform(-0.05, 0.05) * w)))
        out = out + rng.normal(0, 0.03, x.shape)
    elif edit == "transpose":
        out = x.T.copy()
    elif edit == "rot90":
        out = np.rot90(x, int(rng.choice([1, 3]))).copy()
    elif edit == "rot25":
        out = rotate(x, float(rng.choice([-25.0, 25.0])), order=1, cval=0.0)
    elif edit == "translate":
        sign = float(rng.choice([-1.0, 1.0]))
        rows, cols = round(sign * TRANSLATE_FRACTION * h), round(sign * TRANSLATE_FRACTION * w)
        out = _translate(x, (rows, 0) if rng.random() < 0.5 else (0, cols))
    elif edit == "zoom_in":
        out = _zoom(x, ZOOM_IN)
    elif edit == "zoom_out":
        out = _zoom(x, ZOOM_OUT)
    elif edit == "bias":
        out = x * _bias(x.shape, rng)
    else:
        raise ValueError(f"unknown edit {edit!r}; choose from {', '.join(EDITS)}")
    return np.clip(out, 0.0, 1.0).astype(np.float32)
