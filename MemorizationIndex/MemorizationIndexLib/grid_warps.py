"""Moving grid images: linear maps about the grid centre (turns, scales, transposes, stretches), whole-pixel
translations, and the smooth bend of an aligned candidate onto its query by their optical flow (method.md §7.34).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from .agreement import WINDOW_SIGMA
from .centroid_sweep import turned_back
from .optical_flow import batched_ilk
from .separable import gaussian_smoothed
from .slice_grid import GRID

# A pair whose best hypothesis scores at least BEND_GATE is also bent onto its query and scored again
# (``Verification.bent``): a generator's copy can be bent smoothly (an elastic warp, alone or stacked with a zoom, a
# turn or noise), which no similarity map undoes. The bend is the iterative Lucas-Kanade optical flow of the aligned
# candidate (BEND_WARPS warps; scikit-image's ``optical_flow_ilk``, run on all pairs at once: ``optical_flow``),
# averaged over BEND_SIGMA grid pixels (twice the correlation window: only bends smoother than the windows that score
# agreement are undone) and cut to BEND_MAX grid pixels (1/16 of the grid). Bending makes other people's anatomy agree
# more too, so the bent score is tested against the null's own bent scores, beside the score and its near-exact part
# (``verified_null.VerifiedNull``; docs/method.md §7.34).
BEND_GATE = 0.1
BEND_SIGMA = 2.0 * WINDOW_SIGMA
BEND_MAX = 4.0
BEND_WARPS = 3


def turn_maps(angles: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """float64 [n, 2, 2]: the linear maps (column, row coordinates) that turn by ``angles`` degrees and scale by
    ``scales`` (the inverses of ``centroid_sweep.turned_back``)."""
    return np.linalg.inv(turned_back(angles, scales))


def turn_and_scale(linear: np.ndarray) -> tuple[float, float]:
    """The turn (degrees, [0, 360)) and scale of a linear map [2, 2] (column, row coordinates) as an alignment
    reports them: its polar decomposition's rotation, and the square root of its area ratio."""
    angle = math.degrees(math.atan2(linear[1, 0] - linear[0, 1], linear[0, 0] + linear[1, 1])) % 360.0
    return angle, math.sqrt(abs(float(np.linalg.det(linear))))


def grid_transform(linear: np.ndarray, shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """[3, 3] grid-pixel map (column, row, 1) of the linear map ``linear`` [2, 2] about the centre, then
    shifting by ``shift`` (row, col)."""
    centre = (GRID - 1) / 2.0
    turn = np.eye(3)
    turn[:2, :2] = linear
    to_origin = np.array([[1.0, 0.0, -centre], [0.0, 1.0, -centre], [0.0, 0.0, 1.0]])
    back = np.array([[1.0, 0.0, centre + shift[1]], [0.0, 1.0, centre + shift[0]], [0.0, 0.0, 1.0]])
    return back @ turn @ to_origin


def inverse_maps(transposed: np.ndarray, linear: np.ndarray, shifts: np.ndarray | None = None) -> torch.Tensor:
    """float32 [n, 2, 3] ``grid_sample`` maps (output grid to input, in its (column, row) coordinates
    normalised to [-1, 1] about the centre) of transposing (where ``transposed``), then the linear maps
    ``linear`` [n, 2, 2] (turns and scales, :func:`turn_maps`, or any other) about the grid centre, then moving by
    ``shifts`` [n, 2] (row, col; grid pixels, fractions allowed; none when None). The inverse map is affine; a
    transpose swaps its rows."""
    inverse = np.linalg.inv(linear)  # [n, 2, 2]: the linear map undone
    offset = np.zeros((len(inverse), 2))
    if shifts is not None:  # a shift of s pixels is 2 s / (GRID - 1) normalised; undone before the turn
        offset = -np.einsum("nij,nj->ni", inverse, np.asarray(shifts, dtype=np.float64)[:, ::-1] * 2.0 / (GRID - 1))
    theta = np.concatenate([inverse, offset[:, :, None]], axis=2)
    theta[transposed] = theta[transposed][:, ::-1]
    return torch.from_numpy(theta.astype(np.float32))


def warped(images: np.ndarray, theta: torch.Tensor, per: int) -> tuple[np.ndarray, np.ndarray]:
    """Images [n, 2, GRID, GRID] (image and mask) each under its ``per`` maps (``theta`` [n * per, 2, 3],
    :func:`inverse_maps`), bilinear with zeros outside (as skimage's ``warp(order=1)``): the moved images,
    float32 [n * per, GRID, GRID], and masks, bool [n * per, GRID, GRID] (the moved mask above one half)."""
    n = len(images)
    with torch.no_grad():
        # The maps of one image are stacked along the rows, so that image is sampled once. Each coordinate is
        # summed term by term (a batched product with an inner size of 3 costs several times more; same sums).
        columns, rows = (ramp[:, None] for ramp in base_grid())
        maps = theta[:, None]  # [n * per, 1, 2 (x, y), 3]
        sampling = maps[..., 0] * columns + maps[..., 1] * rows + maps[..., 2]  # [n * per, GRID * GRID, 2]
        moved = torch.nn.functional.grid_sample(
            torch.from_numpy(images),
            sampling.reshape(n, per * GRID, GRID, 2),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=True,
        )
    both = moved.numpy().reshape(n, 2, per, GRID, GRID)
    return both[:, 0].reshape(-1, GRID, GRID), both[:, 1].reshape(-1, GRID, GRID) > 0.5


@lru_cache(maxsize=1)
def base_grid() -> tuple[torch.Tensor, torch.Tensor]:
    """[GRID * GRID] column and row of every grid pixel (raster order), normalised to [-1, 1]: with the
    affine maps [n, 2, 3], the sampling grid of ``affine_grid(theta, align_corners=True)``."""
    ramp = torch.linspace(-1.0, 1.0, GRID)
    return ramp[None, :].expand(GRID, GRID).reshape(-1), ramp[:, None].expand(GRID, GRID).reshape(-1)


def shifted(stack: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Each image of a stack [n, GRID, GRID] moved by its integer (row, col) shift [n, 2], zeros (False)
    filling what comes in (``ndimage.shift(order=0)``)."""
    out = np.zeros_like(stack)
    for image, moved, (r, c) in zip(stack, out, shifts):
        target = np.s_[..., max(r, 0) : GRID + min(r, 0), max(c, 0) : GRID + min(c, 0)]
        moved[target] = image[..., max(-r, 0) : GRID - max(r, 0), max(-c, 0) : GRID - max(c, 0)]
    return out


def bent_onto(
    query: np.ndarray, query_masks: np.ndarray, placed: np.ndarray, placed_masks: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Aligned candidates' images and masks [n, GRID, GRID] bent onto their queries' (the same shapes): each one's
    optical flow onto its query, averaged in Gaussian windows of BEND_SIGMA over the two foregrounds' overlap and cut
    to BEND_MAX pixels, applied bilinearly, zeros outside (the bent mask above one half)."""
    flows = batched_ilk(query, placed, num_warp=BEND_WARPS)
    overlap = (query_masks & placed_masks).astype(np.float32)[:, None]
    flows = gaussian_smoothed(flows * overlap, BEND_SIGMA, "constant") / np.maximum(
        gaussian_smoothed(overlap, BEND_SIGMA, "constant"), 1e-3
    )
    flows *= np.minimum(1.0, BEND_MAX / np.maximum(np.hypot(flows[:, 0], flows[:, 1]), 1e-6))[:, None]
    columns, rows = (ramp.reshape(GRID, GRID).numpy() for ramp in base_grid())
    to_unit = 2.0 / (GRID - 1)
    sampling = np.stack([columns + flows[:, 1] * to_unit, rows + flows[:, 0] * to_unit], axis=-1)
    with torch.no_grad():
        moved = torch.nn.functional.grid_sample(
            torch.from_numpy(np.stack([placed, placed_masks], axis=1).astype(np.float32)),
            torch.from_numpy(sampling.astype(np.float32)),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=True,
        ).numpy()
    return moved[:, 0], moved[:, 1] > 0.5
