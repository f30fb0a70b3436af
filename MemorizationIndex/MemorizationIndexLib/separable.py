"""Separable linear maps of image stacks: a matrix along the rows and one along the columns of every image.

Smoothing, resizing and window means are such maps; applied to a whole stack as one large matrix product per axis
they cost far less than one small product (or one filter call) per image, with the same sums.
"""

from __future__ import annotations

import numpy as np


def separable(stack: np.ndarray, down: np.ndarray, across: np.ndarray) -> np.ndarray:
    """``down @ image @ across.T`` for every image of a stack [n, rows, cols] (``down`` [r, rows], ``across``
    [c, cols]): [n, r, c], as one matrix product per axis."""
    n, rows, cols = stack.shape
    by_rows = down @ stack.transpose(1, 0, 2).reshape(rows, n * cols)
    by_cols = by_rows.reshape(len(down), n, cols).transpose(1, 0, 2).reshape(n * len(down), cols) @ across.T
    return by_cols.reshape(n, len(down), len(across))
