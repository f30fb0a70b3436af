"""The reference index: a directory of per-block FAISS indexes, whiteners, calibration and provenance.

Layout (every file's sha256 is in ``manifest.json``, verified on load)::

    manifest.json       format name + version, sha256 of every other file
    config.json         encoder, preprocessing, axis, reference copies, null settings and statistics
    provenance.csv      one row per indexed vector: source file, slice, axis, flip (which copy:
                        none, hflip, vflip, rot+4, rot-4, transpose, rot+90, rot-90;
                        see transforms.py), subject
    whitener.npz        per-block mean and whitening matrix
    index_<block>.faiss one inner-product index per block: exact (flat) or IVF with exact re-ranking
    calibration.npz     the pooled null similarities, the feature energy of the same held-out slices
                        (absent in indexes built before it; docs/method.md §8.1), the verified null
    thumbnails.npz      only with store_thumbnails: 8-bit reference slices
    regions.faiss       the region search's coarse tiles of the reference slices as cut, regions_fine.faiss
                        their fine tiles, with region_whiteners.npz
                        (their whiteners and original rows); absent when the encoder has no feature maps
                        or the index was built before it (region_search.py)
    regions_patch.faiss only with store_thumbnails: the patch search's pixel patches of the reference slices as cut,
                        with region_patches.npz (their slices and places); without it an audit makes them from
                        the training volumes (patch_search.py)
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import sys
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from .calibration import feature_energy
from .encoders import load_encoder
from .encoders.base import Encoder, file_sha256
from .encoders.tiles import PIXEL_GRID, pixel_tiles
from .errors import UserError
from .preprocess import PreprocessSettings, framed, prepare_batch
from .region_search import RegionIndex
from .scoring import NullModel
from .search import Neighbours, prepare_loaded, search_blocks
from .transforms import ORIGINAL
from .verified_null import VerifiedNull
from .volume_cache import SliceStackCache
from .whitening import ShrinkageWhitener

FORMAT_NAME = "memorization-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PROVENANCE_COLUMNS = ("row", "source", "slice", "axis", "array_axis", "flip", "original_row", "subject")
_REQUIRED_FILES = ("config.json", "provenance.csv", "whitener.npz", "calibration.npz")
_SAFE_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_SAFE_BLOCK_NAME = re.compile(r"^[A-Za-z0-9_]+$")


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
    def of(cls, encoder: Encoder, checkpoint: str | Path | None = None) -> EncoderInfo:
        """Describe a loaded encoder."""
        return cls(
            encoder.name,
            encoder.encoder_id,
            encoder.weights_sha256,
            encoder.input_size,
            tuple(encoder.blocks),
            str(checkpoint) if checkpoint else None,
        )


SMALL_IMAGE_BATCH = 256  # reference slices read and averaged down together (:meth:`ReferenceIndex.small_images`)


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

    def append(
        self, source: str, slice_index: int, axis: str, array_axis: int, flip: str, original_row: int, subject: str
    ) -> None:
        """Add one row."""
        for name, value in zip(
            PROVENANCE_COLUMNS[1:], (source, slice_index, axis, array_axis, flip, original_row, subject)
        ):
            getattr(self, name).append(value)

    def write(self, path: Path) -> None:
        """Write as CSV."""
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(PROVENANCE_COLUMNS)
            for row in range(len(self)):
                writer.writerow([row] + [getattr(self, name)[row] for name in PROVENANCE_COLUMNS[1:]])

    @classmethod
    def read(cls, path: Path) -> Provenance:
        """Read the CSV written by :meth:`write` (repeated strings are shared, keeping large tables small)."""
        table = cls()
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            if tuple(next(reader, ())) != PROVENANCE_COLUMNS:
                raise UserError(
                    f"{path} does not have the provenance columns {','.join(PROVENANCE_COLUMNS)}; rebuild the index"
                )
            for _, source, slice_index, axis, array_axis, flip, original_row, subject in reader:
                table.append(
                    sys.intern(source),
                    int(slice_index),
                    sys.intern(axis),
                    int(array_axis),
                    sys.intern(flip),
                    int(original_row),
                    sys.intern(subject),
                )
        return table


class ReferenceIndex:
    """A loaded (verified) reference index, ready to whiten and search query features."""

    def __init__(
        self,
        path: Path,
        config: dict,
        provenance: Provenance,
        whiteners: dict[str, ShrinkageWhitener],
        indexes: dict[str, faiss.Index],
        null_similarity: np.ndarray,
        index_id: str,
    ):
        self.path = path
        self.config = config
        self.provenance = provenance
        self.whiteners = whiteners
        self.indexes = indexes
        self.null_similarity = null_similarity
        self.index_id = index_id
        self._thumbnails: dict[str, np.ndarray] | None = None
        self._volume_cache = SliceStackCache()  # training volumes read for reference_slice
        self._original_rows: dict[tuple[str, int], int] | None = None
        self._lock = threading.Lock()
        self.searcher = None  # optional replacement of search_blocks (e.g. the Ray engine)
        self.verified_null: VerifiedNull | None = None  # the second stage's null (None: global score only)
        self.null_energy: np.ndarray | None = None  # feature energy of the null's held-out slices (None: not recorded)
        self.regions: RegionIndex | None = None  # the region search of the second stage (None: the index has none)

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
    def candidates(self) -> int:
        """Candidates the second stage verifies per query slice (as when the verified null was made)."""
        return int(self.config.get("verification", {}).get("k", 0))

    @property
    def n_reference_slices(self) -> int:
        """Number of (unflipped) reference slices."""
        return sum(1 for flip in self.provenance.flip if flip == ORIGINAL)

    @property
    def reference_plane(self) -> str:
        """The patient plane all reference slices lie in (provenance.csv's ``axis``), or ``auto`` when they lie in
        several."""
        planes = set(self.provenance.axis)
        return planes.pop() if len(planes) == 1 else "auto"

    @property
    def array_axis(self) -> int | None:
        """The numpy axis all reference slices were cut along (provenance.csv's ``array_axis``), or None when they
        were cut along several."""
        axes = set(self.provenance.array_axis)
        return axes.pop() if len(axes) == 1 else None

    @property
    def n_subjects(self) -> int:
        """Number of distinct training subjects."""
        return len(set(self.provenance.subject))

    @property
    def null_model(self) -> NullModel:
        """The calibration null."""
        return NullModel(self.null_similarity)

    @classmethod
    def load(cls, index_dir: str | Path) -> ReferenceIndex:
        """Load and verify an index directory; bad or foreign indexes raise UserError."""
        path = Path(index_dir)
        manifest = _read_manifest(path)
        for name, digest in manifest["files"].items():
            file_path = path / name
            if not file_path.is_file():
                raise UserError(f"index {path} is missing {name}; rebuild it with build-index")
            if file_sha256(file_path) != digest:
                raise UserError(
                    f"index {path}: checksum of {name} does not match the manifest (corrupted or edited); rebuild it"
                )
        try:
            return cls._load_verified(path, manifest)
        except UserError:
            raise
        except (
            KeyError,
            IndexError,
            ValueError,
            TypeError,
            AttributeError,
            OSError,
            EOFError,
            zipfile.BadZipFile,
        ) as exc:
            raise UserError(
                f"index {path} is damaged or was written by another version ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'}); rebuild it"
            ) from None

    @classmethod
    def _load_verified(cls, path: Path, manifest: dict) -> ReferenceIndex:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        _check_config(path, config, manifest)
        provenance = Provenance.read(path / "provenance.csv")
        blocks = config["encoder"]["blocks"]
        with np.load(path / "whitener.npz") as data:
            whiteners = {
                b: ShrinkageWhitener.from_state(
                    {k: data[f"{b}/{k}"] for k in ("mean", "whitening_matrix", "shrinkage", "eps")}
                )
                for b in blocks
            }
        indexes = {}
        for block in blocks:
            try:
                indexes[block] = prepare_loaded(
                    faiss.read_index(str(path / f"index_{block}.faiss")), config.get("ivf", {}).get("nprobe")
                )
            except RuntimeError:
                raise UserError(f"index {path}: index_{block}.faiss cannot be read (truncated?); rebuild it") from None
            if indexes[block].ntotal != len(provenance):
                raise UserError(
                    f"index {path}: index_{block}.faiss holds {indexes[block].ntotal} vectors but provenance has "
                    f"{len(provenance)} rows; rebuild it"
                )
            if indexes[block].d != whiteners[block].whitening_matrix_.shape[0]:
                raise UserError(
                    f"index {path}: index_{block}.faiss has dimension {indexes[block].d} but its whitener "
                    f"{whiteners[block].whitening_matrix_.shape[0]}; rebuild it"
                )
        with np.load(path / "calibration.npz") as data:
            null_similarity = np.asarray(data["null_similarity"], dtype=np.float64)
            null_energy = np.asarray(data["null_energy"], dtype=np.float64) if "null_energy" in data.files else None
            verified = None
            if "verification" in config:
                verified = VerifiedNull(
                    np.asarray(data["verified_null_scores"], dtype=np.float64),
                    np.asarray(data["verified_null_similarity"], dtype=np.float64),
                    _roughness(data),
                    _reproduced(data),
                    _bent(data),
                )
        if null_similarity.ndim != 1 or len(null_similarity) < 2 or not np.isfinite(null_similarity).all():
            raise UserError(f"index {path}: its calibration null is empty or not finite; rebuild it")
        if verified is not None and (len(verified.scores) < 2 or not np.isfinite(verified.scores).all()):
            raise UserError(f"index {path}: its verified null is empty or not finite; rebuild it")
        loaded = cls(path, config, provenance, whiteners, indexes, null_similarity, manifest["index_id"])
        loaded.verified_null = verified
        loaded.regions = _region_index(path, len(provenance))
        if loaded.regions is not None and loaded.regions.patches is None and config["verification"].get("patch_search"):
            loaded.regions.small_images = loaded.small_images  # made from the training volumes when first needed
        loaded.null_energy = null_energy if null_energy is not None and np.isfinite(null_energy).all() else None
        return loaded

    def feature_energy(self, raw: dict[str, np.ndarray]) -> np.ndarray:
        """[n] feature energy of raw per-block features under the index's whiteners (``calibration.feature_energy``)."""
        return feature_energy(self.whiteners, raw)

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
            raise UserError(
                f"index {self.path} was built with encoder {info['encoder_id']}, not {encoder.encoder_id}; use the "
                "same encoder or rebuild the index"
            )
        if encoder.weights_sha256 != info["weights_sha256"]:
            raise UserError(
                f"index {self.path} was built with other {info['name']} weights (sha256 "
                f"{info['weights_sha256'][:12]}…); use that checkpoint or rebuild the index"
            )

    def load_encoder(self, *, checkpoint: str | Path | None = None, device: str = "cpu") -> Encoder:
        """Load the encoder this index was built with (a checkpoint path overrides the recorded one)."""
        info = self.config["encoder"]
        encoder = load_encoder(
            info["name"], checkpoint=checkpoint or info.get("checkpoint"), device=device, blocks=info["blocks"]
        )
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
        return self._volume_cache.slice(source, prov.array_axis[row], slice_index)

    def small_images(self) -> np.ndarray:
        """float32 [slices, 1, PIXEL_GRID²]: the small images (``encoders.tiles.pixel_tiles``) of the region index's
        slices, as the encoder's framed input gives them, from the reference pixels (:meth:`reference_slice`); an
        unreadable slice's is empty (it has no patches)."""
        size, settings = int(self.config["encoder"]["input_size"]), framed(self.preprocessing)
        rows = self.regions.rows if self.regions is not None else np.zeros(0, dtype=np.int64)
        out = np.zeros((len(rows), 1, PIXEL_GRID * PIXEL_GRID), dtype=np.float32)
        for start in range(0, len(rows), SMALL_IMAGE_BATCH):
            part = rows[start : start + SMALL_IMAGE_BATCH].tolist()
            read = [
                (i, self.reference_slice(self.provenance.source[r], self.provenance.slice[r]))
                for i, r in enumerate(part)
            ]
            found = [(i, image) for i, image in read if image is not None]
            if found:
                images = pixel_tiles(prepare_batch([image for _, image in found], size, settings))
                out[[start + i for i, _ in found]] = images
        return out


def _region_index(path: Path, n_rows: int) -> RegionIndex | None:
    """The index's region search (None when it has none), checked against its provenance."""
    try:
        regions = RegionIndex.load(path)
    except RuntimeError:
        raise UserError(f"index {path}: its region index cannot be read (truncated?); rebuild it") from None
    if regions is not None and not regions.consistent(n_rows):
        raise UserError(f"index {path}: its region index does not match its provenance; rebuild it")
    return regions


def _roughness(calibration: np.lib.npyio.NpzFile) -> np.ndarray:
    """The verified null's roughness in calibration.npz; nan for an index built before it was recorded
    (one band; such an index must be rebuilt to verify, ``index_verification.unavailable_reason``)."""
    if "verified_null_roughness" in calibration.files:
        return np.asarray(calibration["verified_null_roughness"], dtype=np.float64)
    return np.full(len(calibration["verified_null_scores"]), np.nan)


def _reproduced(calibration: np.lib.npyio.NpzFile) -> np.ndarray:
    """The verified null's near-exact parts in calibration.npz; zeros for an index built before they were
    recorded (such an index must be rebuilt to verify, ``index_verification.unavailable_reason``)."""
    if "verified_null_reproduced" in calibration.files:
        return np.asarray(calibration["verified_null_reproduced"], dtype=np.float64)
    return np.zeros(len(calibration["verified_null_scores"]))


def _bent(calibration: np.lib.npyio.NpzFile) -> np.ndarray:
    """The verified null's bent scores in calibration.npz; its scores for an index built before they were
    recorded (such an index must be rebuilt to verify, ``index_verification.unavailable_reason``)."""
    if "verified_null_bent" in calibration.files:
        return np.asarray(calibration["verified_null_bent"], dtype=np.float64)
    return np.asarray(calibration["verified_null_scores"], dtype=np.float64)


def write_manifest(folder: Path) -> str:
    """Write ``manifest.json`` covering every file in ``folder``; returns the index id (a digest of the checksums)."""
    files = {p.name: file_sha256(p) for p in sorted(folder.iterdir())}
    index_id = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    manifest = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "index_id": index_id, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    return index_id


def is_index_folder(folder: Path) -> bool:
    """Whether ``folder`` holds an index (its manifest and required files), as ``build-index`` writes it."""
    return all((folder / name).is_file() for name in (MANIFEST, *_REQUIRED_FILES))


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
        raise UserError(
            f"index {path} has format version {manifest.get('format_version')}, this tool reads version "
            f"{FORMAT_VERSION}; rebuild the index with this version"
        )
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
    if (
        not isinstance(blocks, list)
        or not blocks
        or not all(isinstance(b, str) and _SAFE_BLOCK_NAME.match(b) for b in blocks)
    ):
        raise UserError(f"index {path}: invalid encoder block list {blocks!r}; rebuild it")
    unverified = [f"index_{b}.faiss" for b in blocks if f"index_{b}.faiss" not in manifest["files"]]
    if unverified:
        raise UserError(f"index {path}: the manifest does not cover {', '.join(unverified)}; rebuild the index")
    try:
        PreprocessSettings.from_dict(config["preprocessing"])
    except TypeError:
        known = set(PreprocessSettings().to_dict())
        raise UserError(
            f"index {path} uses preprocessing settings this version does not know "
            f"({', '.join(sorted(set(config['preprocessing']) - known)) or 'incomplete'}); use the version that "
            "built it or rebuild the index"
        ) from None
    if config["axis"] not in ("auto", "axial", "coronal", "sagittal"):
        raise UserError(f"index {path} has an unknown slicing axis {config['axis']!r}; rebuild it")
