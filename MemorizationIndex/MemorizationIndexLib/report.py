"""A self-contained HTML report of an audit, for reviewers who will not run Python.

``write_report(out_dir)`` reads the audit outputs (``slices.csv``, ``summary.json``,
``null_similarity.npy``, ``neighbors.csv``; read by ``audit_output.read_audit``) and writes
``out_dir/report.html``:

1. the verdict in plain words at the top, with the threshold in ``mi``/``oni``/``z`` units, the
   null used, the index, the encoder, the date and the tool version; right under it, when the
   audit has sets of 2D images, the sets section (:mod:`report_sets`: flagged fraction and mean
   ``mi`` per set in the order given, one row per set, each set's ``mi`` over the null);
2. plots, written directly as inline SVG (no plotting library, so the report costs little after
   an audit): audited ``mi`` over the null distribution's ``mi`` (and the same in ``z`` units)
   with the threshold marked, and ``mi`` against slice for each volume (capped at MAX_STRIPS,
   most suspicious volumes first; none for the files of sets);
3. the evidence: for the most suspicious slices, query (its copy mask as a translucent red tint,
   its copy box as a yellow frame) | training slice (the one verification matched, turned as
   matched, when verified; else the nearest) | absolute difference, with scores, the verified
   score, the transform and the box, and provenance (the pictures are made by :mod:`report_evidence`).

The verdict reads summary.json's verification and calibration blocks (:mod:`audit_status`): it
never says "Likely memorization" on the global score alone when verification could not run or
the calibration does not hold for these inputs; it says so, why, and what the flags rest on.

Everything is embedded (inline SVG plots, PNG data URIs for the slice images, inline CSS); the
file has no scripts, no event attributes and fetches nothing. Every string that comes from the
user (file names, index ids, ...) is HTML-escaped, inside the SVG too.

Slices are shown as stored in the image array (what the encoder saw), not re-oriented for
radiological display. Orientation of the training slice: ``slices.csv`` does not record
``nn_flip``; when the audit folder has a ``neighbors.csv`` (columns ``volume, slice, rank,
source, source_slice, flip, ...``) the rank-1 neighbour's flip is used, otherwise the report
tries the reference slice unflipped, left-right flipped and up-down flipped (after resizing it
to the query's shape) and shows the one with the highest pixel correlation to the query. The
orientation and the pixel correlation are printed under each pair. The difference image is
``|query - training|`` after each slice is scaled to [0, 1] by its own 1st-99.5th percentiles.

The evidence gallery holds the ``max_evidence`` slices in ``audit_output.evidence_order``
(flagged first, then the highest ``mi``, then similarity); the report says how many slices (and
flagged slices) were left out. Their query slices come from ``query_slices`` when the caller still
holds them (the audit keeps them, see ``audit.query_slices``); otherwise only the query volumes of
those slices are read, one at a time.

With ``no_training_images=True`` no training pixels enter the file: the reference index is not
even opened, and neither the training slice nor the difference image (which would reveal it) is
drawn; only the provenance (file name and slice number) is listed.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .atomic_write import text_file, write_files
from .audit_output import REPORT_FILE, SliceRow, read_audit
from .audit_status import AuditStatus, audit_status, box_text, copy_transform_text, status_sentences
from .mosaics import sample_grid_warning
from .report_evidence import Evidence, build_evidence, ranked
from .report_plots import histogram_svg, short_name, strips_svg
from .report_sets import calibration_cell, set_groups, set_row_mask, sets_section_html
from .scoring import mi_from_z, z_of

MAX_STRIPS = 12  # per-volume mi strips drawn; the rest are listed as left out


MAX_VOLUME_ROWS = 50  # rows of the per-volume table


PATH_CLASS = ' class="path"'


NULL_DESCRIPTIONS = {
    "train-split": (
        "train-split: about 10% of the training subjects were held out at a time, the whiteners "
        "refitted on the rest, and the held-out slices scored against them (no held-out real data "
        "was supplied)"
    ),
    "holdout": (
        "holdout: real slices never used in training scored against the training set "
        "(the null for \u201ccloser to the training set than fresh real data is\u201d)"
    ),
}


# --------------------------------------------------------------------------------------------
# small helpers


def _e(value: Any) -> str:
    """HTML-escape anything (quotes too, so it is safe in attributes)."""
    return html.escape(str(value), quote=True)


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img_tag(png: bytes, alt: str, cls: str = "", width: int | None = None) -> str:
    attrs = f' class="{_e(cls)}"' if cls else ""
    if width:
        attrs += f' width="{int(width)}"'
    return f'<img{attrs} alt="{_e(alt)}" src="{_png_data_uri(png)}">'


def _binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if p <= 0:
        return 0.0
    if p >= 1 or k > n:
        return 1.0 if p >= 1 else 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    total, peak = 0.0, None
    for i in range(k, n + 1):
        log_term = math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        peak = log_term if peak is None else max(peak, log_term)
        total += math.exp(log_term)
        if log_term < peak - 40:  # terms decrease from here on; the rest is negligible
            break
    return min(1.0, total)


def _count(x: float) -> str:
    """An expected count in plain words: 0.5, 1.2, 24.0, 0.02."""
    return f"{x:.1f}" if x >= 0.1 else f"{x:.2g}"


# --------------------------------------------------------------------------------------------
# the report


CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;margin:0;
 color:#1d2430;background:#fff;line-height:1.4}
main{max-width:1180px;margin:0 auto;padding:12px 22px 40px}
h1{font-size:20px;margin:2px 0 8px} h2{font-size:17px;margin:24px 0 8px;border-bottom:1px solid #d8dde3}
h3{font-size:15px;margin:16px 0 6px}
.verdict{border-radius:6px;padding:10px 16px;margin:0 0 10px;border-left:8px solid;display:flex;gap:18px;
 align-items:flex-start}
.verdict .words{flex:1 1 auto}
.verdict p{margin:4px 0}.verdict .headline{font-size:22px;font-weight:700;margin:0 0 4px}
.verdict .main{font-size:18px}
.verdict .warn{font-weight:700;color:#8a4b00}
p.warn{font-weight:700;color:#8a4b00}
.verdict .top{flex:0 0 auto;display:flex;gap:8px}
.verdict .top figure{margin:0;text-align:center;font-size:11px;color:#4b5563}
.verdict .top img{width:150px;height:auto;display:block;background:#000}
.verdict .top .na{width:150px;height:150px}
.v-red{background:#fdecea;border-color:#c0392b}.v-amber{background:#fff6e0;border-color:#d68910}
.v-green{background:#e9f7ef;border-color:#1e8449}
table{border-collapse:collapse;font-size:13px}
td,th{padding:2px 10px 2px 0;text-align:left;vertical-align:top}
table.meta th{color:#4b5563;font-weight:600;white-space:nowrap}
table.vols td,table.vols th{border-bottom:1px solid #eceff3;padding-right:14px}
.num{font-variant-numeric:tabular-nums}
.path{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
.note{color:#4b5563;font-size:13px}
.plots svg{max-width:100%;height:auto;display:block;margin:6px 0}
.plot text{fill:#1d2430;white-space:pre}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:10px}
.evidence{border:1px solid #d8dde3;border-radius:6px;padding:6px 10px}
.evidence p{margin:3px 0}
.evidence.flagged{border-color:#c0392b}
.evidence .trio{display:flex;gap:8px}
.evidence figure{margin:0;text-align:center;font-size:12px;color:#4b5563}
.evidence img{width:172px;height:auto;display:block;background:#000}
.na{width:172px;height:172px;display:flex;align-items:center;justify-content:center;background:#f1f3f5;
 color:#6b7280;font-size:12px;text-align:center;padding:6px;box-sizing:border-box}
.tag{display:inline-block;font-size:11px;font-weight:700;border-radius:3px;padding:0 6px;margin-right:6px}
.tag.f{background:#c0392b;color:#fff}.tag.n{background:#d8dde3;color:#1d2430}
"""


def _no_flag_headline(status: AuditStatus, warning: str) -> tuple[str, str]:
    """(css class, headline) when no slice is flagged."""
    if not status.can_flag:
        return "v-amber", "Inconclusive: the calibration does not hold and verification could not run"
    if status.calibrated is False:
        return "v-amber", "No verified copies; the calibration does not hold for these inputs"
    if status.verified is False:
        return "v-amber", "No slice flagged on the global score; verification could not run"
    if warning:
        return "v-amber", "Inconclusive: the threshold cannot be reached"
    return "v-green", "No copies of training slices found"


def _flag_headline(status: AuditStatus, tail: float) -> tuple[str, str]:
    """(css class, headline) when slices are flagged; "Likely memorization" only when the flags may
    rest on the global score (or rest on verified copies)."""
    if tail >= 0.01:
        return "v-amber", "Flagged slices, but no more than chance explains"
    if status.global_flags_trusted:
        return "v-red", "Likely memorization: some slices are copies of training slices"
    if status.verified:
        return "v-red", "Copies of training slices verified pixel by pixel (the global calibration does not hold)"
    return "v-amber", "Flagged on the global score alone: not verified, not conclusive"


def _match_words(row: SliceRow) -> str:
    """The training slice a row matched: the verified one when verified, else the nearest."""
    if row.verified:
        return (
            f"verified against training slice {row.copy_slice} of {short_name(row.copy_source)} "
            f"(verified score {row.verified_score:.3g})"
        )
    return f"nearest training slice {row.nn_slice} of {short_name(row.nn_source)}"


def _verdict(rows: Sequence[SliceRow], summary: dict) -> tuple[str, str, list[str], str]:
    """(css class, headline, sentences, warning) in plain words."""
    th = summary["threshold"]
    alpha = th["alpha"]
    status = audit_status(summary)
    n, k = len(rows), sum(r.flagged for r in rows)
    n_null = int(summary["null"].get("n") or 0)
    warning = ""
    if n_null and 1.0 / (n_null + 1) >= alpha and status.verified is not True:
        warning = (
            f"Warning: the null has only {n_null} scores, so the smallest p-value it can give is "
            f"{1.0 / (n_null + 1):.2g}, not below \u03b1 = {alpha:.2g}: no slice can be flagged at this "
            "threshold. Rebuild the index with more null data or audit with a larger \u03b1."
        )
    if n == 0:
        sentences = ["No slice was scored (every slice was empty or no volume was given), so nothing can be said."]
        return "v-amber", "Nothing was scored", sentences, warning
    sentences = [
        f"{k} of {n} slices ({100.0 * k / n:.1f}%) look like copies of training slices; "
        f"expected by chance at this threshold: {_count(alpha * n)}."
    ]
    sentences += status_sentences(status)
    best = ranked(rows)[0]
    detail = f"z = {best.z:.3g}, p = {best.p_value:.2g}"
    if k == 0:
        cls, headline = _no_flag_headline(status, warning)
        passed = f" (mi \u2265 {th['mi']:.4g})" if status.verified is None and status.calibrated is None else ""
        sentences.append(
            f"No slice passed the threshold{passed}. The closest slice has mi = {best.mi:.4g} ({detail}): "
            f"slice {best.slice} of {short_name(best.volume)}, {_match_words(best)}."
        )
        return cls, headline, sentences, warning
    tail = _binomial_tail(k, n, alpha)
    cls, headline = _flag_headline(status, tail)
    sentences.append(
        f"How sure: if the generator copied nothing, {k} or more flagged slices out of {n} would "
        f"happen by chance with probability \u2248 {tail:.2g} (binomial at \u03b1 = {alpha:.2g}; "
        "slices of one volume are not fully independent, so read this as approximate)."
    )
    floor = f"; the smallest p the {n_null} null scores can give is {1.0 / (n_null + 1):.2g}" if n_null else ""
    sentences.append(
        f"Strongest match: slice {best.slice} of {short_name(best.volume)} with mi = {best.mi:.4g} ({detail}{floor}), "
        f"{_match_words(best)}."
    )
    return cls, headline, sentences, warning


def _meta_table(summary: dict, generated: str) -> str:
    th, idx, null = summary["threshold"], summary["index"], summary["null"]
    null_type = str(idx.get("null_type", "unknown"))
    rows = [
        (
            "Threshold",
            f"mi \u2265 {th['mi']:.4g} \u00b7 oni \u2264 {th['oni']:.4g} \u00b7 z \u2265 {th['z']:.4g} "
            f"\u00b7 similarity \u2265 {th['similarity']:.4g} (\u03b1 = {th['alpha']:.2g} false alarms per slice)",
        ),
        (
            "Null",
            f"{NULL_DESCRIPTIONS.get(null_type, null_type)}; n = {null.get('n', '?')}, "
            f"mean similarity {null['mean']:.4g}, std {null['std']:.4g}",
        ),
        (
            "Index",
            f"{idx.get('index_id', '?')} ({idx.get('n_reference_slices', '?')} reference slices, "
            f"{idx.get('axis', '?')} axis)",
        ),
        ("Index path", idx.get("path", "?")),
        (
            "Encoder",
            f"{idx.get('encoder_name', '?')} \u00b7 {idx.get('encoder_id', '?')} \u00b7 weights sha256 "
            f"{str(idx.get('weights_sha256', '?'))[:16]}\u2026",
        ),
        ("Report date", generated),
        (
            "Tool version",
            f"MemorizationIndex {__version__} (report); audit written by "
            f"{summary.get('tool', 'MemorizationIndex')} {summary.get('version', '?')}",
        ),
    ]
    body = "".join(
        f"<tr><th>{_e(k)}</th><td{PATH_CLASS if k == 'Index path' else ''}>{_e(v)}</td></tr>" for k, v in rows
    )
    return f'<table class="meta" id="meta">{body}</table>'


def _volume_order(rows: Sequence[SliceRow]) -> list[tuple[str, list[SliceRow]]]:
    by_volume: dict[str, list[SliceRow]] = {}
    for r in rows:
        by_volume.setdefault(r.volume, []).append(r)
    return sorted(by_volume.items(), key=lambda kv: (-sum(r.flagged for r in kv[1]), -max(r.mi for r in kv[1]), kv[0]))


def _volumes_table(ordered: list[tuple[str, list[SliceRow]]], summary: dict) -> str:
    info = {str(v.get("volume")): v for v in summary.get("volumes", []) if isinstance(v, dict)}
    with_calibration = any("calibration_holds" in v for v in info.values())
    head = (
        "<tr><th>volume</th><th>axis</th><th>slices scored</th><th>skipped (empty)</th>"
        "<th>flagged</th><th>mean mi</th><th>max mi</th>"
        + ("<th>calibration</th>" if with_calibration else "")
        + "</tr>"
    )
    body = []
    for volume, vrows in ordered[:MAX_VOLUME_ROWS]:
        v = info.get(volume, {})
        cell = calibration_cell(v) if with_calibration else ""
        body.append(
            f'<tr><td class="path">{_e(volume)}</td><td>{_e(v.get("axis", ""))}</td>'
            f'<td class="num">{len(vrows)}</td><td class="num">{_e(v.get("slices_skipped_empty", ""))}</td>'
            f'<td class="num">{sum(r.flagged for r in vrows)}</td>'
            f'<td class="num">{np.mean([r.mi for r in vrows]):.4g}</td>'
            f'<td class="num">{max(r.mi for r in vrows):.4g}</td>{cell}</tr>'
        )
    note = "".join(
        f'<p class="warn">{_e(sample_grid_warning(str(v["volume"]), str(v["sample_grid"])))}</p>'
        for v in info.values()
        if v.get("sample_grid")
    )
    if len(ordered) > MAX_VOLUME_ROWS:
        note += (
            f'<p class="note">{len(ordered) - MAX_VOLUME_ROWS} more volumes are not listed here; '
            "summary.json and slices.csv have all of them.</p>"
        )
    return f'<table class="vols">{head}{"".join(body)}</table>{note}'


def _na(text: str) -> str:
    return f'<div class="na">{_e(text)}</div>'


def _cell(png: bytes | None, reason: str, alt: str, cls: str) -> str:
    return _img_tag(png, alt=alt, cls=cls) if png is not None else _na(reason)


def _evidence_intro(rows: Sequence[SliceRow], items: Sequence[Evidence], *, no_training_images: bool) -> str:
    n_flagged = sum(r.flagged for r in rows)
    shown_flagged = sum(it.row.flagged for it in items)
    parts = [
        f'<p class="note">The {len(items)} most suspicious of {len(rows)} scored slices, flagged first, then ranked '
        f"by mi then similarity ({shown_flagged} of them flagged; {n_flagged} flagged in all)."
    ]
    if len(rows) > len(items):
        parts.append(
            f" {len(rows) - len(items)} slices are left out of this gallery "
            f"({n_flagged - shown_flagged} of them flagged); slices.csv lists every slice."
        )
    if any(it.row.verified or it.mask_shown for it in items):
        parts.append(
            " On the query, the copied region found by verification is tinted red and framed in yellow "
            "(the copy box); beside it is the training slice the verification matched, turned as matched "
            "(transpose, rotation; the scale is given, not applied)."
        )
    if no_training_images:
        parts.append(
            " Training images are left out of this report (--no-training-images): only "
            "the provenance of each matched training slice is given."
        )
    else:
        parts.append(
            " Slices are shown as stored in the image array (as the encoder sees them). A training slice "
            "that was not verified is the nearest one of the global search, resized to the query's shape and "
            "shown flipped as the audit matched it (neighbors.csv), or else in the orientation (none / hflip / "
            "vflip) that correlates best with the query; the "
            "difference is |query \u2212 training| with each slice scaled to its own 1st\u201399.5th "
            "percentile, so a copy gives a black difference."
        )
    return "".join(parts) + "</p>"


def _part_text(reproduced: float) -> str:
    """The verified score's near-exact part, when a region was reproduced near-exactly."""
    return f", near-exact part {reproduced:.3g}" if math.isfinite(reproduced) and reproduced > 0 else ""


def _bent_text(score: float, bent: float) -> str:
    """The bent score, when bending the candidate onto the slice scored higher than the alignment alone."""
    return f", bent {bent:.3g}" if math.isfinite(bent) and bent > score else ""


def _verified_line(r: SliceRow) -> str:
    if not r.verified:
        return ""
    return (
        f"<br>verified score = {r.verified_score:.3g}{_part_text(r.verified_reproduced)}"
        f"{_bent_text(r.verified_score, r.verified_bent)} "
        f"(p = {r.verified_p:.3g}; flag p = {r.flag_p:.3g}) "
        f"\u00b7 transform: {_e(copy_transform_text(r.copy_transposed, r.copy_angle, r.copy_scale))} "
        f"\u00b7 copy box: {_e(box_text(r.copy_box))}"
    )


def _evidence_item_html(rank: int, it: Evidence) -> str:
    r = it.row
    tag = '<span class="tag f">FLAGGED</span>' if r.flagged else '<span class="tag n">not flagged</span>'
    orient = ""
    if it.correlation is not None:
        orient = f" \u00b7 shown orientation: {_e(it.orientation)} \u00b7 pixel correlation r = {it.correlation:.3f}"
    source, number = (r.copy_source, r.copy_slice) if r.verified else (r.nn_source, r.nn_slice)
    caption = "verified training slice" if r.verified else "nearest training slice"
    return (
        f'<div class="evidence{" flagged" if r.flagged else ""}" id="ev{rank}">'
        f"<p>#{rank} {tag}<b>mi = {r.mi:.4g}</b> \u00b7 oni = {r.oni:.4g} \u00b7 z = {r.z:.4g} "
        f"\u00b7 similarity = {r.similarity:.4g} \u00b7 p = {r.p_value:.3g}{_verified_line(r)}</p>"
        '<div class="trio">'
        f"<figure>{_cell(it.query_png, it.query_reason, f'query slice {r.slice}', 'query')}"
        f"<figcaption>query{' (copy marked)' if it.mask_shown or r.copy_box else ''}</figcaption></figure>"
        f"<figure>{_cell(it.train_png, it.train_reason, f'training slice {number}', 'train')}"
        f"<figcaption>{caption}</figcaption></figure>"
        f"<figure>{_cell(it.diff_png, it.diff_reason, 'absolute difference', 'diff')}"
        "<figcaption>|difference|</figcaption></figure></div>"
        f'<p class="note">query: <span class="path">{_e(r.volume)}</span> slice {r.slice}<br>'
        f'training: <span class="path">{_e(source)}</span> slice {number}{orient}</p>'
        "</div>"
    )


def _evidence_html(rows: Sequence[SliceRow], items: Sequence[Evidence], *, no_training_images: bool) -> str:
    intro = _evidence_intro(rows, items, no_training_images=no_training_images)
    cards = "".join(_evidence_item_html(rank, it) for rank, it in enumerate(items, start=1))
    return f'{intro}<div class="gallery">{cards}</div>'


def _top_pair_html(item: Evidence | None) -> str:
    """The strongest flagged match's query and training slice, small, beside the verdict."""
    if item is None or not item.row.flagged or item.query_png is None:
        return ""
    cells = [
        f"<figure>{_img_tag(item.query_png, alt='strongest match: query', cls='top-query')}"
        "<figcaption>generated</figcaption></figure>"
    ]
    if item.train_png is not None:
        cells.append(
            f"<figure>{_img_tag(item.train_png, alt='strongest match: training', cls='top-train')}"
            "<figcaption>training</figcaption></figure>"
        )
    else:
        cells.append(f"<figure>{_na(item.train_reason)}<figcaption>training</figcaption></figure>")
    return f'<div class="top">{"".join(cells)}</div>'


def _verdict_section_html(rows: Sequence[SliceRow], summary: dict, items: Sequence[Evidence]) -> str:
    """The verdict section: headline, sentences, warning and the top pair."""
    cls, headline, sentences, warning = _verdict(rows, summary)
    return (
        f'<section class="verdict {cls}" id="verdict"><div class="words">'
        f'<p class="headline">{_e(headline)}</p>'
        f'<p class="main">{_e(sentences[0])}</p>'
        + "".join(f"<p>{_e(s)}</p>" for s in sentences[1:])
        + (f'<p class="warn">{_e(warning)}</p>' if warning else "")
        + "</div>"
        + _top_pair_html(items[0] if items else None)
        + "</section>"
    )


def _strips_html(ordered: list[tuple[str, list[SliceRow]]], th: Mapping[str, float]) -> list[str]:
    """The per-volume strip plot and its note, for volumes in display order."""
    strips = ordered[:MAX_STRIPS]
    reachable = math.isfinite(th["z"])
    note = "mi against slice index, one strip per volume, most suspicious volumes first; red dots are flagged."
    if not reachable:
        note += " No threshold line: no slice can reach the threshold with this null."
    if len(ordered) > len(strips):
        note += f" Showing {len(strips)} of {len(ordered)} volumes; {len(ordered) - len(strips)} are left out."
    return [strips_svg(strips, th["mi"] if reachable else None), f'<p class="note">{_e(note)}</p>']


def _plots_section_html(
    rows: Sequence[SliceRow],
    summary: dict,
    null_sim: np.ndarray,
    ordered: list[tuple[str, list[SliceRow]]],
    *,
    show_volumes: bool,
) -> str:
    """The scores section: histograms, per-volume strips and the volumes table."""
    th = summary["threshold"]
    null_mean, null_std = summary["null"]["mean"], summary["null"]["std"]
    plots = ['<section class="plots" id="plots"><h2>Scores</h2>']
    plots.append(histogram_svg(rows, null_sim, null_mean, null_std, th))
    plots.append(
        '<p class="note">Grey: real slices scored against the training set (the null). '
        "Blue: the audited slices. Red line: the threshold; slices to its right are flagged. "
        "Left in mi units (copies pile up at 1), right the same scores in z units.</p>"
    )
    if ordered:
        plots += _strips_html(ordered, th)
    if show_volumes:
        plots.append("<h3>Volumes</h3>" + _volumes_table(ordered, summary))
    plots.append("</section>")
    return "".join(plots)


def render_report(
    out_dir: str | os.PathLike,
    *,
    no_training_images: bool = False,
    max_evidence: int = 24,
    generated: str | None = None,
    index=None,
    query_slices: Mapping[tuple[str, int], np.ndarray] | None = None,
) -> str:
    """The report HTML (a string) for an audit folder; see :func:`write_report`."""
    audit = read_audit(out_dir)
    rows, summary, null_sim = audit.rows, audit.summary, audit.null_similarity
    if generated is None:
        generated = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z").strip()
    th = summary["threshold"]
    null_mean, null_std = summary["null"]["mean"], summary["null"]["std"]
    groups = set_groups(summary, rows)
    in_set = set_row_mask(summary, len(rows))
    items = build_evidence(
        ranked(rows)[: max(0, int(max_evidence))],
        audit,
        no_training_images=no_training_images,
        index=index,
        query_slices=query_slices,
        set_files=frozenset(r.volume for r, member in zip(rows, in_set) if member),
    )

    verdict = _verdict_section_html(rows, summary, items)

    sets = ""
    if groups:
        null_z = z_of(null_sim, null_mean, null_std if null_std > 0 else 1.0)
        sets = sets_section_html(groups, mi_from_z(null_z), th)
    ordered = _volume_order([r for r, member in zip(rows, in_set) if not member])  # no strips for set files
    plots = _plots_section_html(rows, summary, null_sim, ordered, show_volumes=bool(ordered or not groups))

    evidence = (
        '<section id="evidence"><h2>Evidence</h2>'
        + _evidence_html(rows, items, no_training_images=no_training_images)
        + "</section>"
    )

    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>Memorization audit report</title>"
        f"<style>{CSS}</style></head><body><main>"
        "<h1>Memorization audit report</h1>"
        f"{verdict}{sets}{_meta_table(summary, generated)}"
        f"{plots}{evidence}"
        '<p class="note">Scores: z = (similarity \u2212 null mean) / null std; mi = (1 + tanh z) / 2 '
        "(0.5 at the null mean, 1 for copies); oni = \u2212tanh z; p = fraction of null scores \u2265 "
        "the slice's similarity (+1 corrected); a slice is flagged when p &lt; \u03b1.</p>"
        "</main></body></html>\n"
    )


def write_report(
    out_dir: str | os.PathLike,
    *,
    no_training_images: bool = False,
    max_evidence: int = 24,
    index=None,
    query_slices: Mapping[tuple[str, int], np.ndarray] | None = None,
) -> Path:
    """Write ``out_dir/report.html`` from the audit outputs in ``out_dir``; returns its path.

    ``index``: the audit's already loaded :class:`ReferenceIndex` (saves loading it again for the
    training images); by default the index recorded in summary.json is loaded.
    ``query_slices``: {(volume as in slices.csv, slice index): 2D slice as stored in the image
    array} that the audit still holds (see ``audit.query_slices``); the evidence slices found
    there are not read again from the query files, the others are.

    Raises :class:`UserError` (one line) when the audit outputs are missing or corrupt, or when the
    report cannot be written.
    """
    out_dir = Path(out_dir)
    text = render_report(
        out_dir,
        no_training_images=no_training_images,
        max_evidence=max_evidence,
        index=index,
        query_slices=query_slices,
    )
    write_files(out_dir, {REPORT_FILE: text_file(text)})
    return out_dir / REPORT_FILE
