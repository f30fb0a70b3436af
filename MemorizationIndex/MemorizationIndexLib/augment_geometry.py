"""Geometric generator-like edits of a [0, 1] slice [h, w]: translations, zooms, anisotropic stretches, large and
90° rotations, transposes and elastic warps (ranges in :mod:`augment`).

Each family is ``family(slice01, rng) -> (image, parameters)``; the image is float32 in [0, 1].
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .transforms import rotate

Params = dict[str, float | str]

SHIFT_FRACTION = (0.05, 0.20)  # translation length, as a fraction of the field of view along the direction
CROP_KEEP = (0.75, 0.95)  # fraction of each side kept by the crop window
ZOOM_IN = (1.1, 1.4)
ZOOM_OUT = (0.6, 0.9)
STRETCH_SCALE = (0.8, 1.25)  # scale along each axis, log-uniform and drawn for each axis on its own
STRETCH_SHEAR = (-0.15, 0.15)  # sideways move of each row, as a share of its distance from the centre
LARGE_ROTATION_DEGREES = (10.0, 30.0)  # |angle|, either sign
ELASTIC_DISPLACEMENT = (0.02, 0.05)  # largest displacement, as a fraction of the shorter side
ELASTIC_GRID = 6  # control points per axis of the random displacement field


def resample_to(image: np.ndarray, shape: tuple[int, int], order: int = 1) -> np.ndarray:
    """[h, w] -> ``shape``, pixel centres aligned (the grid is stretched, not cropped), edge values extended."""
    h, w = image.shape
    rows = (np.arange(shape[0]) + 0.5) * (h / shape[0]) - 0.5
    cols = (np.arange(shape[1]) + 0.5) * (w / shape[1]) - 0.5
    grid = np.meshgrid(rows, cols, indexing="ij")
    return ndimage.map_coordinates(np.asarray(image, np.float32), grid, order=order, mode="nearest").astype(np.float32)


def smooth_field(shape: tuple[int, int], rng: np.random.Generator, grid: int = 4) -> np.ndarray:
    """A smooth random field [h, w] scaled to max |value| = 1: normal values on a ``grid``² lattice, upsampled
    (cubic)."""
    coarse = rng.normal(size=(grid, grid))
    field = resample_to(coarse, shape, order=3)
    return field / max(float(np.abs(field).max()), 1e-12)


def shift_fill(slice01: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Params]:
    """Translate by a whole number of pixels in a random direction; the emptied band is zero."""
    x = np.asarray(slice01, np.float32)
    h, w = x.shape
    fraction, angle = float(rng.uniform(*SHIFT_FRACTION)), float(rng.uniform(0.0, 2 * np.pi))
    dy, dx = int(round(fraction * h * np.sin(angle))), int(round(fraction * w * np.cos(angle)))
    out = np.zeros_like(x)
    target = (slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0)))
    out[target] = x[max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)]
    return out, {"fraction": fraction, "dy": float(dy), "dx": float(dx)}


def shift_crop(slice01: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Params]:
    """Cut a window of a random size and position: the content moves and the slice gets smaller [h', w']."""
    x = np.asarray(slice01, np.float32)
    h, w = x.shape
    keep_h, keep_w = (float(v) for v in rng.uniform(*CROP_KEEP, size=2))
    ch, cw = max(1, int(round(keep_h * h))), max(1, int(round(keep_w * w)))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return x[top : top + ch, left : left + cw].copy(), {
        "keep_h": keep_h,
        "keep_w": keep_w,
        "top": float(top),
        "left": float(left),
    }


def linear_map(slice01: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Map the content about the slice centre by ``matrix`` [2, 2] ((row, col) coordinates: the content at offset
    d from the centre moves to ``matrix @ d``), bilinear, keeping the shape; zero outside."""
    x = np.asarray(slice01, np.float32)
    centre = (np.array(x.shape, dtype=float) - 1) / 2
    inverse = np.linalg.inv(np.asarray(matrix, dtype=float))
    offset = centre - inverse @ centre  # output pixel p samples the input at inverse @ p + offset
    out = ndimage.affine_transform(x, inverse, offset=offset, order=1, mode="constant", cval=0.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def zoom(slice01: np.ndarray, factor: float) -> np.ndarray:
    """Scale the content about the slice centre by ``factor`` (bilinear), keeping the shape; zero outside."""
    return linear_map(slice01, np.eye(2) * factor)


def zoom_in(slice01: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Params]:
    """Enlarge about the centre by U[ZOOM_IN]; what leaves the field of view is lost."""
    factor = float(rng.uniform(*ZOOM_IN))
    return zoom(slice01, factor), {"factor": factor}


def zoom_out(slice01: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Params]:
    """Shrink about the centre by U[ZOOM_OUT]; the border is zero-filled."""
    factor = float(rng.uniform(*ZOOM_OUT))
    return zoom(slice01, factor), {"factor": factor}


def stretch(slice01: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Params]:
    """Scale rows and columns about the centre by factors drawn each on its own (log-uniform in STRETCH_SCALE) and
    shear by U[STRETCH_SHEAR], as a generator trained on slices resized to another aspect ratio would give them
    back; what leaves the field of view is lost, the border is zero-filled."""
    low, high = np.log(STRETCH_SCALE)
    rows, cols = (float(v) for v in np.exp(rng.uniform(low, high, size=2)))
    shear = float(rng.uniform(*STRETCH_SHEAR))
    return linear_map(slice01, np.array([[rows, 0.0], [shear, cols]])), {
        "scale_rows": rows,
        "scale_cols": cols,
        "shear": shear,
    }


def rotate_large(slice01: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Params]:
    """Rotate about the centre by ±U[LARGE_ROTATION_DEGREES] (bilinear, nearest-edge padding as :func:`rotate`)."""
    degrees = float(rng.uniform(*LARGE_ROTATION_DEGREES) * rng.choice([-1.0, 1.0]))
    return np.clip(rotate(slice01, degrees), 0.0, 1.0), {"degrees": degrees}


def rotate90(slice01: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Params]:
    """Rotate by 90°, 180° or 270° counter-clockwise (exact, [h, w] -> [w, h] for odd quarter turns)."""
    quarter_turns = int(rng.integers(1, 4))
    out = np.ascontiguousarray(np.rot90(np.asarray(slice01, np.float32), quarter_turns))
    return out, {"quarter_turns": float(quarter_turns)}


def transpose(slice01: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Params]:
    """Swap the axes about the main diagonal (``x.T``, as an export in the other axis order writes it) or the
    anti-diagonal (``x[::-1, ::-1].T``), with equal probability; [h, w] -> [w, h]."""
    x = np.asarray(slice01, np.float32)
    anti = bool(rng.random() < 0.5)
    out = x[::-1, ::-1].T if anti else x.T
    return np.ascontiguousarray(out), {"anti_diagonal": float(anti)}


def elastic(slice01: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Params]:
    """Warp by a smooth random displacement field whose largest displacement is U[ELASTIC_DISPLACEMENT] of the
    shorter side (bilinear, nearest-edge values outside)."""
    x = np.asarray(slice01, np.float32)
    fraction = float(rng.uniform(*ELASTIC_DISPLACEMENT))
    dy, dx = smooth_field(x.shape, rng, ELASTIC_GRID), smooth_field(x.shape, rng, ELASTIC_GRID)
    scale = fraction * min(x.shape) / max(float(np.hypot(dy, dx).max()), 1e-12)
    rows, cols = np.meshgrid(np.arange(x.shape[0]), np.arange(x.shape[1]), indexing="ij")
    out = ndimage.map_coordinates(x, [rows + scale * dy, cols + scale * dx], order=1, mode="nearest")
    return np.clip(out, 0.0, 1.0).astype(np.float32), {"max_displacement": fraction}
