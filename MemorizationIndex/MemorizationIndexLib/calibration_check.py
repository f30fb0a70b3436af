"""Does the calibration null hold for an audited input as a whole? (docs/method.md §8)

The p-values of the global score are calibrated on held-out people of the *reference's* domain.
When an audited volume or set comes from another contrast, anatomy or scanner (or is made largely
of copies of training slices), its global similarities are shifted as a whole, and the null's
tail no longer tells copies from novel slices: with a 3-subject EPI reference, brain T1 slices of
people in no index had median z 1.1-1.8 and 6-18% of them were flagged. The check compares the
input's median z with a limit that widens for small inputs; slices of one person are correlated,
so the allowance is measured on real novel people, not taken from a binomial test over slices.

A bulk statistic of the similarity cannot name every mismatch (a spine against a one-person knee
index sits inside its limit). The input's features say more: their whitened energy
(``calibration.feature_energy``) is about 1 for training slices and several times the reference's
held-out people for another contrast or anatomy (docs/method.md §8.1). An input whose median
energy passes the ENERGY_QUANTILE of the held-out people's (recorded by ``build-index``) lies
outside the reference's features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .scoring import NullModel

BASE_Z = 0.6  # between-person spread of a novel volume's median z (measured: at most 0.44 on 8-subject indexes)
SAMPLING_Z = 2.8  # sampling allowance of the median of n correlated slices: SAMPLING_Z / sqrt(n)
MIN_SLICES = 5  # fewer slices than this say nothing about the input as a whole
# Quantile of the null's per-slice feature energy that an input's median energy must not pass (a median of
# novel people sits near the null's median: 1.3-2.3 against 99th percentiles of 2.8-4.7, docs/method.md §8.1).
ENERGY_QUANTILE = 0.99
ABOVE, BELOW, OUTSIDE = "above", "below", "outside"


@dataclass(frozen=True)
class CalibrationCheck:
    """The outcome of :func:`check_calibration` for one audited input.

    holds: the input as a whole looks like the null (or has too few slices to tell).
    reason: "" when it holds, else one sentence naming the mismatch with its numbers.
    median_z: the input's median z against the null; limit_z: the limit it was compared with
    (positive; the input fails when |median_z| > limit_z). direction: "above", "below", "outside"
    (its features lie outside the reference's, whatever its similarities) or "".
    n_slices: the slices checked.
    """

    holds: bool
    reason: str
    median_z: float
    limit_z: float
    direction: str = ""
    n_slices: int = 0

    @property
    def global_flags_valid(self) -> bool:
        """Whether flags from the global score alone may stand: the null holds, or the input is below it.

        Below the null, p-values are conservative: a slice far above the null is still unusual.
        """
        return self.holds or self.direction == BELOW

    def to_dict(self) -> dict:
        """The summary.json form: {holds, reason, median_z, limit_z, direction, n_slices}."""
        return {
            "holds": self.holds,
            "reason": self.reason,
            "median_z": self.median_z,
            "limit_z": self.limit_z,
            "direction": self.direction,
            "n_slices": self.n_slices,
        }


def limit_for(n_slices: int) -> float:
    """The largest |median z| a calibrated input of ``n_slices`` slices reaches: BASE_Z + SAMPLING_Z / sqrt(n)."""
    return BASE_Z + SAMPLING_Z / float(np.sqrt(max(n_slices, 1)))


def check_calibration(
    similarity: np.ndarray,
    null: NullModel,
    energy: np.ndarray | None = None,
    null_energy: np.ndarray | None = None,
) -> CalibrationCheck:
    """Whether ``null`` holds for the global similarities of one audited input (a volume or a set).

    The input fails when its median z lies more than :func:`limit_for` (n) from the null's mean:
    above (another contrast, anatomy or scanner than the reference, or an input made largely of copies:
    global flags are then unreliable and only verified copies should be flagged) or below (the
    reference is of another domain: scores say little, though a flag is still conservative).
    Given the input's feature ``energy`` and the null's (``ReferenceIndex.null_energy``), an input
    that is not above the null but whose median energy passes the null's ENERGY_QUANTILE fails
    "outside": only verified copies are flagged. Inputs of fewer than ``MIN_SLICES`` slices are
    not judged (``holds`` True).
    """
    values = np.asarray(similarity, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    n = int(values.size)
    limit = limit_for(n)
    if n < MIN_SLICES:
        return CalibrationCheck(True, "", float(np.median(null.z(values))) if n else 0.0, limit, "", n)
    median_z = float(np.median(null.z(values)))
    if median_z > limit:
        reason = (
            f"the audited slices as a whole sit far above the null (median z {median_z:.2f} > limit {limit:.2f} "
            f"for {n} slices): another contrast, anatomy or scanner than the reference, or an input made largely of "
            "copies; only verified copies are flagged"
        )
        return CalibrationCheck(False, reason, median_z, limit, ABOVE, n)
    outside = "" if energy is None or null_energy is None else _outside(np.asarray(energy), np.asarray(null_energy))
    if outside:
        return CalibrationCheck(False, outside, median_z, limit, OUTSIDE, n)
    if median_z < -limit:
        reason = (
            f"the audited slices as a whole sit far below the null (median z {median_z:.2f} < -{limit:.2f} "
            f"for {n} slices): another contrast, anatomy or scanner than the reference; the scores are not "
            "comparable with it"
        )
        return CalibrationCheck(False, reason, median_z, limit, BELOW, n)
    return CalibrationCheck(True, "", median_z, limit, "", n)


def _outside(energy: np.ndarray, null_energy: np.ndarray) -> str:
    """The reason an input's features lie outside the reference's ("" when they do not)."""
    energy, null_energy = (np.asarray(x, dtype=np.float64) for x in (energy, null_energy))
    energy, null_energy = energy[np.isfinite(energy)], null_energy[np.isfinite(null_energy)]
    if energy.size < MIN_SLICES or null_energy.size < 2:
        return ""
    median, limit = float(np.median(energy)), float(np.quantile(null_energy, ENERGY_QUANTILE))
    if median <= limit:
        return ""
    return (
        f"the audited slices' features lie outside the reference's (median feature energy {median:.2f} > "
        f"{limit:.2f}, the {ENERGY_QUANTILE:.0%} quantile of the reference's held-out people): another contrast, "
        "anatomy or scanner than the reference; only verified copies are flagged"
    )
