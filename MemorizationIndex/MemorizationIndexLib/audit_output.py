"""The audit's output folder: its file formats, the writer and one checked reader.

An audit folder holds ``slices.csv`` (one row per scored slice, :data:`SLICE_COLUMNS`),
``neighbors.csv`` (the top-k reference slices of each scored slice, :data:`NEIGHBOUR_COLUMNS`),
``summary.json`` and ``null_similarity.npy`` (formats in docs/api-contract.md). Floats are written
with 6 significant digits. The audit writes the folder; the report and the Slicer module read it
back with :func:`read_audit`.
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

SLICE_COLUMNS = ("volume", "slice", "similarity", "z", "mi", "oni", "p_value", "flagged", "nn_source", "nn_slice")
NEIGHBOUR_COLUMNS = ("volume", "slice", "rank", "source", "source_slice", "flip", "similarity")
OUTPUT_FILES = ("slices.csv", "neighbors.csv", "summary.json", "null_similarity.npy")
_SUMMARY_KEYS = ("index", "null", "threshold", "volumes")
_Parsed = TypeVar("_Parsed")


@dataclass
class SliceScore:
    """Scores of one audited slice and its nearest reference slice (``nn_flip``: the copy of it
    that matched, one of ``transforms.REFERENCE_COPIES``)."""

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


@dataclass
class SliceRow(SliceScore):
    """A row of slices.csv: a slice's scores and the volume it belongs to."""

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
    ``summary``: summary.json, its null mean/std and threshold as floats. ``null_similarity``:
    the finite null scores, float64 [n].
    """

    folder: Path
    rows: list[SliceRow]
    neighbours: dict[tuple[str, int], list[Neighbour]] | None
    summary: dict[str, Any]
    threshold: Threshold
    null_similarity: np.ndarray


def format_value(value: float) -> str:
    """A float as written to the output files: 6 significant digits."""
    return f"{value:.6g}"


def slice_row(volume: str, score: SliceScore) -> list[str | int]:
    """The slices.csv row (:data:`SLICE_COLUMNS`) of one scored slice."""
    values = (score.similarity, score.z, score.mi, score.oni, score.p_value)
    return [volume, score.slice, *map(format_value, values), int(score.flagged), score.nn_source, score.nn_slice]


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


def evidence_order(volume: str, score: SliceScore) -> tuple[float, float, str, int]:
    """Sort key of the report's evidence gallery on the values as written to slices.csv: highest
    mi, then highest similarity, then volume and slice."""
    return -float(format_value(score.mi)), -float(format_value(score.similarity)), volume, score.slice


# --------------------------------------------------------------------------------------------
# writing


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


def write_audit(
    audits: Sequence[AuditedVolume], summary: Mapping[str, Any], null_similarity: np.ndarray, out_dir: str | Path
) -> Path:
    """Write slices.csv, neighbors.csv, summary.json and null_similarity.npy into ``out_dir``.

    All or nothing (:func:`atomic_write.write_files`): UserError for an OSError, and nothing left behind.
    """
    out = check_output_dir(out_dir)

    def write_json(path: Path) -> None:
        path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    def write_null(path: Path) -> None:
        with open(path, "wb") as handle:
            np.save(handle, null_similarity)

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
            ),
        )
    )
    return write_files(out, writers, what=f"the audit outputs to {out}")


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
    return summary, threshold


def _read_null(path: Path) -> np.ndarray:
    try:
        null = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - numpy raises many types for corrupt files
        raise UserError(f"{path} is not a readable .npy array ({type(exc).__name__})") from None
    null = np.asarray(null, dtype=np.float64).ravel()
    return null[np.isfinite(null)]


def read_audit(out_dir: str | os.PathLike) -> AuditOutputs:
    """Read an audit folder (neighbors.csv optional); UserError with a one-line message on problems."""
    folder = Path(out_dir)
    if not folder.is_dir():
        raise UserError(f"audit folder {folder} does not exist")
    for name in ("slices.csv", "summary.json", "null_similarity.npy"):
        if not (folder / name).is_file():
            raise UserError(f"{folder / name} is missing: run `memorization-index audit` into this folder first")
    rows = _read_csv(folder / "slices.csv", SLICE_COLUMNS, "slices.csv", _slice_row)
    summary, threshold = _read_summary(folder / "summary.json")
    null = _read_null(folder / "null_similarity.npy")
    neighbours_path = folder / "neighbors.csv"
    neighbours = _read_neighbours(neighbours_path, rows) if neighbours_path.is_file() else None
    return AuditOutputs(folder, rows, neighbours, summary, threshold, null)
