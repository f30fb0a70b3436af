"""Placeholder, replaced by the off-domain branch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .scoring import NullModel


@dataclass(frozen=True)
class CalibrationCheck:
    holds: bool
    reason: str
    median_z: float
    limit_z: float


def check_calibration(similarity: np.ndarray, null: NullModel) -> CalibrationCheck:
    z = float(np.median(null.z(similarity))) if len(similarity) else 0.0
    return CalibrationCheck(True, "", z, 1.2)
