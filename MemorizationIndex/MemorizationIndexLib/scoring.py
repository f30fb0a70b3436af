"""Score definitions: aggregation, z, mi, oni, p-value, flag threshold.

They follow Deo et al., arXiv 2602.13066, with the changes in docs/method.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import numpy as np

AGGREGATION_EPS = 1e-6
DEFAULT_ALPHA = 1e-3


def aggregate(block_cosines: np.ndarray) -> np.ndarray:
    """Geometric mean over the last axis of cosines clamped to [0, 1] (negative cosine -> 0).

    s = exp(mean_k log(max(cos_k, 0) + eps)); clamping defines the log for negative cosines.
    """
    clamped = np.clip(np.asarray(block_cosines, dtype=np.float64), 0.0, 1.0)
    return np.exp(np.mean(np.log(clamped + AGGREGATION_EPS), axis=-1)).astype(np.float64)


@dataclass(frozen=True)
class Threshold:
    """The flag threshold in every unit: a slice is flagged when its p-value < alpha."""

    alpha: float
    similarity: float
    z: float
    mi: float
    oni: float

    @property
    def reachable(self) -> bool:
        """Whether the null can give a p-value below alpha (else similarity and z are infinite)."""
        return math.isfinite(self.similarity)

    def to_dict(self) -> dict[str, float]:
        """{alpha, similarity, z, mi, oni} as written to summary.json."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> Threshold:
        """The threshold from its :meth:`to_dict` form, or summary.json's, where a similarity and z out of the null's
        reach (infinite) are null; KeyError, TypeError or ValueError when malformed."""
        return cls(**{f.name: math.inf if values[f.name] is None else float(values[f.name]) for f in fields(cls)})


class NullModel:
    """The calibration null: similarities of real slices that are not copies of the reference."""

    def __init__(self, null_similarity: np.ndarray):
        values = np.asarray(null_similarity, dtype=np.float64)
        if values.size < 2:
            raise ValueError("the calibration null needs at least 2 scores")
        self.values = np.sort(values)
        self.mean = float(values.mean())
        self.std = float(max(values.std(ddof=1), 1e-12))

    def z(self, similarity: np.ndarray) -> np.ndarray:
        """Standardised similarity (s - mean) / std."""
        return z_of(similarity, self.mean, self.std)

    def p_value(self, similarity: np.ndarray) -> np.ndarray:
        """(1 + #null >= s) / (1 + n): the calibrated false-alarm probability."""
        n = len(self.values)
        at_least = n - np.searchsorted(self.values, np.asarray(similarity, dtype=np.float64), side="left")
        return (1.0 + at_least) / (1.0 + n)

    def threshold(self, alpha: float) -> Threshold:
        """Similarity above which p-value < alpha, in similarity, z, mi and oni units."""
        n = len(self.values)
        allowed = int(np.ceil(alpha * (1 + n) - 1)) - 1  # largest count of null >= s keeping p < alpha
        similarity = (
            float("inf") if allowed < 0 else float(self.values[n - 1 - allowed]) if allowed < n else float("-inf")
        )
        z = float(self.z(np.array([similarity]))[0]) if np.isfinite(similarity) else similarity
        return Threshold(alpha=alpha, similarity=similarity, z=z, mi=float(mi_from_z(z)), oni=float(oni_from_z(z)))


def out_of_reach(alpha: float, null_n: int | None) -> str:
    """That ``alpha`` is out of reach of a null of ``null_n`` scores (its smallest p-value, 1 / (n + 1), is not below
    alpha), in words."""
    size = f" ({null_n} scores: the smallest p-value is {1 / (null_n + 1):.2g})" if null_n else ""
    return f"alpha {alpha:g} is out of reach of this index's null{size}"


def unreachable_line(alpha: float, null_n: int | None) -> str:
    """The threshold line when ``alpha`` is out of the null's reach: only copies that verification confirms can be
    flagged."""
    return f"threshold: {out_of_reach(alpha, null_n)}, so only copies confirmed by verification can be flagged"


def threshold_line(threshold: Threshold, null_n: int | None) -> str:
    """The flag threshold in words (:func:`unreachable_line` when alpha is out of the null's reach)."""
    if threshold.reachable:
        return f"threshold: p < {threshold.alpha:g} (mi > {threshold.mi:.6g}, z > {threshold.z:.3f})"
    return unreachable_line(threshold.alpha, null_n)


def z_of(similarity: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Similarity standardised by a null's mean and standard deviation: (s - mean) / std."""
    return (np.asarray(similarity, dtype=np.float64) - mean) / std


def mi_from_z(z: np.ndarray | float) -> np.ndarray:
    """Bounded Memorization Index (1 + tanh z) / 2 in [0, 1]."""
    return (1.0 + np.tanh(z)) / 2.0


def oni_from_z(z: np.ndarray | float) -> np.ndarray:
    """Overfit/Novelty Index -tanh z in [-1, 1] (-1 memorised, +1 novel)."""
    return -np.tanh(z)
