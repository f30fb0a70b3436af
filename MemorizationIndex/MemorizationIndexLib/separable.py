"""Separable linear maps of image stacks: a matrix along the rows and one along the columns of every image.

Smoothing, resizing and window means are such maps; applied to a whole stack as one large matrix product per axis
they cost far less than one small product (or one filter call) per image, with the same sums.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage, sparse


def separable(stack: np.ndarray, down: np.ndarray, across: np.ndarray) -> np.ndarray:
    """``down @ image @ across.T`` for every image of a stack [n, rows, cols] (``down`` [r, rows], ``across``
    [c, cols]): [n, r, c], as one matrix product per axis."""
    n, rows, cols = stack.shape
    by_rows = down @ stack.transpose(1, 0, 2).reshape(rows, n * cols)
    by_cols = by_rows.reshape(len(down), n, cols).transpose(1, 0, 2).reshape(n * len(down), cols) @ across.T
    return by_cols.reshape(n, len(down), len(across))


def _mirrored(index: np.ndarray, size: int) -> np.ndarray:
    """Indices reflected into [0, size) about the edge pixels' centres (SciPy's ``mode="mirror"``)."""
    period = 2 * (size - 1)
    index = np.abs(index) % period
    return np.where(index > size - 1, period - index, index)


@lru_cache(maxsize=1024)
def _resize_matrix(side: int, size: int) -> sparse.csc_array:
    """[size, side] sparse matrix M of skimage's ``resize(order=1, anti_aliasing=True)`` along one
    axis, so that ``resize(square, (size, size))`` is ``M @ square @ M.T``: SciPy's Gaussian
    anti-aliasing (sigma (side / size - 1) / 2, radius round(4 sigma), ``mode="mirror"``) followed by
    linear interpolation at the pixel centres (``zoom(order=1, grid_mode=True, mode="mirror")``)."""
    sigma = max(0.0, (side / size - 1) / 2)
    offsets = np.arange(-gaussian_reach(sigma), gaussian_reach(sigma) + 1)
    kernel = np.exp(-0.5 * offsets**2 / max(sigma, 1e-12) ** 2)
    position = (np.arange(size) + 0.5) * side / size - 0.5
    low = np.floor(position).astype(int)
    rows, cols, weights = [], [], []
    for index, weight in ((low, 1.0 - (position - low)), (low + 1, position - low)):
        rows.append(np.repeat(np.arange(size), len(offsets)))
        cols.append(_mirrored(_mirrored(index, side)[:, None] + offsets[None, :], side).ravel())
        weights.append((weight[:, None] * kernel[None, :] / kernel.sum()).ravel())
    entries = (np.concatenate(weights).astype(np.float32), (np.concatenate(rows), np.concatenate(cols)))
    return sparse.csc_array(entries, shape=(size, side))  # repeated entries are summed


def resized(crop: np.ndarray, side: int, corner: tuple[int, int], size: int) -> np.ndarray:
    """float32 [size, size]: the crop [h, w] placed at ``corner`` (row, col) of a zero square of
    ``side`` pixels, resized as skimage's ``resize(order=1, anti_aliasing=True)`` (the square is
    never built: only the matrix columns of the crop enter)."""
    matrix = _resize_matrix(side, size)
    (top, left), (h, w) = corner, crop.shape
    rows_done = _columns(matrix, top, top + h) @ crop  # [size, w]
    return np.ascontiguousarray((_columns(matrix, left, left + w) @ rows_done.T).T, dtype=np.float32)


def _columns(matrix: sparse.csc_array, start: int, stop: int) -> sparse.csc_array:
    """``matrix[:, start:stop]`` of a CSC matrix, its entries in the same order, without SciPy's
    index checks (a large share of a small product's time)."""
    first, last = matrix.indptr[start], matrix.indptr[stop]
    entries = (matrix.data[first:last], matrix.indices[first:last], matrix.indptr[start : stop + 1] - first)
    return sparse.csc_array(entries, shape=(matrix.shape[0], stop - start))


@lru_cache(maxsize=8)
def _gaussian_matrix(size: int, sigma: float, mode: str) -> np.ndarray:
    """float32 [size, size]: ``ndimage.gaussian_filter1d`` along one axis as a matrix (filtered identity)."""
    return ndimage.gaussian_filter1d(np.eye(size), sigma, axis=0, mode=mode).astype(np.float32)


def gaussian_smoothed(stack: np.ndarray, sigma: float, mode: str = "reflect") -> np.ndarray:
    """``ndimage.gaussian_filter(x, sigma, mode=mode)`` of every [n, m] image of a stack [..., n, m]
    at once (one batched matrix product per axis)."""
    rows, cols = stack.shape[-2:]
    return _gaussian_matrix(rows, sigma, mode) @ stack @ _gaussian_matrix(cols, sigma, mode).T


def gaussian_smoothed_together(stack: np.ndarray, sigma: float, mode: str) -> np.ndarray:
    """:func:`gaussian_smoothed` of a stack [n, rows, cols] as one matrix product per axis (the same sums as
    one product per image; fewer, larger BLAS calls)."""
    _, rows, cols = stack.shape
    return separable(stack, _gaussian_matrix(rows, sigma, mode), _gaussian_matrix(cols, sigma, mode))


def gaussian_reach(sigma: float) -> int:
    """Pixels an ``ndimage.gaussian_filter`` of ``sigma`` reads on either side (its default truncation at 4 sigma)."""
    return int(4.0 * sigma + 0.5)
