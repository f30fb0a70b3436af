"""Second moments of grid images: a foreground's principal axes and radius of gyration, and the linear map that
carries one image's moments onto another's (a stretched or sheared copy; method.md §7.56, §7.58).
"""

from __future__ import annotations

import numpy as np


def second_moments(weights: np.ndarray) -> np.ndarray:
    """float64 [n, 2, 2]: the covariance of the pixel positions of each image of a stack [n, rows, columns] (a mask,
    or intensities), weighted by its values, in the (column, row) coordinates of :func:`grid_warps.grid_transform`."""
    weight = weights.astype(np.float64)
    total = np.maximum(weight.sum(axis=(1, 2)), 1.0)
    rows, columns = (np.arange(size, dtype=np.float64) for size in weight.shape[1:])
    by_row, by_column = weight.sum(axis=2), weight.sum(axis=1)
    row, column = by_row @ rows / total, by_column @ columns / total
    row_var = by_row @ (rows * rows) / total - row**2
    column_var = by_column @ (columns * columns) / total - column**2
    covariance = np.einsum("nij,i,j->n", weight, rows, columns) / total - row * column
    return np.stack([np.stack([column_var, covariance], axis=-1), np.stack([covariance, row_var], axis=-1)], axis=1)


def principal_axes(moments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per mask's second moments [n, 2, 2] (:func:`second_moments`): the angle of its principal axis in degrees, in
    the (column, row) coordinates of ``grid_warps.grid_transform`` (so a candidate turned by the difference of two
    masks' angles has its axis along the query's), and its mean squared distance from its centroid (radius of gyration
    squared)."""
    column_var, covariance, row_var = moments[:, 0, 0], moments[:, 0, 1], moments[:, 1, 1]
    return np.degrees(0.5 * np.arctan2(2.0 * covariance, column_var - row_var)), row_var + column_var


def moment_maps(query: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """float64 [n, 2, 2]: per pair, the linear map (column, row coordinates) that carries the candidate foreground's
    second moments ``candidate`` [n, 2, 2] onto the query's ``query`` [n, 2, 2] and is nearest the identity: Σq^½ R
    Σc^-½ with the rotation R that maximises its trace (every R gives the query's moments; the trace picks the one
    that neither turns nor reflects). A copy stretched by different factors along the rows and columns, or sheared,
    keeps neither its principal axes' turn nor one scale; its foreground's second moments carry the stretch."""
    query_root, candidate_root = _matrix_roots(query, 0.5), _matrix_roots(candidate, -0.5)
    product = candidate_root @ query_root  # trace(R M) is largest at the angle below
    angle = np.arctan2(product[:, 0, 1] - product[:, 1, 0], product[:, 0, 0] + product[:, 1, 1])
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.array([[cos, -sin], [sin, cos]]).transpose(2, 0, 1)
    return query_root @ rotation @ candidate_root


def _matrix_roots(symmetric: np.ndarray, power: float) -> np.ndarray:
    """float64 [n, 2, 2]: each symmetric matrix [n, 2, 2] to the ``power``, its eigenvalues kept from 1 (grid
    pixels squared) up: an empty or one-pixel-wide mask's moments give no stretch."""
    values, vectors = np.linalg.eigh(symmetric)
    return (vectors * np.maximum(values, 1.0)[:, None, :] ** power) @ vectors.transpose(0, 2, 1)
