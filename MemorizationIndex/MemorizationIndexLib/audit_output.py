"""The audit's output folder: its file formats, the writer and one checked reader.

An audit folder holds ``slices.csv`` (one row per scored slice, :data:`SLICE_COLUMNS`),
``neighbors.csv`` (the top-k reference slices of each scored slice, :data:`NEIGHBOUR_COLUMNS`),
``summary.json``, ``null_similarity.npy`` and ``copy_masks.npz`` (formats: :data:`FOLDER_FORMAT`,
rendered into docs/api-contract.md). Floats are written with 6 significant digits. The audit writes
the folder; the report and the Slicer module read it back with :func:`read_audit`, which also reads
folders written before verification (their missing columns, blocks and masks take the defaults).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from .atomic_write import write_files
from .errors import UserError
from .scoring import Threshold
from .transforms import ORIGINAL, REFERENCE_COPIES

_GLOBAL_COLUMNS = ("volume", "slice", "similarity", "z", "mi", "oni", "p_value", "flagged", "nn_source", "nn_slice")
VERIFICATION_COLUMNS = (
    "verified_score",
    "verified_p",
    "flag_p",
    "copy_source",
    "copy_slice",
    "copy_transposed",
    "copy_angle",
    "copy_scale",
    "copy_box",
    "roughness",
    "verified_reproduced",
    "verified_bent",
)
SLICE_COLUMNS = _GLOBAL_COLUMNS + VERIFICATION_COLUMNS
NEIGHBOUR_COLUMNS = ("volume", "slice", "rank", "source", "source_slice", "flip", "similarity")
COPY_MASKS_FILE = "copy_masks.npz"
SLICES_FILE = "slices.csv"
SUMMARY_FILE = "summary.json"
OUTPUT_FILES = (SLICES_FILE, "neighbors.csv", SUMMARY_FILE, "null_similarity.npy", COPY_MASKS_FILE)
REPORT_FILE = "report.html"  # built from OUTPUT_FILES (report.write_report)
_SUMMARY_KEYS = ("index", "null", "threshold", "volumes")
_Parsed = TypeVar("_Parsed")

FOLDER_FORMAT = (
    (
        "slices.csv",
        "one row per scored slice, columns "
        + ", ".join(_GLOBAL_COLUMNS)
        + " (the global search), then "
        + ", ".join(VERIFICATION_COLUMNS)
        + ' (verification; absent in folders written before it: the reader gives nan, "", -1, 0, 0.0, 1.0 '
        "and no box). flagged: 0/1, flagged == flag_p < alpha. verified_score in [0, 1] and verified_p / "
        "flag_p in [0, 1], nan when not verified. flag_p: twice the smaller of p_value and verified_p, at most 1 "
        "(Bonferroni over the two stages), where verified_p counts only when verified_score >= "
        "verified_null.MIN_COPY_SCORE or verified_bent >= MIN_BENT_SCORE (else 1); where the calibration does not "
        "hold for the input (summary.json's calibration_holds false), that verified evidence alone. copy_source, "
        "copy_slice: the training slice the verification matched best, on every verified row (on an unflagged row "
        "it is the best candidate, no finding); copy_transposed (0/1), copy_angle (degrees), copy_scale: how it maps "
        'onto the query (transpose, then rotation, then scale); copy_box: "row0 col0 row1 col1" (ends '
        "exclusive) of the copied region in the query slice's pixels as stored, empty when none; roughness: the "
        "slice's verification grid roughness (smaller = smoother; nan when not verified), which picks the band "
        "of the verified null its verified_p comes from; verified_reproduced in [0, 1]: the verified score's "
        "near-exact part (the share of the smaller foreground, at least half the grid, reproduced near-exactly, "
        "over agreement.EXACT_SHARE; or the share at the slice's own resolution, at least half the field of "
        "view, over native_check.NATIVE_SHARE, when higher), which verified_p also tests against a null of its "
        "own; verified_bent in "
        "[0, 1]: the higher of the verified score and the score of the candidate bent onto the slice "
        "(grid_warps.BEND_GATE), which verified_p tests against the null's own bent scores.",
    ),
    (
        "neighbors.csv",
        "the global search's top-k reference slices of every scored slice (rank 1 is slices.csv's nn_source, "
        "nn_slice): "
        + ", ".join(NEIGHBOUR_COLUMNS)
        + ". The verification also checks candidates of its own (region and patch searches), so the slice it "
        "names, slices.csv's copy_source and copy_slice, which is the provenance of a flag, may be in no row here.",
    ),
    (
        "summary.json",
        'required: "index", "null" {mean, std, n}, "threshold" {alpha, similarity, z, mi, oni}, '
        "(strict JSON: a value that is not finite, such as the similarity and z of a threshold out of the null's "
        'reach, is null), "volumes" [{volume, axis, array_axis, slices_total, slices_scored, ..., '
        "calibration_holds (optional), "
        "sample_grid (optional: a one-slice volume whose slice is a sample grid, its layout)}]; "
        'optional: "sets" [{set, rows: [first, stop), ..., calibration_holds (optional)}], "overall", '
        '"verification" {used: bool, reason: str ("" when used), k: int, views: [str], null_n: int '
        "(the verified null's scores: held-out slices as cut and blurred), "
        "threshold: float (verified score above which a slice is flagged on verification alone at alpha / 2, "
        "the Bonferroni share, whatever its roughness), bands: [{roughness_from, roughness_to (null at the open "
        "ends), n, threshold, reproduced_threshold (the near-exact part above which a slice is flagged whatever "
        "its score; absent before it), bent_threshold (the bent score above which a slice is flagged whatever its "
        "score; absent before it)}] (the same per band of the verified null, smoothest first; absent before "
        "bands), min_copy_score: float (the verified score before any bend that a flag on verification needs at "
        "least unless its bent score reaches min_bent_score; absent before it), min_bent_score: float (absent "
        "before it)}, "
        '"calibration" {holds: bool, reason: str ("" when it holds), median_z: float, limit_z: float, '
        "training_subjects: int (the index's distinct training subjects; absent before it), few_training_subjects: "
        "bool (its nulls come from held-out splits of fewer than calibration.FEW_SUBJECTS of them, so they run low "
        "and people in no index are flagged more often than alpha; absent before it)}.",
    ),
    ("null_similarity.npy", "float [n]: the null's global similarity scores."),
    (
        COPY_MASKS_FILE,
        "np.savez_compressed: key = the row number in slices.csv (0-based, as text), value = bool [rows, cols], "
        "the copy mask of that slice in its pixels as stored (flagged slices and the report's evidence slices); "
        "written by every audit (empty without masks), absent in folders written before verification.",
    ),
)


@dataclass
class SliceScore:
    """Scores of one audited slice and its nearest reference slice (``nn_flip``: the copy of it
    that matched, one of ``transforms.REFERENCE_COPIES``), and its verification (``verified_score``
    ... ``copy_box``: see :data:`FOLDER_FORMAT`; nan / defaults when not verified)."""

    slice: int
    similarity: float
    z: float
    mi: float
    oni: float
    p_value: float
    flagged: bool
    nn_source: str
    nn_slice: int
    nn_flip: str
    verified_score: float = math.nan
    verified_p: float = math.nan
    flag_p: float = math.nan
    copy_source: str = ""
    copy_slice: int = -1
    copy_transposed: bool = False
    copy_angle: float = 0.0
    copy_scale: float = 1.0
    copy_box: tuple[int, int, int, int] | None = None
    roughness: float = math.nan
    verified_reproduced: float = math.nan
    verified_bent: float = math.nan

    @property
    def verified(self) -> bool:
        """Whether the slice was verified against a training slice (a finite verified score)."""
        return math.isfinite(self.verified_score) and bool(self.copy_source)


@dataclass
class SliceRow(SliceScore):
    """A row of slices.csv: a slice's scores and the volume it belongs to (a keyword argument)."""

    volume: str = field(kw_only=True)


@dataclass
class Neighbour:
    """One of the top-k reference slices of an audited slice."""

    rank: int
    source: str
    slice: int
    flip: str
    similarity: float


class AuditedVolume(Protocol):
    """What the writer reads of one audited volume (``audit.VolumeAudit`` is one)."""

    volume: str
    scores: list[SliceScore]
    neighbours: dict[int, list[Neighbour]]


@dataclass
class AuditOutputs:
    """An audit folder as read back.

    ``rows``: slices.csv in file order; their ``nn_flip`` is the flip of the rank-1 row of
    neighbors.csv. ``neighbours``: {(volume, slice): neighbours by rank}, None when the folder has
    no neighbors.csv (then every ``nn_flip`` is ``"none"``: the flip is not known).
    ``summary``: summary.json, its null mean/std and threshold as floats (its "verification" and
    "calibration" blocks checked when present). ``null_similarity``: the finite null scores,
    float64 [n]. ``copy_masks``: {(volume, slice): bool [rows, cols]} from copy_masks.npz (empty
    when the folder has none).
    """

    folder: Path
    rows: list[SliceRow]
    neighbours: dict[tuple[str, int], list[Neighbour]] | None
    summary: dict[str, Any]
    threshold: Threshold
    null_similarity: np.ndarray
    copy_masks: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)


def strict_json(value: Any) -> Any:
    """``value`` with every NaN or infinite float as None: strict JSON (jq, JavaScript) has neither. A threshold
    out of the null's reach is infinite in memory and null in summary.json (:meth:`Threshold.from_dict`)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    return value


def format_value(value: float) -> str:
    """A float as written to the output files: 6 significant digits."""
    return f"{value:.6g}"


def format_box(box: tuple[int, int, int, int] | None) -> str:
    """A copy box as written to slices.csv: "row0 col0 row1 col1", empty for None."""
    return "" if box is None else " ".join(str(int(v)) for v in box)


def slice_row(volume: str, score: SliceScore) -> list[str | int]:
    """The slices.csv row (:data:`SLICE_COLUMNS`) of one scored slice."""
    values = (score.similarity, score.z, score.mi, score.oni, score.p_value)
    verified = (score.verified_score, score.verified_p, score.flag_p)
    return [
        volume,
        score.slice,
        *map(format_value, values),
        int(score.flagged),
        score.nn_source,
        score.nn_slice,
        *map(format_value, verified),
        score.copy_source,
        score.copy_slice,
        int(score.copy_transposed),
        format_value(score.copy_angle),
        format_value(score.copy_scale),
        format_box(score.copy_box),
        format_value(score.roughness),
        format_value(score.verified_reproduced),
        format_value(score.verified_bent),
    ]


def neighbour_row(volume: str, slice_index: int, neighbour: Neighbour) -> list[str | int]:
    """The neighbors.csv row (:data:`NEIGHBOUR_COLUMNS`) of one neighbour of a scored slice."""
    return [
        volume,
        slice_index,
        neighbour.rank,
        neighbour.source,
        neighbour.slice,
        neighbour.flip,
        format_value(neighbour.similarity),
    ]


def evidence_order(volume: str, score: SliceScore) -> tuple[int, float, float, str, int]:
    """Sort key of the report's evidence gallery on the values as written to slices.csv: flagged
    slices first, then highest mi, then highest similarity, then volume and slice."""
    return (
        int(not score.flagged),
        -float(format_value(score.mi)),
        -float(format_value(score.similarity)),
        volume,
        score.slice,
    )


# --------------------------------------------------------------------------------------------
# writing


def is_audit_folder(folder: Path) -> bool:
    """Whether ``folder`` holds an audit's outputs (its slices.csv and summary.json)."""
    return (folder / SLICES_FILE).is_file() and (folder / SUMMARY_FILE).is_file()


def written_audit_files(folder: Path) -> list[Path]:
    """The files of ``folder`` that an audit writes (its outputs and the report), present or not."""
    return [folder / name for name in (*OUTPUT_FILES, REPORT_FILE)]


def check_output_dir(out_dir: str | Path) -> Path:
    """The audit output folder as a Path; UserError when it exists but is not a folder."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a folder; choose another --out")
    return out


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[list]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _mask_rows(
    audits: Sequence[AuditedVolume], copy_masks: Mapping[tuple[str, int], np.ndarray]
) -> dict[str, np.ndarray]:
    """copy_masks.npz's content: {row number in slices.csv: bool mask}; ValueError for a mask of
    no scored slice or one that is not 2D."""
    rows = {(a.volume, s.slice): i for i, (a, s) in enumerate((a, s) for a in audits for s in a.scores)}
    out = {}
    for key, mask in copy_masks.items():
        if key not in rows:
            raise ValueError(f"copy mask for {key}, which is not a scored slice")
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim != 2:
            raise ValueError(f"copy mask for {key} has shape {mask.shape}, not [rows, cols]")
        out[str(rows[key])] = mask
    return out


def write_audit(
    audits: Sequence[AuditedVolume],
    summary: Mapping[str, Any],
    null_similarity: np.ndarray,
    out_dir: str | Path,
    copy_masks: Mapping[tuple[str, int], np.ndarray] | None = None,
) -> Path:
    """Write slices.csv, neighbors.csv, summary.json, null_similarity.npy and copy_masks.npz into ``out_dir``, and
    remove an older report.html there (it described older outputs; ``report`` or the audit writes the new one).

    ``copy_masks``: {(volume as in slices.csv, slice index): bool [rows, cols]}; the file is written
    (empty without masks) so that no older one is left beside the new rows. All or nothing
    (:func:`atomic_write.write_files`): UserError for an OSError, and nothing left behind.
    """
    out = check_output_dir(out_dir)
    masks = _mask_rows(audits, copy_masks or {})

    def write_json(path: Path) -> None:
        text = json.dumps(strict_json(summary), indent=2, sort_keys=True, allow_nan=False)
        path.write_text(text + "\n", encoding="utf-8")

    def write_null(path: Path) -> None:
        with open(path, "wb") as handle:
            np.save(handle, null_similarity)

    def write_masks(path: Path) -> None:
        with open(path, "wb") as handle:
            np.savez_compressed(handle, **masks)

    slices = (slice_row(a.volume, s) for a in audits for s in a.scores)
    neighbours = (neighbour_row(a.volume, k, nb) for a in audits for k, items in a.neighbours.items() for nb in items)
    writers = dict(
        zip(
            OUTPUT_FILES,
            (
                lambda path: _write_csv(path, SLICE_COLUMNS, slices),
                lambda path: _write_csv(path, NEIGHBOUR_COLUMNS, neighbours),
                write_json,
                write_null,
                write_masks,
            ),
        )
    )
    write_files(out, writers, what=f"the audit outputs to {out}")
    (out / REPORT_FILE).unlink(missing_ok=True)  # an older audit's report, which these outputs no longer match
    return out


# --------------------------------------------------------------------------------------------
# reading


def _read_csv(
    path: Path, columns: Sequence[str], what: str, parse: Callable[[dict[str, str]], _Parsed]
) -> list[_Parsed]:
    """``parse(record)`` of every record of a CSV file that has ``columns``; UserError on problems."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in columns if c not in (reader.fieldnames or ())]
            if missing:
                raise UserError(f"{path} is not an audit {what} (missing columns: {', '.join(missing)})")
            out = []
            for line_no, record in enumerate(reader, start=2):
                try:
                    out.append(parse(record))
                except (TypeError, ValueError) as exc:
                    raise UserError(f"{path} line {line_no} is corrupt: {exc}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text CSV file") from None
    except csv.Error as exc:
        raise UserError(f"{path} is corrupt: {exc}") from None
    return out


def _unit_or_nan(text: str, name: str) -> float:
    """A value in [0, 1] or nan (empty: nan)."""
    value = float(text) if text.strip() else math.nan
    if not (math.isnan(value) or 0.0 <= value <= 1.0):
        raise ValueError(f"{name} {text!r} is not in [0, 1]")
    return value


def parse_box(text: str) -> tuple[int, int, int, int] | None:
    """A copy box as written by :func:`format_box`; ValueError unless 4 ordered non-negative ints."""
    if not text.strip():
        return None
    parts = text.split()
    if len(parts) != 4:
        raise ValueError(f"copy_box {text!r} is not 'row0 col0 row1 col1'")
    row0, col0, row1, col1 = (int(v) for v in parts)
    if not 0 <= row0 <= row1 or not 0 <= col0 <= col1:
        raise ValueError(f"copy_box {text!r} is not 'row0 col0 row1 col1' with row0 <= row1, col0 <= col1")
    return row0, col0, row1, col1


def _zero_one(text: str, name: str) -> bool:
    if text.strip() not in ("", "0", "1"):
        raise ValueError(f"{name} {text!r} is not 0 or 1")
    return text.strip() == "1"


def _verification_fields(record: dict[str, str]) -> dict[str, Any]:
    """The verification columns of a slices.csv record (absent or empty: the defaults)."""
    get = {name: record.get(name) or "" for name in VERIFICATION_COLUMNS}
    return {
        "verified_score": _unit_or_nan(get["verified_score"], "verified_score"),
        "verified_p": _unit_or_nan(get["verified_p"], "verified_p"),
        "flag_p": _unit_or_nan(get["flag_p"], "flag_p"),
        "copy_source": get["copy_source"],
        "copy_slice": int(get["copy_slice"]) if get["copy_slice"].strip() else -1,
        "copy_transposed": _zero_one(get["copy_transposed"], "copy_transposed"),
        "copy_angle": float(get["copy_angle"]) if get["copy_angle"].strip() else 0.0,
        "copy_scale": float(get["copy_scale"]) if get["copy_scale"].strip() else 1.0,
        "copy_box": parse_box(get["copy_box"]),
        "roughness": float(get["roughness"]) if get["roughness"].strip() else math.nan,
        "verified_reproduced": _unit_or_nan(get["verified_reproduced"], "verified_reproduced"),
        "verified_bent": _unit_or_nan(get["verified_bent"], "verified_bent"),
    }


def _slice_row(record: dict[str, str]) -> SliceRow:
    return SliceRow(
        volume=record["volume"],
        slice=int(record["slice"]),
        similarity=float(record["similarity"]),
        z=float(record["z"]),
        mi=float(record["mi"]),
        oni=float(record["oni"]),
        p_value=float(record["p_value"]),
        flagged=str(record["flagged"]).strip().lower() in ("1", "true", "yes"),
        nn_source=record["nn_source"] or "",
        nn_slice=int(record["nn_slice"]),
        nn_flip=ORIGINAL,
        **_verification_fields(record),
    )


def _neighbour_row(record: dict[str, str]) -> tuple[str, int, Neighbour]:
    flip = record["flip"]
    if flip not in REFERENCE_COPIES:
        raise ValueError(f"unknown flip {flip!r}")
    neighbour = Neighbour(
        rank=int(record["rank"]),
        source=record["source"] or "",
        slice=int(record["source_slice"]),
        flip=flip,
        similarity=float(record["similarity"]),
    )
    return record["volume"], int(record["slice"]), neighbour


def _read_neighbours(path: Path, rows: list[SliceRow]) -> dict[tuple[str, int], list[Neighbour]]:
    """neighbors.csv by (volume, slice), each list by rank; sets the rows' ``nn_flip`` from rank 1."""
    neighbours: dict[tuple[str, int], list[Neighbour]] = {}
    for volume, slice_index, neighbour in _read_csv(path, NEIGHBOUR_COLUMNS, "neighbors.csv", _neighbour_row):
        neighbours.setdefault((volume, slice_index), []).append(neighbour)
    for items in neighbours.values():
        items.sort(key=lambda nb: nb.rank)
    for row in rows:
        items = neighbours.get((row.volume, row.slice))
        if items and items[0].rank == 1:
            nearest = items[0]
            if (nearest.source, nearest.slice) != (row.nn_source, row.nn_slice):
                raise UserError(
                    f"{path} does not match slices.csv (slice {row.slice} of {row.volume} has another "
                    "nearest reference slice); audit again into an empty folder"
                )
            row.nn_flip = nearest.flip
    return neighbours


def _read_summary(path: Path) -> tuple[dict[str, Any], Threshold]:
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(summary, dict):
        raise UserError(f"{path} is not an audit summary (expected a JSON object)")
    for key in _SUMMARY_KEYS:
        if key not in summary:
            raise UserError(f'{path} is not an audit summary (no "{key}" entry)')
    try:
        for key in ("mean", "std"):
            summary["null"][key] = float(summary["null"][key])
        threshold = Threshold.from_dict(summary["threshold"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path} has a corrupt null/threshold entry ({exc!r})") from None
    if not isinstance(summary["volumes"], list) or not isinstance(summary["index"], dict):
        raise UserError(f'{path} is not an audit summary (bad "volumes" or "index" entry)')
    summary["threshold"] = threshold.to_dict()
    _check_status_blocks(summary, path)
    return summary, threshold


_NUMBER = (int, float)
_STATUS_BLOCKS = {  # block: {key: (types, required)}
    "verification": {
        "used": (bool, True),
        "reason": (str, True),
        "k": (int, False),
        "views": (list, False),
        "null_n": (int, False),
        "threshold": (_NUMBER, False),
        "min_copy_score": (_NUMBER, False),
        "min_bent_score": (_NUMBER, False),
    },
    "calibration": {
        "holds": (bool, True),
        "reason": (str, True),
        "median_z": (_NUMBER, False),
        "limit_z": (_NUMBER, False),
        "training_subjects": (int, False),
        "few_training_subjects": (bool, False),
    },
}


def _check_status_blocks(summary: dict[str, Any], path: Path) -> None:
    """UserError (one line) for a malformed "verification" or "calibration" block, or a
    "calibration_holds" of a volume or set entry that is not true/false."""
    for block, keys in _STATUS_BLOCKS.items():
        if block not in summary:
            continue
        entry = summary[block]
        if not isinstance(entry, dict):
            raise UserError(f'{path} has a corrupt "{block}" entry (expected a JSON object)')
        for key, (types, required) in keys.items():
            if key not in entry and not required:
                continue
            value = entry.get(key)
            if types is _NUMBER and value is None:
                continue  # a number that was not finite (strict_json)
            if not isinstance(value, types) or (types is not bool and isinstance(value, bool)):
                raise UserError(f'{path} has a corrupt "{block}" entry ("{key}" is {value!r})')
        if not all(isinstance(v, str) for v in entry.get("views", [])):
            raise UserError(f'{path} has a corrupt "{block}" entry ("views" must be names)')
    for group in ("volumes", "sets"):
        for item in summary.get(group) or []:
            if isinstance(item, dict) and not isinstance(item.get("calibration_holds", True), bool):
                raise UserError(f'{path} has a corrupt "{group}" entry ("calibration_holds" is not true/false)')


def _read_null(path: Path) -> np.ndarray:
    try:
        null = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - numpy raises many types for corrupt files
        raise UserError(f"{path} is not a readable .npy array ({type(exc).__name__})") from None
    null = np.asarray(null, dtype=np.float64).ravel()
    return null[np.isfinite(null)]


def _read_masks(path: Path, rows: list[SliceRow]) -> dict[tuple[str, int], np.ndarray]:
    """copy_masks.npz by (volume, slice); UserError for a corrupt file, a key that is no row of
    slices.csv or a mask that is not 2D."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except Exception as exc:  # noqa: BLE001 - numpy raises many types for corrupt files
        raise UserError(f"{path} is not a readable .npz file ({type(exc).__name__})") from None
    masks = {}
    for key, mask in arrays.items():
        if not key.isdigit() or int(key) >= len(rows):
            raise UserError(f"{path} has a mask for row {key!r}, which slices.csv ({len(rows)} rows) does not have")
        if mask.ndim != 2:
            raise UserError(f"{path}: the mask of row {key} has shape {mask.shape}, not [rows, cols]")
        row = rows[int(key)]
        masks[(row.volume, row.slice)] = mask.astype(bool, copy=False)
    return masks


def read_audit(out_dir: str | os.PathLike) -> AuditOutputs:
    """Read an audit folder (neighbors.csv and copy_masks.npz optional); UserError with a one-line
    message on problems."""
    folder = Path(out_dir)
    if not folder.is_dir():
        raise UserError(f"audit folder {folder} does not exist")
    for name in (SLICES_FILE, SUMMARY_FILE, "null_similarity.npy"):
        if not (folder / name).is_file():
            raise UserError(f"{folder / name} is missing: run `memorization-index audit` into this folder first")
    rows = _read_csv(folder / SLICES_FILE, _GLOBAL_COLUMNS, SLICES_FILE, _slice_row)
    summary, threshold = _read_summary(folder / SUMMARY_FILE)
    null = _read_null(folder / "null_similarity.npy")
    neighbours_path = folder / "neighbors.csv"
    neighbours = _read_neighbours(neighbours_path, rows) if neighbours_path.is_file() else None
    masks_path = folder / COPY_MASKS_FILE
    masks = _read_masks(masks_path, rows) if masks_path.is_file() else {}
    return AuditOutputs(folder, rows, neighbours, summary, threshold, null, masks)
