"""Iterative Lucas-Kanade optical flow of many small image pairs at once (the bend of docs/method.md §7.34).

scikit-image's ``optical_flow_ilk`` (Le Besnerais and Champagnat, 2005) solves one pair per call: on a 64×64 grid pair
most of its 4 ms is the overhead of some hundred small array calls. :func:`batched_ilk` runs the same steps on a
stack of pairs: a pyramid of halved images (a Gaussian, then bilinear halving), at each level ``num_warp`` times the
moving image warped by the flow so far (bilinear, edges repeated), its gradients, and per pixel the 2×2 system of
gradient products averaged over a (2 radius + 1)² window (mirrored edges), solved in closed form; the coarse flow goes
to the next level by nearest-neighbour zoom. The linear steps (smoothing, halving, window means, zoom) are the
matrices scikit-image's and SciPy's own calls apply, built once per size by applying those calls to unit vectors,
so the flows equal ``optical_flow_ilk``'s up to float rounding (``Testing/test_optical_flow.py``).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from scipy import ndimage
from skimage.transform import pyramid_reduce

from .separable import separable

MIN_LEVEL = 16  # no pyramid level smaller than this (scikit-image's default); levels halve the side
SINGULAR = 1e-14  # a window's 2×2 system with a determinant smaller than this gives no flow (as scikit-image)


@lru_cache(maxsize=8)
def _halving(side: int) -> np.ndarray:
    """float32 [half, side]: ``pyramid_reduce(downscale=2)`` along one axis (half: its output's side). It is
    separable and keeps constants, so the halving of an image whose row j is ones (the rest zeros) has the
    matrix's column j in each of its columns."""
    columns = []
    for j in range(side):
        rows = np.zeros((side, side))
        rows[j] = 1.0
        columns.append(pyramid_reduce(rows, 2, channel_axis=None)[:, 0])
    return np.stack(columns, axis=1).astype(np.float32)


@lru_cache(maxsize=8)
def _window_means(side: int, radius: int) -> np.ndarray:
    """float32 [side, side]: ``ndimage.uniform_filter1d(size=2 radius + 1, mode='mirror')`` as a matrix."""
    return ndimage.uniform_filter1d(np.eye(side), 2 * radius + 1, axis=0, mode="mirror").astype(np.float32)


@lru_cache(maxsize=8)
def _zoom_rows(side: int, target: int) -> np.ndarray:
    """int [target]: the source row of each row of ``ndimage.zoom(order=0, mode='nearest')`` from ``side`` rows to
    ``target`` (as scikit-image carries a flow to the next pyramid level)."""
    rows = ndimage.zoom(np.arange(side, dtype=np.float64), target / side, order=0, mode="nearest", prefilter=False)
    return rows.astype(np.intp)


def _pyramid(images: np.ndarray) -> list[np.ndarray]:
    """[n, side, side] images and their halvings, coarsest first, none smaller than MIN_LEVEL."""
    levels = [images]
    while levels[-1].shape[-1] > 2 * MIN_LEVEL:
        halve = _halving(levels[-1].shape[-1])
        levels.append(separable(levels[-1], halve, halve))
    return levels[::-1]


def _ilk(reference: np.ndarray, moving: np.ndarray, flow: np.ndarray, radius: int, num_warp: int) -> np.ndarray:
    """One pyramid level: ``num_warp`` iterations of the local 2×2 systems from the flow [n, 2, side, side] so far."""
    side = reference.shape[-1]
    means = _window_means(side, radius)
    ramp = torch.arange(side, dtype=torch.float32)
    to_unit = 2.0 / (side - 1)
    stack = torch.from_numpy(np.ascontiguousarray(moving, dtype=np.float32))[:, None]
    for _ in range(num_warp):
        rows = ramp[:, None] + torch.from_numpy(flow[:, 0])
        cols = ramp[None, :] + torch.from_numpy(flow[:, 1])
        sampling = torch.stack([cols * to_unit - 1.0, rows * to_unit - 1.0], dim=-1)
        with torch.no_grad():
            warped = torch.nn.functional.grid_sample(
                stack, sampling, mode="bilinear", padding_mode="border", align_corners=True
            )[:, 0].numpy()
        grad_rows, grad_cols = np.gradient(warped, axis=(1, 2))
        error = grad_rows * flow[:, 0] + grad_cols * flow[:, 1] + reference - warped
        products = np.stack(
            [grad_rows * grad_rows, grad_rows * grad_cols, grad_cols * grad_cols, grad_rows * error, grad_cols * error]
        )
        a, b, c, e, f = separable(products.reshape(-1, side, side), means, means).reshape(products.shape)
        det = a * c - b * b
        solvable = np.abs(det) >= SINGULAR
        det = np.where(solvable, det, 1.0)
        flow = np.stack(
            [np.where(solvable, (c * e - b * f) / det, 0.0), np.where(solvable, (a * f - b * e) / det, 0.0)], axis=1
        ).astype(np.float32)
    return flow


def batched_ilk(reference: np.ndarray, moving: np.ndarray, radius: int = 7, num_warp: int = 10) -> np.ndarray:
    """float32 [n, 2, side, side] optical flows (row, column) of square ``moving`` images [n, side, side] onto
    ``reference`` images: ``skimage.registration.optical_flow_ilk(reference[i], moving[i], radius=radius,
    num_warp=num_warp)`` for every i, up to float rounding."""
    reference = np.asarray(reference, dtype=np.float32)
    moving = np.asarray(moving, dtype=np.float32)
    if reference.shape != moving.shape or reference.ndim != 3 or reference.shape[1] != reference.shape[2]:
        raise ValueError("batched_ilk takes two stacks of square images of one shape")
    if len(reference) == 0:
        return np.zeros((0, 2, *reference.shape[1:]), dtype=np.float32)
    pairs = list(zip(_pyramid(reference), _pyramid(moving)))
    side = pairs[0][0].shape[-1]
    flow = np.zeros((len(reference), 2, side, side), dtype=np.float32)
    flow = _ilk(*pairs[0], flow, radius, num_warp)
    for fixed, moved in pairs[1:]:
        rows = _zoom_rows(flow.shape[-1], fixed.shape[-1])
        scale = fixed.shape[-1] / flow.shape[-1]
        flow = (flow[:, :, rows][:, :, :, rows] * np.float32(scale)).astype(np.float32)
        flow = _ilk(fixed, moved, flow, radius, num_warp)
    return flow
