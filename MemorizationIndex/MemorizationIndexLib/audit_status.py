"""Whether an audit's verification ran and its calibration holds, in the plain words that the
report and the Slicer results panel both use.

Reads summary.json's optional "verification" and "calibration" blocks (:data:`audit_output.FOLDER_FORMAT`);
a folder written before verification has neither, and then nothing is said and nothing is restricted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AuditStatus:
    """The verification and calibration status of an audit (or of one volume or set of it).

    ``verified`` / ``calibrated``: None when summary.json does not say (written before verification).
    """

    alpha: float
    verified: bool | None = None
    verification_reason: str = ""
    k: int | None = None
    verified_threshold: float | None = None
    sharpest_threshold: float | None = None
    reproduced_threshold: float | None = None
    bent_threshold: float | None = None
    min_copy_score: float | None = None
    min_bent_score: float | None = None
    null_n: int | None = None
    calibrated: bool | None = None
    calibration_reason: str = ""
    median_z: float | None = None
    limit_z: float | None = None
    training_subjects: int | None = None
    few_training_subjects: bool = False

    @property
    def global_flags_trusted(self) -> bool:
        """Whether flags may rest on the global score: neither block says otherwise."""
        return self.verified is not False and self.calibrated is not False

    @property
    def can_flag(self) -> bool:
        """Whether any slice can be flagged: a calibrated global score or a verified score."""
        return self.verified is not False or self.calibrated is not False


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def audit_status(summary: Mapping[str, Any], calibration_holds: bool | None = None) -> AuditStatus:
    """The status in a summary.json (as ``read_audit`` checked it); ``calibration_holds`` (a volume's or
    set's entry) replaces the audit-wide "holds" when given."""
    verification = summary.get("verification") or {}
    calibration = summary.get("calibration") or {}
    parts = [_number(band.get("reproduced_threshold")) for band in verification.get("bands") or []]
    bends = [_number(band.get("bent_threshold")) for band in verification.get("bands") or []]
    holds = calibration.get("holds") if calibration else None
    return AuditStatus(
        alpha=float(summary["threshold"]["alpha"]),
        verified=verification.get("used") if verification else None,
        verification_reason=str(verification.get("reason", "")),
        k=verification.get("k"),
        verified_threshold=_number(verification.get("threshold")),
        sharpest_threshold=_number((verification.get("bands") or [{}])[-1].get("threshold")),
        reproduced_threshold=max((part for part in parts if part is not None), default=None),
        bent_threshold=max((bend for bend in bends if bend is not None), default=None),
        min_copy_score=_number(verification.get("min_copy_score")),
        min_bent_score=_number(verification.get("min_bent_score")),
        null_n=verification.get("null_n"),
        calibrated=holds if calibration_holds is None else calibration_holds,
        calibration_reason=str(calibration.get("reason", "")),
        median_z=_number(calibration.get("median_z")),
        limit_z=_number(calibration.get("limit_z")),
        training_subjects=calibration.get("training_subjects"),
        few_training_subjects=bool(calibration.get("few_training_subjects", False)),
    )


def _verification_sentence(status: AuditStatus) -> str:
    if not status.verified:
        reason = status.verification_reason or "no reason was recorded"
        return f"Verification could not run: {reason.rstrip('.')}."
    against = f" its {status.k} best candidate training slices" if status.k else " its best candidate training slices"
    threshold = ""
    if status.verified_threshold is not None:
        null = (
            f" (from {status.null_n} verified slices of people not in training: real slices, as cut and blurred)"
            if status.null_n
            else ""
        )
        threshold = (
            f" A verified score above {status.verified_threshold:.3g} is a copy at \u03b1 = {status.alpha:.2g} "
            f"on its own{null}."
        )
        sharp = status.sharpest_threshold
        if sharp is not None and sharp < status.verified_threshold:
            threshold += (
                f" Each slice is compared with null slices as smooth as itself; the sharpest need only {sharp:.3g}."
            )
        if status.reproduced_threshold is not None:
            threshold += (
                " So is a slice whose region reproduced near-exactly scores above "
                f"{status.reproduced_threshold:.3g} by itself (verified_reproduced)."
            )
        if status.bent_threshold is not None:
            threshold += (
                " So is a slice whose candidate, bent smoothly onto it, scores above "
                f"{status.bent_threshold:.3g} (verified_bent), {_bend_floor(status)}."
            )
    return f"Verification ran: every slice was aligned pixel by pixel with{against}.{threshold}"


def _bend_floor(status: AuditStatus) -> str:
    """The clause on what a bent score needs besides its threshold (summary.json's floors, when it has them)."""
    if status.min_copy_score is None:
        return "if its score before the bend is high enough"
    unbent = f"if its score before the bend is at least {status.min_copy_score:.3g}"
    return (
        unbent if status.min_bent_score is None else f"{unbent} or its bent score at least {status.min_bent_score:.3g}"
    )


def _calibration_sentence(status: AuditStatus) -> str:
    if status.calibrated:
        detail = ""
        if status.median_z is not None and status.limit_z is not None:
            detail = f" (median z {status.median_z:.2f} \u2264 {status.limit_z:.2g})"
        return f"The calibration holds for these inputs{detail}."
    reason = status.calibration_reason or "no reason was recorded"
    return f"The calibration does not hold for these inputs: {reason.rstrip('.')}."


def _few_subjects_sentence(status: AuditStatus) -> str:
    subjects = status.training_subjects
    count = f"only {subjects} training subject{'' if subjects == 1 else 's'}" if subjects else "few training subjects"
    return (
        f"The index's nulls come from held-out splits of {count}: each split leaves a much smaller reference than "
        "the one audited against, so the nulls run low and slices of people in no index are flagged more often than "
        f"\u03b1 = {status.alpha:.2g}. Rebuild the index with more subjects or with --holdout scans never used in "
        "training before drawing conclusions."
    )


def flags_basis(status: AuditStatus) -> str:
    """What the flags rest on, in one sentence ("" when summary.json does not say)."""
    if status.verified is None and status.calibrated is None:
        return ""
    if status.verified and status.calibrated is not False:
        return (
            "Flags combine the verified score with the global score: a slice is flagged when the combined "
            f"p-value is below \u03b1 = {status.alpha:.2g}."
        )
    if status.verified:
        return (
            "Flags rest on the verified score alone (copies verified pixel by pixel); the global scores "
            "(mi, z) only rank the slices."
        )
    if status.calibrated is not False:
        return (
            f"Flags rest on the global score alone (p < \u03b1 = {status.alpha:.2g}), which misses transposed, "
            "turned, heavily edited and partial copies and is not confirmed pixel by pixel."
        )
    return (
        "No slice can be flagged: the global score is not calibrated for these inputs and verification "
        "could not run; the scores below rank the slices but decide nothing."
    )


def status_lines(status: AuditStatus) -> list[tuple[str, bool]]:
    """(sentence, is a warning) for the verification and calibration status and what the flags rest
    on (none for folders written before verification)."""
    lines = []
    if status.verified is not None:
        lines.append((_verification_sentence(status), not status.verified))
    if status.calibrated is not None:
        lines.append((_calibration_sentence(status), not status.calibrated))
    if status.few_training_subjects:
        lines.append((_few_subjects_sentence(status), True))
    basis = flags_basis(status)
    return lines + ([(basis, not status.global_flags_trusted)] if basis else [])


def status_sentences(status: AuditStatus) -> list[str]:
    """The sentences of :func:`status_lines`."""
    return [sentence for sentence, _ in status_lines(status)]


def copy_transform_text(transposed: bool, angle: float, scale: float) -> str:
    """How a training slice maps onto the query, e.g. "transposed, 90°, ×1.00"."""
    turn = f"{angle:.0f}" if abs(angle - round(angle)) < 0.05 else f"{angle:.1f}"
    return f"{'transposed' if transposed else 'not transposed'}, {turn}\u00b0, \u00d7{scale:.2f}"


def box_text(box: tuple[int, int, int, int] | None) -> str:
    """A copy box in words: "rows 2–9, columns 3–11" (inclusive), "none" for None."""
    if box is None:
        return "none"
    row0, col0, row1, col1 = box
    return f"rows {row0}\u2013{row1 - 1}, columns {col0}\u2013{col1 - 1}"
