"""Building a reference index: options, input checks, slice collection, embedding, whitening, calibration, saving.

:func:`build_index` is the single-machine build; ``ray_engine.build_index_ray`` takes the same
:class:`BuildOptions`, runs the same checks and ends in the same :func:`build_index_from_features`.
The folder layout is described in ``reference_index.py``.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from . import __version__
from .atomic_write import write_folder
from .calibration import (
    DEFAULT_NULL_SPLITS,
    DEFAULT_QUERY_FRACTION,
    NULL_HOLDOUT,
    NULL_TRAIN_SPLIT,
    feature_energy,
    holdout_null,
    train_split_null,
)
from .embedding import ProgressCallback, embed_slices_and_tiles
from .encoders import load_encoder
from .encoders.base import Encoder
from .errors import UserError
from .patch_search import within_limit
from .preprocess import PreprocessSettings, nonempty_mask, scale_unit
from .reference_index import MANIFEST, EncoderInfo, Provenance, ReferenceIndex, write_manifest
from .region_search import RegionIndex, Tiles
from .scoring import DEFAULT_ALPHA, NullModel
from .search import AUTO, CONFIG_KIND, build_block_index, describe_index, resolve_index_kind
from .second_stage import DEFAULT_CANDIDATES, slice_places
from .transforms import ORIGINAL, REFERENCE_COPIES, reference_copy
from .verified_null import NullQueries, VerifiedNull, null_settings, reference_verified_null
from .volumes import axis_name, expand_inputs, image_slices, read_image, resolve_axis, validate_inputs
from .whitening import ShrinkageWhitener


@dataclass(frozen=True)
class BuildOptions:
    """How to build an index (the ``build-index`` options), shared by the local and the Ray build."""

    encoder_name: str = "default"
    checkpoint: str | Path | None = None
    device: str = "cpu"
    axis: str = "auto"
    holdout_paths: Sequence[str | Path] = ()
    reference_copies: bool = True  # also index the flipped and rotated copies (transforms.REFERENCE_COPIES)
    store_thumbnails: bool = False
    null_splits: int = DEFAULT_NULL_SPLITS
    seed: int = 0
    subject_pattern: str | None = None
    slice_stride: int = 1
    batch_size: int = 32
    preprocessing: PreprocessSettings = field(default_factory=PreprocessSettings)
    overwrite: bool = False
    index_kind: str = AUTO
    series: str | None = None
    volume_index: int | None = None
    verification: bool = True  # verify held-out slices at build time (the verified null) so audits can verify
    candidates: int = DEFAULT_CANDIDATES  # candidates verified per query slice (audits use the index's)

    @property
    def copies(self) -> tuple[str, ...]:
        """The reference copies indexed of every slice (the slice as cut first)."""
        return tuple(REFERENCE_COPIES) if self.reference_copies else (ORIGINAL,)

    def index_keywords(self) -> dict:
        """The keywords of :func:`build_index_from_features` that these options set."""
        return {
            "preprocessing": self.preprocessing,
            "axis": self.axis,
            "null_splits": self.null_splits,
            "seed": self.seed,
            "overwrite": self.overwrite,
            "index_kind": self.index_kind,
            "candidates": self.candidates,
        }


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
        raise UserError(
            f"output {out_dir} is a folder that is not a reference index; "
            "--overwrite only replaces an index, choose another --out"
        )


def check_build_inputs(
    train_paths: Sequence[str | Path], out_dir: str | Path, options: BuildOptions
) -> tuple[list[Path], list[Path]]:
    """Check the options, the output folder and every input's header before any work.

    Returns the expanded training and holdout inputs (volume files or DICOM series folders).
    """
    if options.slice_stride < 1:
        raise UserError("--slice-stride must be 1 or more")
    if options.candidates < 1:
        raise UserError("--candidates must be 1 or more")
    check_index_output(out_dir, options.overwrite)
    reading = {"series": options.series, "volume_index": options.volume_index}
    train = validate_inputs(list(train_paths), **reading)
    holdout = validate_inputs(list(options.holdout_paths), **reading) if options.holdout_paths else []
    return train, holdout


def check_slice_counts(n_train: int, n_subjects: int, n_holdout: int | None) -> None:
    """Refuse too few non-empty slices to index and calibrate (``n_holdout`` None: no holdout inputs)."""
    if n_train < 2:
        raise UserError(f"the training inputs hold {n_train} non-empty slices; an index needs at least 2")
    if n_holdout is not None and n_holdout < 2:
        raise UserError("the --holdout inputs hold fewer than 2 non-empty slices")
    if n_holdout is None and n_subjects < 2 and n_train < 20:
        raise UserError(
            "a single training subject needs at least 20 non-empty slices to calibrate; add subjects or --holdout data"
        )


def subject_of(path: Path, pattern: str | None) -> str:
    """Subject id of a file: the first group (or whole match) of ``pattern`` in its path, else the path."""
    if pattern is None:
        return str(path)
    match = re.search(pattern, str(path))
    if match is None:
        raise UserError(f"--subject-pattern {pattern!r} does not match {path}; fix the pattern")
    return match.group(1) if match.groups() else match.group(0)


@dataclass
class SliceSet:
    """Slices cut from a list of volumes, with provenance of each (unflipped) slice."""

    slices: list[np.ndarray] = field(default_factory=list)
    provenance: Provenance = field(default_factory=Provenance)
    skipped_empty: int = 0


def collect_slices(
    paths: Sequence[str | Path],
    *,
    axis: str,
    preprocessing: PreprocessSettings,
    subject_pattern: str | None = None,
    slice_stride: int = 1,
    series: str | None = None,
    volume_index: int | None = None,
) -> SliceSet:
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
            row = len(result.provenance)
            result.provenance.append(str(path.resolve()), int(k), plane, array_axis, ORIGINAL, row, subject)
            result.slices.append(stack[k].copy())  # a copy: the volume itself is not kept alive
    return result


def collect_build_slices(train_paths: Sequence[str | Path], options: BuildOptions) -> tuple[SliceSet, SliceSet | None]:
    """The training slices (every ``slice_stride``-th, with subjects) and the holdout slices (None
    without ``holdout_paths``), read as the options say (the local build and the Ray build's verified null)."""
    reading = {
        "axis": options.axis,
        "preprocessing": options.preprocessing,
        "series": options.series,
        "volume_index": options.volume_index,
    }
    stride = {"subject_pattern": options.subject_pattern, "slice_stride": options.slice_stride}
    train = collect_slices(train_paths, **stride, **reading)
    holdout = collect_slices(options.holdout_paths, **reading) if options.holdout_paths else None
    return train, holdout


def build_index(
    train_paths: Sequence[str | Path],
    out_dir: str | Path,
    options: BuildOptions = BuildOptions(),
    *,
    encoder: Encoder | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> ReferenceIndex:
    """Read training volumes, embed their slices (and their reference copies, ``options.copies``),
    and save a reference index; ``encoder`` (already loaded) replaces ``options.encoder_name``.

    The output folder and every input's header are checked before any work; the index is
    written into a temporary sibling folder and renamed into place (``atomic_write.write_folder``).
    """
    check_build_inputs(train_paths, out_dir, options)
    if encoder is None:
        encoder = load_encoder(options.encoder_name, checkpoint=options.checkpoint, device=options.device)
    settings = options.preprocessing
    train, holdout = collect_build_slices(train_paths, options)
    n_holdout = None if holdout is None else len(holdout.slices)
    check_slice_counts(len(train.slices), len(set(train.provenance.subject)), n_holdout)
    provenance, slices = with_reference_copies(train.slices, train.provenance, options.copies)
    total = len(slices) + (n_holdout or 0)
    embed = {"batch_size": options.batch_size, "cancel": cancel}
    # the reference copies come after the slices as cut (with_reference_copies), whose tiles the region search indexes
    features, tiles = embed_slices_and_tiles(
        encoder,
        slices,
        settings,
        tiled=len(train.slices) if options.verification else 0,
        progress=progress and (lambda d, t: progress(d, total)),
        **embed,
    )
    holdout_features = holdout_tiles = None
    if holdout is not None:
        holdout_features, holdout_tiles = embed_slices_and_tiles(
            encoder,
            holdout.slices,
            settings,
            tiled=None if tiles is not None else 0,
            progress=progress and (lambda d, t: progress(len(slices) + d, total)),
            **embed,
        )
    thumbnails = None
    if options.store_thumbnails:
        thumbnails = {
            row: np.round(scale_unit(image, settings) * 255).astype(np.uint8) for row, image in enumerate(train.slices)
        }
    verified = None
    if options.verification:
        held_out = None if holdout is None else NullQueries(holdout.slices, holdout_features, holdout_tiles)
        verified = verified_null_from_pixels(train, features, tiles, provenance, held_out, encoder, options, cancel)
    encoder_info = EncoderInfo.of(encoder, options.checkpoint)
    return build_index_from_features(
        features,
        provenance,
        out_dir,
        encoder_info=encoder_info,
        thumbnails=thumbnails,
        holdout_features=holdout_features,
        verified_null=verified,
        tiles=tiles,
        **options.index_keywords(),
    )


def verified_null_from_pixels(
    train: SliceSet,
    features: dict[str, np.ndarray],
    tiles: Tiles | None,
    provenance: Provenance,
    holdout: NullQueries | None,
    encoder: Encoder,
    options: BuildOptions,
    cancel: threading.Event | None = None,
) -> VerifiedNull:
    """The index's verified null (:func:`verified_null.reference_verified_null`) with the build options,
    from the training slices as :func:`collect_slices` reads them (the local and the Ray build); ``tiles``:
    raw tile features of the training slices as cut (None: no region search)."""
    return reference_verified_null(
        train.slices,
        train.provenance.subject,
        features,
        np.asarray(provenance.original_row),
        encoder,
        options.preprocessing,
        places=slice_places(train.provenance),
        tiles=tiles,
        holdout=holdout,
        seed=options.seed,
        k=options.candidates,
        batch_size=options.batch_size,
        cancel=cancel,
    )


def copies_provenance(provenance: Provenance, copies: Sequence[str]) -> Provenance:
    """The provenance rows of every slice in every reference copy, as the index stores them: copies outermost,
    then the slices in order, each row naming its original (``original_row``)."""
    rows, p = Provenance(), provenance
    for copy in copies:
        for row in range(len(p)):
            rows.append(p.source[row], p.slice[row], p.axis[row], p.array_axis[row], copy, row, p.subject[row])
    return rows


def with_reference_copies(
    slices: Sequence[np.ndarray], provenance: Provenance, copies: Sequence[str]
) -> tuple[Provenance, list[np.ndarray]]:
    """Provenance (:func:`copies_provenance`) and pixels of every slice in every reference copy."""
    return copies_provenance(provenance, copies), [reference_copy(image, copy) for copy in copies for image in slices]


def _check_features(features: dict[str, np.ndarray], n: int, blocks: Sequence[str]) -> None:
    """Check there are at least 2 provenance rows, one feature row each, in exactly the encoder's blocks."""
    if n < 2 or any(len(v) != n for v in features.values()):
        rows = [len(v) for v in features.values()]
        raise UserError(
            f"need at least 2 reference slices with one feature row each (got {n} provenance rows, {rows} feature rows)"
        )
    if set(features) != set(blocks):
        raise UserError(f"feature blocks {sorted(features)} do not match the encoder's blocks {list(blocks)}")


def _index_config(
    encoder_info: EncoderInfo,
    preprocessing: PreprocessSettings,
    axis: str,
    provenance: Provenance,
    *,
    shrinkage: str | float,
    whiteners: dict[str, ShrinkageWhitener],
    null_info: dict,
    kind: str,
    indexes: dict[str, faiss.Index],
    n_reference_slices: int,
    store_thumbnails: bool,
) -> dict:
    """The index's config.json contents."""
    blocks = encoder_info.blocks
    return {
        "tool_version": __version__,
        "encoder": {
            "name": encoder_info.name,
            "encoder_id": encoder_info.encoder_id,
            "weights_sha256": encoder_info.weights_sha256,
            "input_size": encoder_info.input_size,
            "blocks": list(blocks),
            "checkpoint": encoder_info.checkpoint,
        },
        "preprocessing": preprocessing.to_dict(),
        "axis": axis,
        "reference_copies": sorted(set(provenance.flip)),
        "whitening": {"method": "zca", "shrinkage": shrinkage, "values": {b: whiteners[b].shrinkage_ for b in blocks}},
        "aggregation": "geometric mean over blocks of max(cos, 0)",
        "null": null_info,
        "default_alpha": DEFAULT_ALPHA,
        "index_kind": CONFIG_KIND[kind],
        **(
            {"ivf": {k: v for k, v in describe_index(indexes[blocks[0]]).items() if k != "kind"}}
            if kind != "flat"
            else {}
        ),
        "n_vectors": len(provenance),
        "n_reference_slices": n_reference_slices,
        "store_thumbnails": store_thumbnails,
    }


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
    verified_null: VerifiedNull | None = None,
    candidates: int = DEFAULT_CANDIDATES,
    tiles: Tiles | None = None,
) -> ReferenceIndex:
    """Build and save an index from raw per-block features (e.g. computed elsewhere on a GPU).

    ``verified_null`` (from the training pixels, :func:`build_index` computes it) lets audits run
    the second stage; without it they score with the global similarity alone and say so.

    ``features[block]`` has one row per provenance row; rows with flip ``"none"`` are the
    reference slices, other rows are their flipped or rotated copies (transforms.py) pointing at
    them via ``original_row``. ``tiles`` (raw tile features of the reference slices, in row order; with a
    ``verified_null`` made with them) gives the index its region search (region_search.py).
    """
    n, blocks = len(provenance), encoder_info.blocks
    _check_features(features, n, blocks)
    whiteners = {b: ShrinkageWhitener(shrinkage=shrinkage, seed=seed).fit(features[b]) for b in blocks}
    kind = resolve_index_kind(index_kind, n)
    indexes = {b: build_block_index(whiteners[b].transform(features[b]), kind, seed=seed) for b in blocks}
    original_rows = np.flatnonzero(np.asarray(provenance.flip) == ORIGINAL)
    null, null_energy, null_info = _calibration_null(
        features,
        provenance,
        original_rows,
        whiteners,
        indexes,
        holdout_features,
        shrinkage=shrinkage,
        n_splits=null_splits,
        query_fraction=null_query_fraction,
        seed=seed,
    )
    config = _index_config(
        encoder_info,
        preprocessing,
        axis,
        provenance,
        shrinkage=shrinkage,
        whiteners=whiteners,
        null_info=null_info,
        kind=kind,
        indexes=indexes,
        n_reference_slices=int(len(original_rows)),
        store_thumbnails=thumbnails is not None,
    )
    regions = None
    if verified_null is not None:
        tiles = within_limit(tiles)
        regions = None if tiles is None else RegionIndex.fit(tiles, original_rows, lambda: ShrinkageWhitener(seed=seed))
        config["verification"] = {
            "k": candidates,
            **null_settings(regions is not None, patches=regions is not None and regions.patches is not None),
            "n": int(len(verified_null.scores)),
        }
    check_index_output(out_dir, overwrite)
    calibration = {"null_similarity": null, "null_energy": null_energy}
    if verified_null is not None:
        calibration |= {
            "verified_null_scores": verified_null.scores,
            "verified_null_similarity": verified_null.global_similarity,
            "verified_null_roughness": verified_null.roughness,
            "verified_null_reproduced": verified_null.reproduced,
            "verified_null_bent": verified_null.bent,
        }
    write_folder(
        out_dir, lambda tmp: _write_index(tmp, config, provenance, whiteners, indexes, calibration, thumbnails, regions)
    )
    return ReferenceIndex.load(out_dir)


def _calibration_null(
    features: dict[str, np.ndarray],
    provenance: Provenance,
    original_rows: np.ndarray,
    whiteners: dict[str, ShrinkageWhitener],
    indexes: dict[str, faiss.Index],
    holdout_features: dict[str, np.ndarray] | None,
    *,
    shrinkage: str | float,
    n_splits: int,
    query_fraction: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """The null similarities (holdout, else subject splits of the training slices), the feature energy
    of the same held-out slices (``calibration.feature_energy``) and their config entry."""
    if holdout_features is not None:
        null = holdout_null(indexes, {b: whiteners[b].transform(holdout_features[b]) for b in whiteners})
        energy = feature_energy(whiteners, holdout_features)
        info = {"type": NULL_HOLDOUT, "n_splits": 0}
    else:
        subjects = np.asarray(provenance.subject)[original_rows]
        null, energy, used_splits = train_split_null(
            features,
            original_rows,
            np.asarray(provenance.original_row),
            subjects,
            lambda: ShrinkageWhitener(shrinkage=shrinkage, seed=seed),
            n_splits=n_splits,
            query_fraction=query_fraction,
            seed=seed,
        )
        info = {
            "type": NULL_TRAIN_SPLIT,
            "n_splits": used_splits,
            "query_fraction": query_fraction,
            "groups": "subjects" if len(set(subjects)) > 1 else "slabs",
        }
    model = NullModel(null)
    return null, energy, {**info, "seed": seed, "n": int(len(null)), "mean": model.mean, "std": model.std}


def _write_index(
    folder: Path,
    config: dict,
    provenance: Provenance,
    whiteners: dict[str, ShrinkageWhitener],
    indexes: dict[str, faiss.Index],
    calibration: dict[str, np.ndarray],
    thumbnails: dict[int, np.ndarray] | None,
    regions: RegionIndex | None,
) -> None:
    """Write every index file into ``folder``, the manifest last."""
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    provenance.write(folder / "provenance.csv")
    states = {f"{b}/{k}": v for b, whitener in whiteners.items() for k, v in whitener.state().items()}
    np.savez(folder / "whitener.npz", **states)
    for block, index in indexes.items():
        try:
            faiss.write_index(index, str(folder / f"index_{block}.faiss"))
        except RuntimeError as exc:  # how faiss reports a failed write (disk full, ...)
            raise OSError(str(exc).strip().splitlines()[-1] if str(exc).strip() else "write failed") from None
    np.savez(folder / "calibration.npz", **calibration)
    if thumbnails is not None:
        np.savez_compressed(folder / "thumbnails.npz", **{str(row): image for row, image in thumbnails.items()})
    if regions is not None:
        regions.save(folder, with_patches=thumbnails is not None)
    write_manifest(folder)
