"""The report's plots as inline SVG written as text (no plotting library on the report path).

``histogram_svg``: audited mi and z over the null's; ``strips_svg``: mi against slice index, one
strip per volume. Every string from the user is escaped; the SVG has no links, scripts or
external references.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .scoring import mi_from_z, z_of


class ScoredSlice(Protocol):
    """What the plots read of an audited slice (a row of slices.csv)."""

    slice: int
    z: float
    mi: float
    flagged: bool


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def short_name(path: str, keep: int = 60) -> str:
    """The file name of a path, its end only when longer than ``keep`` characters."""
    name = os.path.basename(path.rstrip("/\\")) or path
    return name if len(name) <= keep else "\u2026" + name[-keep:]


NULL_COLOR, AUDITED_COLOR, THRESHOLD_COLOR, INK = "#9aa5b1", "#1f4e8c", "#c0392b", "#333"
CHAR_WIDTH = 0.6  # rough width of a character in font-size units, to lay out legends and labels
HIST_SIZE = (1100, 300)  # the histogram figure (two panels side by side), SVG pixels
STRIP_WIDTH, STRIP_HEIGHT = 1100, 112  # the strips figure: one strip per volume
MI_BINS = np.linspace(0.0, 1.0, 51)  # histogram bin edges in mi units
Z_EDGES = 61  # as many bin edges in z units, from the smallest to the largest z shown


def _n(value: float) -> str:
    """An SVG coordinate, to 0.1 px."""
    return f"{round(float(value), 1):g}"


@dataclass(frozen=True)
class _Frame:
    """A plot area (SVG pixels) and the data ranges it shows; ``sqrt``: y on a square-root scale."""

    left: float
    top: float
    width: float
    height: float
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    sqrt: bool = False

    @property
    def bottom(self) -> float:
        return self.top + self.height

    def x(self, value: float | np.ndarray) -> float | np.ndarray:
        """Pixel x of data x (a number or an array)."""
        lo, hi = self.x_range
        return self.left + (value - lo) / (hi - lo) * self.width

    def y(self, value: float | np.ndarray) -> float | np.ndarray:
        """Pixel y of data y (a number or an array)."""
        scale = np.sqrt if self.sqrt else np.asarray
        lo, hi = scale(self.y_range[0]), scale(self.y_range[1])
        return self.bottom - (scale(value) - lo) / (hi - lo) * self.height


def _svg(width: float, height: float, cls: str, label: str, body: Sequence[str]) -> str:
    """An inline SVG element with a text alternative (aria-label and <title>)."""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="{cls}" role="img" aria-label="{_e(label)}" '
        f'width="{_n(width)}" height="{_n(height)}" viewBox="0 0 {_n(width)} {_n(height)}">'
        f"<title>{_e(label)}</title>{''.join(body)}</svg>"
    )


def _text(x: float, y: float, text: str, *, size: float = 11, anchor: str = "start", rotate: bool = False) -> str:
    turn = f' transform="rotate(-90 {_n(x)} {_n(y)})"' if rotate else ""
    align = f' text-anchor="{anchor}"' if anchor != "start" else ""
    return f'<text x="{_n(x)}" y="{_n(y)}" font-size="{size:g}"{align}{turn}>{_e(text)}</text>'


def _line(x1: float, y1: float, x2: float, y2: float, color: str, width: float, dashed: bool = False) -> str:
    dash = ' stroke-dasharray="6 4"' if dashed else ""
    return (
        f'<line x1="{_n(x1)}" y1="{_n(y1)}" x2="{_n(x2)}" y2="{_n(y2)}" stroke="{color}" '
        f'stroke-width="{width:g}"{dash}/>'
    )


def _tick_text(value: float, step: float) -> str:
    """A tick label with as many decimals as the tick step needs (and a real minus sign)."""
    decimals = next((d for d in range(10) if abs(round(step, d) - step) <= 1e-9 * step), 10)
    text = f"{value:.{decimals}f}"
    return text.lstrip("-") if float(text) == 0 else text.replace("-", "\u2212")


def _linear_ticks(lo: float, hi: float, target: int = 6, integer: bool = False) -> list[tuple[float, str]]:
    """About ``target`` round (1, 2, 2.5 or 5 x 10^k) ticks between lo and hi, as (value, label)."""
    raw = (hi - lo) / target
    magnitude = 10.0 ** math.floor(math.log10(raw))
    multiples = (1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)
    step = next(m * magnitude for m in multiples if m * magnitude >= raw * (1 - 1e-9))
    if integer:
        step = max(1.0, round(step))
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    return [(k * step, _tick_text(k * step, step)) for k in range(first, last + 1)]


def _sqrt_ticks(frame: _Frame, min_gap: float = 18.0) -> list[tuple[float, str]]:
    """Ticks 0 and 1, 2, 5 x 10^k on a square-root y axis, at least ``min_gap`` px apart (the
    largest values are placed first)."""
    candidates = sorted((m * 10.0**e for e in range(-4, 9) for m in (1, 2, 5)), reverse=True)
    kept = [0.0]
    for value in (c for c in candidates if c <= frame.y_range[1]):
        if all(abs(frame.y(value) - frame.y(k)) >= min_gap for k in kept):
            kept.append(value)
    return [(v, f"{v:g}") for v in kept]


def _axes(
    frame: _Frame, xticks: Sequence[tuple[float, str]], yticks: Sequence[tuple[float, str]], xlabel: str, ylabel: str
) -> str:
    """Frame, outward tick marks, tick labels and axis titles (the x title only when given)."""
    marks = "".join(f"M{_n(frame.x(v))} {_n(frame.bottom)}v4" for v, _ in xticks)
    marks += "".join(f"M{_n(frame.left)} {_n(frame.y(v))}h-4" for v, _ in yticks)
    box = (
        f'<rect x="{_n(frame.left)}" y="{_n(frame.top)}" width="{_n(frame.width)}" '
        f'height="{_n(frame.height)}" fill="none" stroke="{INK}" stroke-width="0.8"/>'
    )
    parts = [box, f'<path d="{marks}" stroke="{INK}" stroke-width="0.8"/>' if marks else ""]
    parts += [_text(frame.x(v), frame.bottom + 15, label, size=10, anchor="middle") for v, label in xticks]
    parts += [_text(frame.left - 6, frame.y(v) + 3.5, label, size=10, anchor="end") for v, label in yticks]
    widest = max((len(label) for _, label in yticks), default=1)
    parts.append(
        _text(
            frame.left - 16 - CHAR_WIDTH * 10 * widest,
            frame.top + frame.height / 2,
            ylabel,
            size=11,
            anchor="middle",
            rotate=True,
        )
    )
    if xlabel:
        parts.append(_text(frame.left + frame.width / 2, frame.bottom + 33, xlabel, size=12, anchor="middle"))
    return "".join(parts)


def _swatch(kind: str, x: float, y: float) -> str:
    """The legend mark of a null bar ("bar"), the audited outline ("step") or the threshold ("dash")."""
    if kind == "bar":
        return f'<rect x="{_n(x)}" y="{_n(y - 5)}" width="16" height="10" fill="{NULL_COLOR}" fill-opacity="0.8"/>'
    if kind == "step":
        return _line(x, y, x + 16, y, AUDITED_COLOR, 2)
    return _line(x, y, x + 16, y, THRESHOLD_COLOR, 1.8, dashed=True)


def _legend(entries: Sequence[tuple[str, str]], left: float, top: float, width: float) -> tuple[str, float]:
    """(kind or "", label) entries flowed into rows from (left, top); returns (SVG, height)."""
    size, row_height = 11, 15
    parts, x, y = [], left, top + size
    for kind, label in entries:
        mark = 22 if kind else 0
        needed = mark + CHAR_WIDTH * size * len(label)
        if x > left and x + needed > left + width:
            x, y = left, y + row_height
        if kind:
            parts.append(_swatch(kind, x, y - 4))
        parts.append(_text(x + mark, y, label, size=size))
        x += needed + 18
    return "".join(parts), y - top + 4


def _step_path(frame: _Frame, edges: np.ndarray, heights: np.ndarray) -> str:
    """A histogram outline from the baseline up and along each bin and back down (path data)."""
    base = _n(frame.y(0.0))
    d, level = [f"M{_n(frame.x(edges[0]))} {base}"], base
    for x, y in zip(frame.x(edges[1:]), frame.y(heights)):
        if _n(y) != level:
            level = _n(y)
            d.append(f"V{level}")
        d.append(f"H{_n(x)}")
    return "".join(d) + f"V{base}"


@dataclass(frozen=True)
class _HistPanel:
    """One histogram panel: null and audited values on the same bins, the threshold (None: no
    threshold can be reached) and the words around them."""

    null: np.ndarray
    audited: np.ndarray
    edges: np.ndarray
    threshold: float | None
    legend: list[tuple[str, str]]
    title: str
    xlabel: str
    ylabel: str
    sqrt: bool = False


def _density(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    if not values.size:
        return np.zeros(edges.size - 1)
    return np.histogram(values, bins=edges, density=True)[0]


def _hist_panel_svg(panel: _HistPanel, left: float, top: float, width: float, bottom: float) -> str:
    null_d, audited_d = _density(panel.null, panel.edges), _density(panel.audited, panel.edges)
    peak = float(max(null_d.max(), audited_d.max())) or 1.0
    headroom = 1.08**2 if panel.sqrt else 1.08  # 8% of the plot height above the highest bar
    frame = _Frame(
        left,
        top,
        width,
        bottom - top,
        (float(panel.edges[0]), float(panel.edges[-1])),
        (0.0, headroom * peak),
        sqrt=panel.sqrt,
    )
    parts = []
    if panel.null.size:
        parts.append(f'<path d="{_step_path(frame, panel.edges, null_d)}Z" fill="{NULL_COLOR}" fill-opacity="0.8"/>')
    if panel.audited.size:
        parts.append(
            f'<path d="{_step_path(frame, panel.edges, audited_d)}" fill="none" '
            f'stroke="{AUDITED_COLOR}" stroke-width="2" stroke-linejoin="miter"/>'
        )
    if panel.threshold is not None:
        x = frame.x(panel.threshold)
        parts.append(_line(x, frame.top, x, frame.bottom, THRESHOLD_COLOR, 1.8, dashed=True))
    yticks = _sqrt_ticks(frame) if panel.sqrt else _linear_ticks(*frame.y_range, target=5)
    xticks = _linear_ticks(*frame.x_range, target=8)
    parts.append(_axes(frame, xticks, yticks, panel.xlabel, panel.ylabel))
    parts.append(_text(left + width / 2, 16, panel.title, size=13, anchor="middle"))
    return "".join(parts)


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    return values[np.isfinite(values)]


def _threshold_entry(unit: str, value: float | None, alpha: float) -> tuple[str, str]:
    if value is None:
        return "", f"no threshold line: \u03b1 = {alpha:.2g} is below the smallest p the null can give"
    return "dash", f"threshold {unit} = {value:.4g}"


def _hist_panels(
    null_z: np.ndarray, audited_z: np.ndarray, audited_mi: np.ndarray, threshold: Mapping[str, float]
) -> list[_HistPanel]:
    """The mi panel (square-root y scale) and the z panel of the score histograms."""
    reachable = math.isfinite(threshold["z"])
    z_all = np.r_[null_z, audited_z, threshold["z"] if reachable else []]
    z_lo, z_hi = (float(z_all.min()), float(z_all.max())) if z_all.size else (-1.0, 1.0)
    if z_hi - z_lo < 1e-9:
        z_lo, z_hi = z_lo - 1.0, z_hi + 1.0

    def legend(unit: str, null: np.ndarray, audited: np.ndarray, value: float) -> list[tuple[str, str]]:
        return [
            ("bar", f"null: real vs training (n={null.size})"),
            ("step", f"audited slices (n={audited.size})"),
            _threshold_entry(unit, value if reachable else None, threshold["alpha"]),
        ]

    null_mi = mi_from_z(null_z)
    return [
        _HistPanel(
            null_mi,
            audited_mi,
            MI_BINS,
            threshold["mi"] if reachable else None,
            legend("mi", null_mi, audited_mi, threshold["mi"]),
            "Audited mi over the null distribution",
            "Memorization Index mi (0.5 = typical real slice, 1 = copy)",
            "density (square-root scale)",
            sqrt=True,
        ),
        _HistPanel(
            null_z,
            audited_z,
            np.linspace(z_lo, z_hi + 1e-9, Z_EDGES),
            threshold["z"] if reachable else None,
            legend("z", null_z, audited_z, threshold["z"]),
            "The same in z units",
            "z = (similarity \u2212 null mean) / null std",
            "density",
        ),
    ]


def histogram_svg(
    rows: Sequence[ScoredSlice], null_sim: np.ndarray, null_mean: float, null_std: float, threshold: Mapping[str, float]
) -> str:
    """Audited scores over the null: left in mi units (square-root y scale, so that a pile of copies
    at mi = 1 does not flatten the rest), right in z units (where copies stand apart)."""
    std = null_std if null_std > 0 and math.isfinite(null_std) else 1.0
    null_z = _finite(z_of(null_sim, null_mean, std))
    audited_z, audited_mi = _finite([r.z for r in rows]), _finite([r.mi for r in rows])
    reachable = math.isfinite(threshold["z"])
    panels = _hist_panels(null_z, audited_z, audited_mi, threshold)
    null_mi = panels[0].null
    width, height = HIST_SIZE
    half, left_margin, right_margin = width / 2, 64, 18
    legends = [
        _legend(p.legend, i * half + left_margin, 24, half - left_margin - right_margin) for i, p in enumerate(panels)
    ]
    top = 24 + max(h for _, h in legends) + 6
    body = [svg for svg, _ in legends]
    body += [
        _hist_panel_svg(p, i * half + left_margin, top, half - left_margin - right_margin, height - 44)
        for i, p in enumerate(panels)
    ]
    label = (
        f"Histograms of the mi and z scores of {audited_mi.size} audited slices over {null_mi.size} "
        "null scores; "
        + (
            f"threshold mi = {threshold['mi']:.4g}, z = {threshold['z']:.4g}"
            if reachable
            else "no threshold can be reached"
        )
    )
    return _svg(width, height, "plot hist", label, body)


def _dots(frame: _Frame, xs: np.ndarray, ys: np.ndarray, color: str, diameter: float) -> str:
    """Round dots at the points (zero-length round-capped strokes, one per pixel at most)."""
    if not xs.size:
        return ""
    pixels = dict.fromkeys(zip(np.round(frame.x(xs)).astype(int).tolist(), np.round(frame.y(ys)).astype(int).tolist()))
    d = "".join(f"M{x} {y}h0" for x, y in pixels)
    return f'<path d="{d}" fill="none" stroke="{color}" stroke-width="{diameter:g}" stroke-linecap="round"/>'


def _strip_svg(volume: str, vrows: Sequence[ScoredSlice], top: float, threshold_mi: float | None, last: bool) -> str:
    """One volume's mi against slice index: a line through the slices, flagged ones red and larger."""
    vrows = sorted(vrows, key=lambda r: r.slice)
    xs = np.array([r.slice for r in vrows], dtype=np.float64)
    ys = np.clip(np.nan_to_num(np.array([r.mi for r in vrows], dtype=np.float64)), 0.0, 1.0)
    flagged = np.array([r.flagged for r in vrows], dtype=bool)
    pad = max(0.5, 0.02 * float(xs[-1] - xs[0]))
    frame = _Frame(52, top + 20, STRIP_WIDTH - 52 - 18, 70, (float(xs[0]) - pad, float(xs[-1]) + pad), (-0.02, 1.05))
    points = " ".join(f"{_n(x)},{_n(y)}" for x, y in zip(frame.x(xs), frame.y(ys)))
    parts = [f'<polyline points="{points}" fill="none" stroke="{AUDITED_COLOR}" stroke-width="1"/>']
    if threshold_mi is not None:
        y = frame.y(threshold_mi)
        parts.append(_line(frame.left, y, frame.left + frame.width, y, THRESHOLD_COLOR, 1, dashed=True))
    parts.append(_dots(frame, xs[~flagged], ys[~flagged], AUDITED_COLOR, 4))
    parts.append(_dots(frame, xs[flagged], ys[flagged], THRESHOLD_COLOR, 7))
    yticks = [(0.0, "0"), (0.5, "0.5"), (1.0, "1")]
    xticks = _linear_ticks(*frame.x_range, target=12, integer=True)
    parts.append(_axes(frame, xticks, yticks, "slice index" if last else "", "mi"))
    parts.append(
        _text(frame.left, top + 14, f"{short_name(volume)}  ({int(flagged.sum())} flagged of {len(vrows)})", size=12)
    )
    return "".join(parts)


def strips_svg(volumes: Sequence[tuple[str, Sequence[ScoredSlice]]], threshold_mi: float | None) -> str:
    """mi against slice index, one strip per volume (in the order given); no threshold line when
    ``threshold_mi`` is None (no threshold can be reached)."""
    body = [
        _strip_svg(volume, vrows, 4 + i * STRIP_HEIGHT, threshold_mi, last=i == len(volumes) - 1)
        for i, (volume, vrows) in enumerate(volumes)
    ]
    n_flagged = sum(r.flagged for _, vrows in volumes for r in vrows)
    label = (
        f"mi against slice index, one strip for each of {len(volumes)} volumes; {n_flagged} flagged slices shown in red"
    )
    return _svg(STRIP_WIDTH, 4 + len(volumes) * STRIP_HEIGHT + 26, "plot strips", label, body)


# --- sets (folders of 2D samples, e.g. one per training checkpoint) ------------------------------

TREND_SIZE = (1100, 270)  # the per-set trend figure (two panels side by side), SVG pixels
SET_PANEL_SIZE, SET_PANELS_PER_ROW = (270, 190), 4  # the per-set histograms (small multiples)


@dataclass(frozen=True)
class SetPoint:
    """One audited set as the trend plot shows it."""

    name: str
    scored: int
    flagged: int
    mean_mi: float


def _set_ticks(names: Sequence[str], max_labels: int = 12) -> list[tuple[float, str]]:
    step = max(1, math.ceil(len(names) / max_labels))
    keep = max(6, 80 // max(1, min(len(names), max_labels)))
    return [(float(i), short_name(names[i], keep)) for i in range(0, len(names), step)]


def _trend_panel(
    frame: _Frame,
    values: np.ndarray,
    reference: float,
    reference_label: str,
    title: str,
    ylabel: str,
    names: Sequence[str],
    yticks: Sequence[tuple[float, str]],
) -> str:
    xs = np.arange(len(values), dtype=np.float64)
    ok = np.isfinite(values)
    parts = [
        _line(
            frame.left, frame.y(reference), frame.left + frame.width, frame.y(reference), NULL_COLOR, 1.5, dashed=True
        ),
        _text(frame.left + 6, frame.y(reference) - 5, reference_label, size=10),
    ]
    if ok.sum() > 1:
        points = " ".join(f"{_n(x)},{_n(y)}" for x, y in zip(frame.x(xs[ok]), frame.y(values[ok])))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{AUDITED_COLOR}" stroke-width="2"/>')
    parts.append(_dots(frame, xs[ok], values[ok], AUDITED_COLOR, 8))
    parts.append(_axes(frame, _set_ticks(names), yticks, "set (in the order given)", ylabel))
    parts.append(_text(frame.left + frame.width / 2, frame.top - 10, title, size=13, anchor="middle"))
    return "".join(parts)


def sets_trend_svg(sets: Sequence[SetPoint], alpha: float) -> str:
    """Flagged fraction (left) and mean mi (right) of each set, in the order given: where
    memorisation starts across checkpoints. Reference lines: the fraction expected by chance
    (alpha) and mi = 0.5 (a typical real slice)."""
    names = [s.name for s in sets]
    fraction = np.array([100.0 * s.flagged / s.scored if s.scored else np.nan for s in sets])
    mean_mi = np.array([s.mean_mi if s.scored else np.nan for s in sets], dtype=np.float64)
    width, height = TREND_SIZE
    half, left_margin, right_margin, top = width / 2, 64, 18, 34
    x_range = (-0.5, len(sets) - 0.5)
    top_pct = max(5.0, float(np.nanmax(fraction)) * 1.1 if np.isfinite(fraction).any() else 5.0, 100.0 * alpha * 2)
    frames = [
        _Frame(i * half + left_margin, top, half - left_margin - right_margin, height - top - 46, x_range, y)
        for i, y in enumerate(((0.0, top_pct), (0.0, 1.0)))
    ]
    body = [
        _trend_panel(
            frames[0],
            fraction,
            100.0 * alpha,
            f"expected by chance ({100 * alpha:.2g}%)",
            "Flagged slices per set",
            "flagged (% of scored)",
            names,
            _linear_ticks(0.0, top_pct, 5),
        ),
        _trend_panel(
            frames[1],
            mean_mi,
            0.5,
            "typical real slice (0.5)",
            "Mean mi per set",
            "mean mi",
            names,
            _linear_ticks(0.0, 1.0, 5),
        ),
    ]
    label = "Flagged fraction and mean mi per set, in the order given: " + "; ".join(
        f"{s.name}: {s.flagged} of {s.scored} flagged, mean mi {s.mean_mi:.3f}" for s in sets[:20]
    )
    return _svg(width, height, "plot trend", label, body)


def set_histograms_svg(
    sets: Sequence[tuple[str, np.ndarray, int]], null_mi: np.ndarray, threshold_mi: float | None
) -> str:
    """One small histogram per set, (name, mi values, flagged count) in the order given: the set's
    mi (outline) over the null's (grey bars), square-root y scale, the threshold dashed."""
    cell_w, cell_h = SET_PANEL_SIZE
    rows = math.ceil(len(sets) / SET_PANELS_PER_ROW) if sets else 1
    null = _finite(null_mi)
    body = []
    for i, (name, mi, flagged) in enumerate(sets):
        left, top = (i % SET_PANELS_PER_ROW) * cell_w + 52, (i // SET_PANELS_PER_ROW) * cell_h + 26
        values = _finite(mi)
        null_d, set_d = _density(null, MI_BINS), _density(values, MI_BINS)
        peak = float(max(null_d.max(initial=0.0), set_d.max(initial=0.0))) or 1.0
        frame = _Frame(left, top, cell_w - 64, cell_h - 62, (0.0, 1.0), (0.0, 1.08**2 * peak), sqrt=True)
        if null.size:
            body.append(f'<path d="{_step_path(frame, MI_BINS, null_d)}Z" fill="{NULL_COLOR}" fill-opacity="0.8"/>')
        if values.size:
            body.append(
                f'<path d="{_step_path(frame, MI_BINS, set_d)}" fill="none" stroke="{AUDITED_COLOR}" '
                'stroke-width="1.6"/>'
            )
        if threshold_mi is not None:
            x = frame.x(threshold_mi)
            body.append(_line(x, frame.top, x, frame.bottom, THRESHOLD_COLOR, 1.4, dashed=True))
        body.append(_axes(frame, [(0.0, "0"), (0.5, "0.5"), (1.0, "1")], [], "mi", ""))
        body.append(_text(left, top - 8, f"{short_name(name, 26)} ({flagged} of {values.size} flagged)", size=11))
    label = f"mi of each of {len(sets)} sets over the null (grey), square-root density scale" + (
        "" if threshold_mi is None else f"; threshold mi = {threshold_mi:.4g}"
    )
    return _svg(SET_PANELS_PER_ROW * cell_w, rows * cell_h + 8, "plot sethist", label, body)
