"""The results panel's text for one audited volume (HTML for a Qt label)."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from .audit_status import status_lines
from .mosaics import sample_grid_warning
from .scoring import unreachable_line

MAX_LISTED_SLICES = 30


def index_null(index_dir: str | Path | None) -> dict | None:
    """The null description (``type``, ``n``, ...) in an index's config.json; None when unreadable."""
    if not index_dir:
        return None
    try:
        return json.loads((Path(index_dir) / "config.json").read_text(encoding="utf-8"))["null"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _threshold_text(t: dict, null: dict | None) -> str:
    """The flag threshold ({alpha, mi, z, oni}), or that alpha is out of the null's reach (z infinite, as its
    similarity is: :func:`scoring.unreachable_line`)."""
    if math.isfinite(t["z"]):
        return f"threshold: p &lt; {t['alpha']:g} (MI &gt; {t['mi']:.4f}, z &gt; {t['z']:.2f}, ONI &lt; {t['oni']:.3f})"
    size = null.get("n") if null else None
    return f"<b>{html.escape(unreachable_line(t['alpha'], size if isinstance(size, int) else None))}</b>"


def summary_html(summary: dict, null: dict | None = None) -> str:
    """``summary`` as ``MrmlAuditResult.summary()`` returns it; ``null`` as :func:`index_null` does.

    The verification and calibration status (``summary["status"]``, when known) is said in the
    report's words, warnings in bold."""
    t = summary["threshold"]
    slices = summary["flagged_slices"]
    listed = ", ".join(str(k) for k in slices[:MAX_LISTED_SLICES]) + (" ..." if len(slices) > MAX_LISTED_SLICES else "")
    null_text = f"<br>null: {html.escape(str(null.get('type')))} (n={null.get('n')})" if null else ""
    status = summary.get("status")
    lines = status_lines(status) if status is not None else []
    if summary.get("sample_grid"):
        lines.append((sample_grid_warning(str(summary["volume"]), summary["sample_grid"]), True))
    status_text = "".join(f"<br><b>{html.escape(t)}</b>" if warn else f"<br>{html.escape(t)}" for t, warn in lines)
    return (
        f"<b>{html.escape(str(summary['volume']))}</b> ({summary['axis']}): {summary['slices_scored']} of "
        f"{summary['slices_total']} slices scored, {summary['slices_skipped_empty']} empty skipped<br>"
        f"volume MI {summary['mean_mi']:.3f}, ONI {summary['mean_oni']:.3f}<br>"
        f"<b>flagged: {summary['flagged']} slices ({100 * summary['flagged_fraction']:.1f}%)</b>"
        f"{': ' + listed if listed else ''}<br>"
        f"{_threshold_text(t, null)}{null_text}{status_text}"
    )
