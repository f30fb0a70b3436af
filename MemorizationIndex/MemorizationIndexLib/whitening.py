"""ZCA whitening with covariance shrinkage, in scikit-learn's fit/transform style."""

from __future__ import annotations

import numpy as np
import torch


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def ledoit_wolf_shrinkage(centered: np.ndarray, covariance: np.ndarray) -> float:
    """Ledoit–Wolf (2004) optimal shrinkage of a sample covariance towards a scaled identity."""
    n, p = centered.shape
    mu = np.trace(covariance) / p
    delta = np.sum((covariance - mu * np.eye(p)) ** 2)
    if delta <= 0:
        return 1.0
    # (1/n^2) sum_k ||x_k x_k^T - S||_F^2 = (sum_k ||x_k||^4 - n ||S||_F^2) / n^2
    beta = (np.sum(np.sum(centered**2, axis=1) ** 2) - n * np.sum(covariance**2)) / n**2
    return float(np.clip(beta / delta, 0.0, 1.0))


class ShrinkageWhitener:
    """ZCA whitener W = (Σ + eps·I)^(-1/2) of a shrunk covariance Σ, applied as (x - μ) W.

    shrinkage: ``"ledoit-wolf"`` (default, well-conditioned with fewer samples than dimensions)
    or a fixed value in [0, 1]; ``0`` with ``eps=1e-6`` is the paper's raw ZCA.
    max_fit_samples: fit on a seeded random subset when there are more rows than this.
    """

    def __init__(
        self, shrinkage: str | float = "ledoit-wolf", eps: float = 1e-6, max_fit_samples: int = 200_000, seed: int = 0
    ):
        self.shrinkage = shrinkage
        self.eps = eps
        self.max_fit_samples = max_fit_samples
        self.seed = seed

    def fit(self, x: np.ndarray) -> ShrinkageWhitener:
        """Estimate mean and whitening matrix from rows of ``x`` [n, d]."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError("whitening needs at least 2 feature rows")
        if len(x) > self.max_fit_samples:
            rows = np.random.default_rng(self.seed).choice(len(x), self.max_fit_samples, replace=False)
            x = x[np.sort(rows)]
        self.mean_ = x.mean(axis=0)
        centered = x - self.mean_
        covariance = centered.T @ centered / len(x)
        if self.shrinkage == "ledoit-wolf":
            self.shrinkage_ = ledoit_wolf_shrinkage(centered, covariance)
        else:
            self.shrinkage_ = float(self.shrinkage)
        target = np.trace(covariance) / covariance.shape[0]
        shrunk = (1 - self.shrinkage_) * covariance + self.shrinkage_ * target * np.eye(covariance.shape[0])
        eigenvalues, eigenvectors = np.linalg.eigh(shrunk)
        inverse_sqrt = 1.0 / np.sqrt(np.maximum(eigenvalues, 0.0) + self.eps)
        self.whitening_matrix_ = ((eigenvectors * inverse_sqrt) @ eigenvectors.T).astype(np.float32)
        self.mean_ = self.mean_.astype(np.float32)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Whiten and L2-normalise rows of ``x``."""
        centered = torch.from_numpy(np.asarray(x, dtype=np.float32) - self.mean_)
        # torch's product runs on the threads the encoder uses; numpy's BLAS threads would keep
        # spinning afterwards and slow the next FAISS search or forward pass (docs/performance.md).
        return l2_normalize((centered @ torch.from_numpy(self.whitening_matrix_)).numpy())

    def energy(self, x: np.ndarray) -> np.ndarray:
        """[n] mean squared whitened coordinate of each row of ``x`` (before the L2 normalisation): about
        1 for rows like the fitted ones, larger for rows unlike them (docs/method.md §8.1)."""
        centered = torch.from_numpy(np.asarray(x, dtype=np.float32) - self.mean_)
        whitened = centered @ torch.from_numpy(self.whitening_matrix_)
        return (whitened * whitened).mean(dim=1).numpy().astype(np.float64)

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        """:meth:`fit` then :meth:`transform`."""
        return self.fit(x).transform(x)

    def state(self) -> dict[str, np.ndarray]:
        """Fitted parameters as arrays (for saving)."""
        return {
            "mean": self.mean_,
            "whitening_matrix": self.whitening_matrix_,
            "shrinkage": np.float64(self.shrinkage_),
            "eps": np.float64(self.eps),
        }

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> ShrinkageWhitener:
        """Rebuild a fitted whitener from :meth:`state`."""
        whitener = cls(shrinkage=float(state["shrinkage"]), eps=float(state["eps"]))
        whitener.shrinkage_ = float(state["shrinkage"])
        whitener.mean_ = np.asarray(state["mean"], dtype=np.float32)
        whitener.whitening_matrix_ = np.asarray(state["whitening_matrix"], dtype=np.float32)
        return whitener
