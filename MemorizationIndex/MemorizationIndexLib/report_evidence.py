"""The report's evidence pairs as pixels: each shown slice read back (from the slices the audit kept, else its file),
its copy mask and box drawn on it, the training slice beside it (the verified one turned as matched, else the nearest,
oriented by the recorded flip or the best pixel correlation) and their difference, as PNGs; or, for each picture that
cannot be drawn, the reason (``report`` lays them out).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .audit_output import AuditOutputs, SliceRow, evidence_order
from .audit_status import copy_transform_text
from .image_sets import SET_AXIS
from .pearson import pixel_correlation
from .transforms import REFERENCE_COPIES, reference_copy, resize_bilinear, rotate

MAX_THUMB = 256  # evidence images larger than this (in either dimension) are downsampled
MASK_RGB, MASK_ALPHA = (0.9, 0.1, 0.1), 0.4  # the copy mask's tint on the query slice
BOX_RGB = (255, 204, 0)  # the copy box's frame


def display01(img: np.ndarray) -> np.ndarray:
    """A slice scaled to [0, 1] by its own 1st-99.5th percentiles (its range when they are equal) for display."""
    img = np.nan_to_num(np.asarray(img, dtype=np.float64))
    lo, hi = np.percentile(img, [1.0, 99.5]) if img.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = float(img.min(initial=0.0)), float(img.max(initial=1.0))
    if hi <= lo:
        return np.zeros_like(img)
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0)


def gray_png(img01: np.ndarray) -> bytes:
    """A [0, 1] image as a greyscale PNG, downsampled to MAX_THUMB pixels on its longer side when larger."""
    from PIL import Image

    arr = np.round(np.clip(img01, 0.0, 1.0) * 255.0).astype(np.uint8)
    pil = Image.fromarray(arr, mode="L")
    if max(pil.size) > MAX_THUMB:
        scale = MAX_THUMB / max(pil.size)
        pil = pil.resize((max(1, round(pil.size[0] * scale)), max(1, round(pil.size[1] * scale))), Image.BILINEAR)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")  # optimize=True: 1% smaller, 45% slower
    return buf.getvalue()


def _copy_png(img01: np.ndarray, mask: np.ndarray | None, box: tuple[int, int, int, int] | None) -> bytes:
    """A query slice with its copy mask as a translucent red tint and its copy box as a yellow
    frame (a plain grey PNG when it has neither)."""
    if mask is None and box is None:
        return gray_png(img01)
    from PIL import Image, ImageDraw

    grey = np.clip(img01, 0.0, 1.0)[..., None] * np.ones(3)
    if mask is not None:
        grey = np.where(mask[..., None], (1.0 - MASK_ALPHA) * grey + MASK_ALPHA * np.array(MASK_RGB), grey)
    pil = Image.fromarray(np.round(grey * 255.0).astype(np.uint8), mode="RGB")
    scale = min(1.0, MAX_THUMB / max(pil.size))
    if scale < 1.0:
        pil = pil.resize((max(1, round(pil.size[0] * scale)), max(1, round(pil.size[1] * scale))), Image.BILINEAR)
    if box is not None:
        row0, col0, row1, col1 = box
        corners = [col0 * scale, row0 * scale, max(col0, col1 - 1) * scale, max(row0, row1 - 1) * scale]
        ImageDraw.Draw(pil).rectangle(corners, outline=BOX_RGB, width=max(1, round(2 * max(pil.size) / MAX_THUMB)))
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def match_orientation(
    query01: np.ndarray, train: np.ndarray, recorded: str | None = None
) -> tuple[np.ndarray, str, float]:
    """Orient the training slice and resize it to the query shape: the copy (flip, rotation or
    transpose) the audit recorded when known, else the one of REFERENCE_COPIES with the best pixel
    correlation."""

    def oriented(copy: str) -> np.ndarray:
        return np.ascontiguousarray(display01(resize_bilinear(reference_copy(train, copy), query01.shape)))

    if recorded in REFERENCE_COPIES:
        cand = oriented(recorded)
        return cand, f"{recorded} (as matched by the audit)", pixel_correlation(query01, cand)
    best = None
    for name in REFERENCE_COPIES:
        cand = oriented(name)
        r = pixel_correlation(query01, cand)
        if best is None or r > best[2] + 1e-9:
            best = (np.ascontiguousarray(cand), name, r)
    return best[0], f"{best[1]} (best pixel correlation)", best[2]


def read_query_volume(volume: str, array_axis: Any, out_dir: Path) -> np.ndarray | str:
    """All slices of a query volume (or of a set's file: ``array_axis`` SET_AXIS) as audited, or the
    reason they are not available."""
    if array_axis is None:
        return "volume not listed in summary.json"
    candidates = [Path(volume)]
    if not Path(volume).is_absolute():
        candidates.append(out_dir / volume)  # a relative path given from the audit folder
    path = next((c for c in candidates if c.exists()), None)
    if path is None:
        return "query file not found at the recorded path"
    try:
        from . import volumes as volumes_mod

        if array_axis == SET_AXIS:
            from .image_sets import read_slices

            return read_slices(path)
        image = volumes_mod.read_image(str(path))
        return np.asarray(volumes_mod.image_slices(image, int(array_axis)), dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - any failure just means "not available"
        return f"query file could not be read ({type(exc).__name__})"


def _query_slices(
    rows: Sequence[SliceRow],
    out_dir: Path,
    summary: dict,
    given: Mapping[tuple[str, int], np.ndarray],
    set_files: frozenset[str] = frozenset(),
) -> dict[tuple[str, int], np.ndarray | str]:
    """{(volume, slice): 2D slice or reason}: from ``given`` (slices the audit kept) where it has
    them, else read from the volume files (and ``set_files``, files of sets), each file once,
    keeping only the slices needed."""
    axes = {
        str(v["volume"]): v.get("array_axis")
        for v in summary.get("volumes", [])
        if isinstance(v, dict) and "volume" in v
    }
    axes.update(dict.fromkeys(set_files, SET_AXIS))
    needed: dict[str, set[int]] = {}
    out: dict[tuple[str, int], np.ndarray | str] = {}
    for r in rows:
        if (r.volume, r.slice) in given:
            out[(r.volume, r.slice)] = np.asarray(given[(r.volume, r.slice)], dtype=np.float32)
        else:
            needed.setdefault(r.volume, set()).add(r.slice)
    for volume, indices in needed.items():
        stack = read_query_volume(volume, axes.get(volume), out_dir)
        for k in indices:
            if isinstance(stack, str):
                out[(volume, k)] = stack
            elif 0 <= k < stack.shape[0]:
                out[(volume, k)] = stack[k].copy()
            else:
                out[(volume, k)] = f"slice {k} is outside the volume ({stack.shape[0]} slices)"
        del stack
    return out


def load_reference_index(index_path: str):
    """The audit's reference index, or a reason string when it cannot be opened."""
    if not index_path:
        return "no index path recorded in summary.json"
    try:
        from .reference_index import ReferenceIndex

        return ReferenceIndex.load(index_path)
    except Exception as exc:  # noqa: BLE001 - the report is written without training images, saying why
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"index could not be opened ({msg})"


@dataclass
class Evidence:
    """One evidence pair of the report: a shown slice's row, its PNGs (query, training slice, difference) or the
    reasons each is missing, and how the training slice was oriented."""

    row: SliceRow
    query_png: bytes | None
    query_reason: str
    train_png: bytes | None
    diff_png: bytes | None
    train_reason: str
    diff_reason: str
    orientation: str = ""
    correlation: float | None = None
    mask_shown: bool = False


def ranked(rows: Sequence[SliceRow]) -> list[SliceRow]:
    """The rows in evidence order (``audit_output.evidence_order``: flagged first, then the highest ``mi``)."""
    return sorted(rows, key=lambda r: evidence_order(r.volume, r))


def _as_verified(train: np.ndarray, row: SliceRow, shape: tuple[int, int]) -> np.ndarray:
    """The verified training slice turned as the verification matched it (transpose, then the
    rotation; quarter turns exact), resized to the query's shape. The scale and shift are not
    applied: the picture shows the orientation, the box and mask show where the copy lies."""
    image = np.asarray(train, dtype=np.float32)
    image = image.T if row.copy_transposed else image
    if abs(row.copy_angle / 90.0 - round(row.copy_angle / 90.0)) < 1e-6:
        image = np.rot90(image, int(-round(row.copy_angle / 90.0)) % 4)
    else:
        image = rotate(image, row.copy_angle)
    return display01(resize_bilinear(np.ascontiguousarray(image), shape))


def _training_slice(row: SliceRow, index) -> tuple[np.ndarray | None, str]:
    """The training slice shown beside a query (the verified one when verified, else the nearest)
    as stored, or None and the reason."""
    if isinstance(index, str):
        return None, f"training image not available: {index}"
    source, number = (row.copy_source, row.copy_slice) if row.verified else (row.nn_source, row.nn_slice)
    if index is not None:
        try:
            train = index.reference_slice(source, number)
        except Exception as exc:  # noqa: BLE001 - any failure just means "not available"
            return None, f"training image not available ({type(exc).__name__})"
        if train is not None:
            return np.asarray(train, dtype=np.float32), ""
    return None, "training image not available (no thumbnail, source file unreadable)"


def _fill_training(item: Evidence, q01: np.ndarray | None, index, flips_known: bool) -> None:
    """The training and difference images of an evidence item (or the reasons they are missing)."""
    r = item.row
    train, reason = _training_slice(r, index)
    if train is None:
        item.train_reason, item.diff_reason = reason, "no difference image (no training image)"
        return
    if q01 is None:
        item.train_png = gray_png(display01(train))
        item.diff_reason = "no difference image (no query image)"
        return
    if r.verified:
        t01 = _as_verified(train, r, q01.shape)
        item.orientation = f"{copy_transform_text(r.copy_transposed, r.copy_angle, r.copy_scale)} (as verified)"
        item.correlation = pixel_correlation(q01, t01)
    else:
        t01, item.orientation, item.correlation = match_orientation(q01, train, r.nn_flip if flips_known else None)
    item.train_png = gray_png(t01)
    item.diff_png = gray_png(np.abs(q01 - t01))


def build_evidence(
    shown: Sequence[SliceRow],
    audit: AuditOutputs,
    *,
    no_training_images: bool,
    index=None,
    query_slices: Mapping[tuple[str, int], np.ndarray] | None = None,
    set_files: frozenset[str] = frozenset(),
) -> list[Evidence]:
    """The evidence pairs of the ``shown`` rows (their query slices from ``query_slices`` where given, else read from
    their files; their training slices from ``index``, opened from summary.json's path when None, none at all with
    ``no_training_images``)."""
    queries = _query_slices(shown, audit.folder, audit.summary, query_slices or {}, set_files)
    if no_training_images or not shown:
        index = None
    elif index is None:
        index = load_reference_index(str(audit.summary["index"].get("path", "")))
    items = []
    for r in shown:
        q = queries[(r.volume, r.slice)]
        q01 = None if isinstance(q, str) else display01(q)
        mask = audit.copy_masks.get((r.volume, r.slice))
        mask = mask if mask is not None and q01 is not None and mask.shape == q01.shape else None
        item = Evidence(
            row=r,
            query_png=None if q01 is None else _copy_png(q01, mask, r.copy_box),
            query_reason="" if q01 is not None else f"query image not available: {q}",
            train_png=None,
            diff_png=None,
            train_reason="",
            diff_reason="",
            mask_shown=mask is not None and bool(mask.any()),
        )
        if no_training_images:
            item.train_reason = "training image withheld (--no-training-images)"
            item.diff_reason = "difference withheld (it would reveal the training image)"
        else:
            _fill_training(item, q01, index, audit.neighbours is not None)
        items.append(item)
    return items
