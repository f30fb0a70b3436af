"""The report's section for sets of 2D images: one summary row per set, flagged fraction and mean
mi per set in the order given (the checkpoint comparison), and each set's mi over the null.

A set's rows in slices.csv are contiguous; summary.json's ``sets`` entries give them as
``"rows": [first, stop)`` (data rows, 0-based), so the report needs no per-file list.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from .errors import UserError
from .report_plots import SetPoint, set_histograms_svg, sets_trend_svg

MAX_SET_ROWS = 50  # rows of the sets table
MAX_SET_HISTOGRAMS = 12  # small histograms drawn; the rest are said to be left out


class SetRow(Protocol):
    """What the section reads of a slices.csv row."""

    mi: float
    flagged: bool


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def set_groups(summary: dict, rows: Sequence[SetRow]) -> list[tuple[dict, Sequence[SetRow]]]:
    """(summary.json set entry, its rows of slices.csv) for every set, in the order audited."""
    groups = []
    for entry in summary.get("sets") or []:
        try:
            first, stop = (int(v) for v in entry["rows"])
            name = str(entry["set"])
        except (KeyError, TypeError, ValueError):
            raise UserError(
                'summary.json has a corrupt "sets" entry (it needs "set" and "rows": [first, stop])'
            ) from None
        if not 0 <= first <= stop <= len(rows):
            raise UserError(
                f"summary.json: set {name} claims rows {first}..{stop} of slices.csv, which has {len(rows)} rows"
            )
        groups.append((entry, rows[first:stop]))
    return groups


def set_row_mask(summary: dict, n_rows: int) -> np.ndarray:
    """bool [n_rows]: the slices.csv rows that belong to a set (the rest are volumes' slices)."""
    mask = np.zeros(n_rows, dtype=bool)
    for entry in summary.get("sets") or []:
        first, stop = (int(v) for v in entry["rows"])
        mask[first:stop] = True
    return mask


def calibration_cell(entry: Mapping[str, Any]) -> str:
    """A volume's or set's "calibration_holds" as a table cell (empty when not recorded)."""
    holds = entry.get("calibration_holds")
    return f"<td>{'' if holds is None else 'holds' if holds else '<b>does not hold</b>'}</td>"


def _table(groups: list[tuple[dict, Sequence[SetRow]]], alpha: float) -> str:
    with_calibration = any("calibration_holds" in entry for entry, _ in groups)
    head = (
        "<tr><th>set</th><th>files</th><th>slices scored</th><th>skipped (empty)</th><th>flagged</th>"
        "<th>expected by chance</th><th>flagged %</th><th>mean mi</th><th>max mi</th>"
        + ("<th>calibration</th>" if with_calibration else "")
        + "</tr>"
    )
    body = []
    for entry, srows in groups[:MAX_SET_ROWS]:
        cell = calibration_cell(entry) if with_calibration else ""
        n, k = len(srows), sum(r.flagged for r in srows)
        mean = f"{np.mean([r.mi for r in srows]):.4g}" if n else "\u2013"
        top = f"{max(r.mi for r in srows):.4g}" if n else "\u2013"
        body.append(
            f'<tr><td class="path">{_e(entry["set"])}</td><td class="num">{_e(entry.get("files", ""))}</td>'
            f'<td class="num">{n}</td><td class="num">{_e(entry.get("slices_skipped_empty", ""))}</td>'
            f'<td class="num">{k}</td><td class="num">{alpha * n:.3g}</td>'
            f'<td class="num">{100.0 * k / n if n else 0.0:.1f}</td><td class="num">{mean}</td>'
            f'<td class="num">{top}</td>{cell}</tr>'
        )
    note = ""
    if len(groups) > MAX_SET_ROWS:
        note = (
            f'<p class="note">{len(groups) - MAX_SET_ROWS} more sets are not listed here; summary.json has '
            "all of them.</p>"
        )
    return f'<table class="vols sets">{head}{"".join(body)}</table>{note}'


def sets_section_html(groups: list[tuple[dict, Sequence[SetRow]]], null_mi: np.ndarray, threshold: dict) -> str:
    """The sets section: trend plot, table, per-set histograms (``threshold``: summary.json's)."""
    alpha, reachable = float(threshold["alpha"]), np.isfinite(float(threshold["z"]))
    points = [
        SetPoint(
            str(entry["set"]),
            len(srows),
            sum(r.flagged for r in srows),
            float(np.mean([r.mi for r in srows])) if len(srows) else float("nan"),
        )
        for entry, srows in groups
    ]
    shown = groups[:MAX_SET_HISTOGRAMS]
    histograms = set_histograms_svg(
        [(str(e["set"]), np.array([r.mi for r in s]), sum(r.flagged for r in s)) for e, s in shown],
        null_mi,
        float(threshold["mi"]) if reachable else None,
    )
    left_out = ""
    if len(groups) > len(shown):
        left_out = f" Showing {len(shown)} of {len(groups)} sets; the table and summary.json have all of them."
    return (
        '<section class="sets" id="sets"><h2>Sets</h2>'
        + sets_trend_svg(points, alpha)
        + '<p class="note">Each set (a folder, glob or array file; e.g. the samples of one training checkpoint) '
        "in the order given: the share of its slices flagged as copies, and its mean mi. A rise from set to set "
        "is where memorisation starts.</p>"
        + _table(groups, alpha)
        + "<h3>mi of each set over the null</h3>"
        + histograms
        + f'<p class="note">Grey: real slices scored against the training set (the null); blue outline: the set; '
        f"red dashed line: the threshold.{_e(left_out)}</p></section>"
    )
