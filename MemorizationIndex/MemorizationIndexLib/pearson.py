"""Pearson correlation of images' pixels (numpy only: the report uses it without loading torch)."""

from __future__ import annotations

import numpy as np


def pixel_vectors(images: np.ndarray) -> np.ndarray:
    """Centred, unit-norm flattened images [n, h*w] (for Pearson correlation by dot product)."""
    flat = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    flat = flat - flat.mean(axis=1, keepdims=True)
    return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)


def max_pixel_correlation(query_images: np.ndarray, reference_images: np.ndarray) -> np.ndarray:
    """Per query: the largest Pearson correlation with any reference image (same size)."""
    return (pixel_vectors(query_images) @ pixel_vectors(reference_images).T).max(axis=1)


def pixel_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two images of the same shape (0 when either is constant)."""
    return float(pixel_vectors(a[None])[0] @ pixel_vectors(b[None])[0])
