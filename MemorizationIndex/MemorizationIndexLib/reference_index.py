"""The reference index: a directory of per-block FAISS indexes, whiteners, calibration and provenance.

Layout (every file's sha256 is in ``manifest.json``, verified on load)::

    manifest.json       format name + version, sha256 of every other file
    config.json         encoder, preprocessing, axis, reference copies, null settings and statistics
    provenance.csv      one row per indexed vector: source file, slice, axis, flip (which copy:
                        none, hflip, vflip, rot+4, rot-4; see transforms.py), subject
    whitener.npz        per-block mean and whitening matrix
    index_<block>.faiss one inner-product index per block: exact (flat) or IVF with exact re-ranking
    calibration.npz     the pooled null similarities
    thumbnails.npz      only with store_thumbnails: 8-bit reference slices
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import threading
import uuid
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import faiss
import numpy as np

from . import __version__
from .calibration import DEFAULT_NULL_SPLITS, DEFAULT_QUERY_FRACTION, NULL_HOLDOUT, NULL_TRAIN_SPLIT, holdout_null, train_split_null
from .embedding import ProgressCallback, embed_slices
from .encoders import load_encoder
from .encoders.base import Encoder, file_sha256
from .errors import UserError
from .preprocess import PreprocessSettings, nonempty_mask, scale_unit
from .scoring import DEFAULT_ALPHA, NullModel
from .search import AUTO, CONFIG_KIND, Neighbours, build_block_index, describe_index, prepare_loaded, resolve_index_kind, search_blocks
from .transforms import ORIGINAL, REFERENCE_COPIES, reference_copy
from .volumes import axis_name, expand_inputs, image_slices, read_image, resolve_axis, validate_inputs
from .whitening import ShrinkageWhitener

FORMAT_NAME = "memorization-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PROVENANCE_COLUMNS = ("row", "source", "slice", "axis", "array_axis", "flip", "original_row", "subject")
_REQUIRED_FILES = ("config.json", "provenance.csv", "whitener.npz", "calibration.npz")
_SAFE_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_SAFE_BLOCK_NAME = re.compile(r"^[A-Za-z0-9_]+$")
VOLUME_CACHE_SIZE = 4  # training volumes kept in memory for reference_slice (report galleries, Slicer)


@dataclass(frozen=True)
class EncoderInfo:
    """What identifies the encoder an index was built with."""

    name: str
    encoder_id: str
    weights_sha256: str
    input_size: int
    blocks: tuple[str, ...]
    checkpoint: str | None = None

    @classmethod
    def of(cls, encoder: Encoder, checkpoint: str | Path | None = None) -> "EncoderInfo":
        """Describe a loaded encoder."""
        return cls(encoder.name, encoder.encoder_id, encoder.weights_sha256, encoder.input_size, tuple(encoder.blocks), str(checkpoint) if checkpoint else None)


@dataclass
class Provenance:
    """Where every indexed vector came from (no pixels)."""

    source: list[str] = field(default_factory=list)
    slice: list[int] = field(default_factory=list)
    axis: list[str] = field(default_factory=list)
    array_axis: list[int] = field(default_factory=list)
    flip: list[str] = field(default_factory=list)
    original_row: list[int] = field(default_factory=list)
    subject: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.source)

    def append(self, source: str, slice_index: int, axis: str, array_axis: int, flip: str, original_row: int, subject: str) -> None:
        """Add one row."""
        for name, value in zip(PROVENANCE_COLUMNS[1:], (source, slice_index, axis, array_axis, flip, original_row, subject)):
            getattr(self, name).append(value)

    def write(self, path: Path) -> None:
        """Write as CSV."""
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(PROVENANCE_COLUMNS)
            for row in range(len(self)):
                writer.writerow([row] + [getattr(self, name)[row] for name in PROVENANCE_COLUMNS[1:]])

    @classmethod
    def read(cls, path: Path) -> "Provenance":
        """Read the CSV written by :meth:`write` (repeated strings are shared, keeping large tables small)."""
        table = cls()
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            if tuple(next(reader, ())) != PROVENANCE_COLUMNS:
                raise UserError(f"{path} does not have the provenance columns {','.join(PROVENANCE_COLUMNS)}; rebuild the index")
            for _, source, slice_index, axis, array_axis, flip, original_row, subject in reader:
                table.append(sys.intern(source), int(slice_index), sys.intern(axis), int(array_axis), sys.intern(flip), int(original_row), sys.intern(subject))
        return table


def subject_of(path: Path, pattern: str | None) -> str:
    """Subject id of a file: the first group (or whole match) of ``pattern`` in its path, else the path."""
    if pattern is None:
        return str(path)
    match = re.search(pattern, str(path))
    if match is None:
        raise UserError(f"--subject-pattern {pattern!r} does not match {path}; fix the pattern")
    return match.group(1) if match.groups() else match.group(0)


class ReferenceIndex:
    """A loaded (verified) reference index, ready to whiten and search query features."""

    def __init__(self, path: Path, config: dict, provenance: Provenance, whiteners: dict[str, ShrinkageWhitener], indexes: dict[str, faiss.Index], null_similarity: np.ndarray, index_id: str):
        self.path = path
        self.config = config
        self.provenance = provenance
        self.whiteners = whiteners
        self.indexes = indexes
        self.null_similarity = null_similarity
        self.index_id = index_id
        self._thumbnails: dict[str, np.ndarray] | None = None
        self._volume_cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()  # most recent last
        self._original_rows: dict[tuple[str, int], int] | None = None
        self._lock = threading.Lock()
        self.searcher = None  # optional replacement of search_blocks (e.g. the Ray engine)

    encoder_name = property(lambda self: self.config["encoder"]["name"])
    encoder_id = property(lambda self: self.config["encoder"]["encoder_id"])
    weights_sha256 = property(lambda self: self.config["encoder"]["weights_sha256"])
    axis = property(lambda self: self.config["axis"])
    null_type = property(lambda self: self.config["null"]["type"])
    store_thumbnails = property(lambda self: bool(self.config["store_thumbnails"]))
    preprocessing = property(lambda self: PreprocessSettings.from_dict(self.config["preprocessing"]))
    default_alpha = property(lambda self: float(self.config["default_alpha"]))
    index_kind = property(lambda self: "ivf" if self.config.get("index_kind") == "ivf-flat-ip" else "flat")

    @property
    def n_reference_slices(self) -> int:
        """Number of (unflipped) reference slices."""
        return sum(1 for flip in self.provenance.flip if flip == ORIGINAL)

    @property
    def null_model(self) -> NullModel:
        """The calibration null."""
        return NullModel(self.null_similarity)

    @classmethod
    def load(cls, index_dir: str | Path) -> "ReferenceIndex":
        """Load and verify an index directory; bad or foreign indexes raise UserError."""
        path = Path(index_dir)
        manifest = _read_manifest(path)
        for name, digest in manifest["files"].items():
            file_path = path / name
            if not file_path.is_file():
                raise UserError(f"index {path} is missing {name}; rebuild it with build-index")
            if file_sha256(file_path) != digest:
                raise UserError(f"index {path}: checksum of {name} does not match the manifest (corrupted or edited); rebuild it")
        try:
            return cls._load_verified(path, manifest)
        except UserError:
            raise
        except (KeyError, IndexError, ValueError, TypeError, AttributeError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise UserError(f"index {path} is damaged or was written by another version ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'}); rebuild it") from None

    @classmethod
    def _load_verified(cls, path: Path, manifest: dict) -> "ReferenceIndex":
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        _check_config(path, config, manifest)
        provenance = Provenance.read(path / "provenance.csv")
        blocks = config["encoder"]["blocks"]
        with np.load(path / "whitener.npz") as data:
            whiteners = {b: ShrinkageWhitener.from_state({k: data[f"{b}/{k}"] for k in ("mean", "whitening_matrix", "shrinkage", "eps")}) for b in blocks}
        indexes = {}
        for block in blocks:
            try:
                indexes[block] = prepare_loaded(faiss.read_index(str(path / f"index_{block}.faiss")), config.get("ivf", {}).get("nprobe"))
            except RuntimeError:
                raise UserError(f"index {path}: index_{block}.faiss cannot be read (truncated?); rebuild it") from None
            if indexes[block].ntotal != len(provenance):
                raise UserError(f"index {path}: index_{block}.faiss holds {indexes[block].ntotal} vectors but provenance has {len(provenance)} rows; rebuild it")
            if indexes[block].d != whiteners[block].whitening_matrix_.shape[0]:
                raise UserError(f"index {path}: index_{block}.faiss has dimension {indexes[block].d} but its whitener {whiteners[block].whitening_matrix_.shape[0]}; rebuild it")
        with np.load(path / "calibration.npz") as data:
            null_similarity = np.asarray(data["null_similarity"], dtype=np.float64)
        if null_similarity.ndim != 1 or len(null_similarity) < 2 or not np.isfinite(null_similarity).all():
            raise UserError(f"index {path}: its calibration null is empty or not finite; rebuild it")
        return cls(path, config, provenance, whiteners, indexes, null_similarity, manifest["index_id"])

    def whiten(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Whiten + L2-normalise raw per-block features with the index's whiteners."""
        return {block: self.whiteners[block].transform(raw[block]) for block in self.whiteners}

    def search(self, whitened: dict[str, np.ndarray], k: int = 5) -> Neighbours:
        """Nearest references of whitened query features."""
        if self.searcher is not None:
            return self.searcher(whitened, k)
        return search_blocks(self.indexes, whitened, k=k)

    def check_encoder(self, encoder: Encoder) -> None:
        """Refuse an encoder other than the one the index was built with."""
        info = self.config["encoder"]
        if encoder.name != info["name"] or encoder.encoder_id != info["encoder_id"]:
            raise UserError(f"index {self.path} was built with encoder {info['encoder_id']}, not {encoder.encoder_id}; use the same encoder or rebuild the index")
        if encoder.weights_sha256 != info["weights_sha256"]:
            raise UserError(f"index {self.path} was built with other {info['name']} weights (sha256 {info['weights_sha256'][:12]}…); use that checkpoint or rebuild the index")

    def load_encoder(self, *, checkpoint: str | Path | None = None, device: str = "cpu") -> Encoder:
        """Load the encoder this index was built with (a checkpoint path overrides the recorded one)."""
        info = self.config["encoder"]
        encoder = load_encoder(info["name"], checkpoint=checkpoint or info.get("checkpoint"), device=device, blocks=info["blocks"])
        self.check_encoder(encoder)
        return encoder

    def reference_slice(self, source: str, slice_index: int) -> np.ndarray | None:
        """The 2D reference slice as cut (unflipped): thumbnail, else read from the source file, else None."""
        prov = self.provenance
        with self._lock:
            if self._original_rows is None:
                self._original_rows = {}
                for r in range(len(prov)):
                    if prov.flip[r] == ORIGINAL:
                        self._original_rows.setdefault((prov.source[r], prov.slice[r]), r)
        row = self._original_rows.get((source, slice_index))
        if row is None:
            return None
        if self.store_thumbnails:
            with self._lock:
                if self._thumbnails is None:
                    with np.load(self.path / "thumbnails.npz") as data:
                        self._thumbnails = {k: data[k] for k in data.files}
            return self._thumbnails[str(row)].astype(np.float32) / 255.0
        key = (source, self.provenance.array_axis[row])
        with self._lock:
            if key in self._volume_cache:
                self._volume_cache.move_to_end(key)
            else:
                try:
                    self._volume_cache[key] = image_slices(read_image(source), key[1])
                except UserError:
                    return None
                while len(self._volume_cache) > VOLUME_CACHE_SIZE:
                    self._volume_cache.popitem(last=False)
            stack = self._volume_cache[key]
        # A copy, so that the slice does not keep its whole volume in memory after eviction.
        return np.array(stack[slice_index], dtype=np.float32) if 0 <= slice_index < len(stack) else None


def _read_manifest(path: Path) -> dict:
    manifest_path = path / MANIFEST
    if not path.is_dir() or not manifest_path.is_file():
        raise UserError(f"{path} is not a reference index folder (no {MANIFEST}); build one with build-index")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{manifest_path} is not valid JSON; rebuild the index") from None
    if manifest.get("format") != FORMAT_NAME:
        raise UserError(f"{path} is not a {FORMAT_NAME} index")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"index {path} has format version {manifest.get('format_version')}, this tool reads version {FORMAT_VERSION}; rebuild the index with this version")
    files = manifest.get("files")
    if not isinstance(files, dict) or not isinstance(manifest.get("index_id"), str):
        raise UserError(f"{manifest_path} lacks its file list or index id; rebuild the index")
    for name, digest in files.items():
        if not isinstance(name, str) or not _SAFE_FILE_NAME.match(name) or not isinstance(digest, str):
            raise UserError(f"{manifest_path} lists an invalid entry {name!r}; rebuild the index")
    missing = [name for name in _REQUIRED_FILES if name not in files]
    if missing:
        raise UserError(f"index {path}: the manifest does not cover {', '.join(missing)}; rebuild the index")
    return manifest


def _check_config(path: Path, config: dict, manifest: dict) -> None:
    """Refuse a config this version cannot use (checked after the checksums, before anything else)."""
    encoder = config["encoder"]
    blocks = encoder["blocks"]
    if not isinstance(blocks, list) or not blocks or not all(isinstance(b, str) and _SAFE_BLOCK_NAME.match(b) for b in blocks):
        raise UserError(f"index {path}: invalid encoder block list {blocks!r}; rebuild it")
    unverified = [f"index_{b}.faiss" for b in blocks if f"index_{b}.faiss" not in manifest["files"]]
    if unverified:
        raise UserError(f"index {path}: the manifest does not cover {', '.join(unverified)}; rebuild the index")
    try:
        PreprocessSettings.from_dict(config["preprocessing"])
    except TypeError:
        known = set(PreprocessSettings().to_dict())
        raise UserError(f"index {path} uses preprocessing settings this version does not know ({', '.join(sorted(set(config['preprocessing']) - known)) or 'incomplete'}); use the version that built it or rebuild the index") from None
    if config["axis"] not in ("auto", "axial", "coronal", "sagittal"):
        raise UserError(f"index {path} has an unknown slicing axis {config['axis']!r}; rebuild it")


def _write_atomically(out_dir: Path, overwrite: bool, write) -> None:
    """Write into a temporary sibling folder, then rename it into place; nothing partial survives."""
    out_dir = Path(out_dir)
    check_index_output(out_dir, overwrite)
    created = [d for d in out_dir.parents if not d.exists()]
    _remove_abandoned_builds(out_dir)
    owner = f"{socket.gethostname()}-{os.getpid()}"  # in the temporary names: whose build it is
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{owner}-{uuid.uuid4().hex[:8]}"
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        write(tmp)
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{owner}-{uuid.uuid4().hex[:8]}"
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in created:  # parents this build made, deepest first
            try:
                folder.rmdir()
            except OSError:
                break
        if isinstance(exc, OSError):
            raise UserError(f"cannot write {out_dir}: {exc.strerror or exc}") from None
        if isinstance(exc, RuntimeError) and not isinstance(exc, NotImplementedError):  # faiss reports write failures so
            raise UserError(f"cannot write {out_dir}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else 'write failed'}") from None
        raise


def _remove_abandoned_builds(out_dir: Path) -> None:
    """Remove the temporary folders that builds of ``out_dir`` on this host left when they were
    killed (SIGKILL, power loss): their process id no longer runs."""
    pattern = re.compile(rf"^\.{re.escape(out_dir.name)}\.(tmp|old)-{re.escape(socket.gethostname())}-(\d+)-[0-9a-f]{{8}}$")
    if not out_dir.parent.is_dir():
        return
    for entry in out_dir.parent.iterdir():
        match = pattern.match(entry.name)
        if match and entry.is_dir() and not _process_runs(int(match.group(2))):
            shutil.rmtree(entry, ignore_errors=True)


def _process_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def check_index_output(out_dir: str | Path, overwrite: bool) -> None:
    """Refuse an index output that exists (unless ``overwrite``) or that is not an index folder.

    ``overwrite`` replaces only an empty folder or an existing index (a folder with a manifest),
    never another folder or a file.
    """
    out_dir = Path(out_dir)
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise UserError(f"output {out_dir} exists and is not a folder; choose another --out")
    if not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise UserError(f"output {out_dir} already exists; choose another --out or pass --overwrite")
    if not (out_dir / MANIFEST).is_file():
        raise UserError(f"output {out_dir} is a folder that is not a reference index; --overwrite only replaces an index, choose another --out")


def build_index_from_features(
    features: dict[str, np.ndarray],
    provenance: Provenance,
    out_dir: str | Path,
    *,
    encoder_info: EncoderInfo,
    preprocessing: PreprocessSettings = PreprocessSettings(),
    axis: str = "auto",
    holdout_features: dict[str, np.ndarray] | None = None,
    null_splits: int = DEFAULT_NULL_SPLITS,
    null_query_fraction: float = DEFAULT_QUERY_FRACTION,
    seed: int = 0,
    thumbnails: dict[int, np.ndarray] | None = None,
    overwrite: bool = False,
    shrinkage: str | float = "ledoit-wolf",
    index_kind: str = AUTO,
) -> ReferenceIndex:
    """Build and save an index from raw per-block features (e.g. computed elsewhere on a GPU).

    ``features[block]`` has one row per provenance row; rows with flip ``"none"`` are the
    reference slices, other rows are their flipped or rotated copies (transforms.py) pointing at
    them via ``original_row``.
    """
    n = len(provenance)
    if n < 2 or any(len(v) != n for v in features.values()):
        raise UserError(f"need at least 2 reference slices with one feature row each (got {n} provenance rows, {[len(v) for v in features.values()]} feature rows)")
    if set(features) != set(encoder_info.blocks):
        raise UserError(f"feature blocks {sorted(features)} do not match the encoder's blocks {list(encoder_info.blocks)}")
    whiteners = {b: ShrinkageWhitener(shrinkage=shrinkage, seed=seed).fit(features[b]) for b in encoder_info.blocks}
    kind = resolve_index_kind(index_kind, n)
    indexes = {b: build_block_index(whiteners[b].transform(features[b]), kind, seed=seed) for b in encoder_info.blocks}
    flips = np.asarray(provenance.flip)
    original_rows = np.flatnonzero(flips == ORIGINAL)
    if holdout_features is not None:
        null = holdout_null(indexes, {b: whiteners[b].transform(holdout_features[b]) for b in encoder_info.blocks})
        null_info = {"type": NULL_HOLDOUT, "n_splits": 0}
    else:
        subjects = np.asarray(provenance.subject)[original_rows]
        null, used_splits = train_split_null(
            features, original_rows, np.asarray(provenance.original_row), subjects,
            lambda: ShrinkageWhitener(shrinkage=shrinkage, seed=seed), n_splits=null_splits, query_fraction=null_query_fraction, seed=seed,
        )
        null_info = {"type": NULL_TRAIN_SPLIT, "n_splits": used_splits, "query_fraction": null_query_fraction, "groups": "subjects" if len(set(subjects)) > 1 else "slabs"}
    model = NullModel(null)
    config = {
        "tool_version": __version__,
        "encoder": {"name": encoder_info.name, "encoder_id": encoder_info.encoder_id, "weights_sha256": encoder_info.weights_sha256, "input_size": encoder_info.input_size, "blocks": list(encoder_info.blocks), "checkpoint": encoder_info.checkpoint},
        "preprocessing": preprocessing.to_dict(),
        "axis": axis,
        "reference_copies": sorted(set(provenance.flip)),
        "whitening": {"method": "zca", "shrinkage": shrinkage, "values": {b: whiteners[b].shrinkage_ for b in encoder_info.blocks}},
        "aggregation": "geometric mean over blocks of max(cos, 0)",
        "null": {**null_info, "seed": seed, "n": int(len(null)), "mean": model.mean, "std": model.std},
        "default_alpha": DEFAULT_ALPHA,
        "index_kind": CONFIG_KIND[kind],
        **({"ivf": {k: v for k, v in describe_index(indexes[encoder_info.blocks[0]]).items() if k != "kind"}} if kind != "flat" else {}),
        "n_vectors": n,
        "n_reference_slices": int(len(original_rows)),
        "store_thumbnails": thumbnails is not None,
    }

    def write(tmp: Path) -> None:
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
        provenance.write(tmp / "provenance.csv")
        np.savez(tmp / "whitener.npz", **{f"{b}/{k}": v for b in encoder_info.blocks for k, v in whiteners[b].state().items()})
        for block, index in indexes.items():
            faiss.write_index(index, str(tmp / f"index_{block}.faiss"))
        np.savez(tmp / "calibration.npz", null_similarity=null)
        if thumbnails is not None:
            np.savez_compressed(tmp / "thumbnails.npz", **{str(row): image for row, image in thumbnails.items()})
        files = {p.name: file_sha256(p) for p in sorted(tmp.iterdir())}
        index_id = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
        manifest = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "index_id": index_id, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")

    _write_atomically(Path(out_dir), overwrite, write)
    return ReferenceIndex.load(out_dir)


@dataclass
class SliceSet:
    """Slices cut from a list of volumes, with provenance of each (unflipped) slice."""

    slices: list[np.ndarray] = field(default_factory=list)
    provenance: Provenance = field(default_factory=Provenance)
    skipped_empty: int = 0


def collect_slices(paths: Sequence[str | Path], *, axis: str, preprocessing: PreprocessSettings, subject_pattern: str | None = None, slice_stride: int = 1, series: str | None = None, volume_index: int | None = None) -> SliceSet:
    """Read volumes and keep their non-empty slices (every ``slice_stride``-th) with provenance."""
    result = SliceSet()
    for path in expand_inputs(list(paths)):
        image = read_image(path, series=series, volume_index=volume_index)
        array_axis = resolve_axis(image, axis)
        stack = image_slices(image, array_axis)
        keep = nonempty_mask(stack, preprocessing)
        result.skipped_empty += int((~keep).sum())
        subject = subject_of(path, subject_pattern)
        plane = axis_name(image, array_axis)
        for k in np.flatnonzero(keep)[::slice_stride]:
            result.provenance.append(str(path.resolve()), int(k), plane, array_axis, ORIGINAL, len(result.provenance), subject)
            result.slices.append(stack[k].copy())  # a copy: the volume itself is not kept alive
    return result


def build_index(
    train_paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    encoder: Encoder | None = None,
    encoder_name: str = "default",
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    axis: str = "auto",
    holdout_paths: Sequence[str | Path] | None = None,
    reference_copies: bool = True,
    store_thumbnails: bool = False,
    null_splits: int = DEFAULT_NULL_SPLITS,
    seed: int = 0,
    subject_pattern: str | None = None,
    slice_stride: int = 1,
    batch_size: int = 32,
    preprocessing: PreprocessSettings = PreprocessSettings(),
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    index_kind: str = AUTO,
    series: str | None = None,
    volume_index: int | None = None,
) -> ReferenceIndex:
    """Read training volumes, embed their slices (and, with ``reference_copies``, their flipped and
    rotated copies: transforms.REFERENCE_COPIES), and save a reference index.

    The output folder and every input's header are checked before any work; the index is
    written into a temporary sibling folder and renamed into place (see ``_write_atomically``).
    """
    if slice_stride < 1:
        raise UserError("--slice-stride must be 1 or more")
    check_index_output(out_dir, overwrite)
    validate_inputs(list(train_paths), series=series, volume_index=volume_index)
    if holdout_paths:
        validate_inputs(list(holdout_paths), series=series, volume_index=volume_index)
    if encoder is None:
        encoder = load_encoder(encoder_name, checkpoint=checkpoint, device=device)
    train = collect_slices(train_paths, axis=axis, preprocessing=preprocessing, subject_pattern=subject_pattern, slice_stride=slice_stride, series=series, volume_index=volume_index)
    if len(train.slices) < 2:
        raise UserError(f"the training inputs hold {len(train.slices)} non-empty slices; an index needs at least 2")
    holdout = collect_slices(holdout_paths, axis=axis, preprocessing=preprocessing, series=series, volume_index=volume_index) if holdout_paths else None
    if holdout is not None and len(holdout.slices) < 2:
        raise UserError("the --holdout inputs hold fewer than 2 non-empty slices")
    if holdout is None and len(set(train.provenance.subject)) < 2 and len(train.slices) < 20:
        raise UserError("a single training subject needs at least 20 non-empty slices to calibrate; add subjects or --holdout data")
    copies = REFERENCE_COPIES if reference_copies else (ORIGINAL,)
    n = len(train.slices)
    provenance = Provenance()
    all_slices: list[np.ndarray] = []
    for copy in copies:
        for row in range(n):
            p = train.provenance
            provenance.append(p.source[row], p.slice[row], p.axis[row], p.array_axis[row], copy, row, p.subject[row])
            all_slices.append(reference_copy(train.slices[row], copy))
    total = len(all_slices) + (len(holdout.slices) if holdout else 0)
    offset = len(all_slices)
    features = embed_slices(encoder, all_slices, preprocessing, batch_size=batch_size, progress=progress and (lambda d, t: progress(d, total)), cancel=cancel)
    holdout_features = None
    if holdout is not None:
        holdout_features = embed_slices(encoder, holdout.slices, preprocessing, batch_size=batch_size, progress=progress and (lambda d, t: progress(offset + d, total)), cancel=cancel)
    thumbnails = {row: np.round(scale_unit(train.slices[row], preprocessing) * 255).astype(np.uint8) for row in range(n)} if store_thumbnails else None
    return build_index_from_features(
        features, provenance, out_dir, encoder_info=EncoderInfo.of(encoder, checkpoint), preprocessing=preprocessing, axis=axis,
        holdout_features=holdout_features, null_splits=null_splits, seed=seed, thumbnails=thumbnails, overwrite=overwrite,
        index_kind=index_kind,
    )
