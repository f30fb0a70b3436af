"""Optional Ray engine: embed with Ray Data into sharded feature files, search shards as Ray tasks.

Install with ``pip install 'memorization-index[ray]'``. Nothing here imports ``ray`` at module
import time; the default install never needs it.

* :func:`build_index_ray` reads every volume in a Ray task (``flat_map``), embeds the slices and
  their flipped and rotated copies with encoder actors (``map_batches``; one GPU per actor when the cluster
  has GPUs and the device allows it), and each actor writes its batches to ``shard-*.npz``
  feature files. The driver then orders the rows exactly as the single-machine path does and
  calls :func:`~MemorizationIndexLib.index_build.build_index_from_features`, so the index
  is the same (encoder outputs are per-slice: batching does not change them).
* :class:`RaySearcher` splits the reference into row-range shards held in the Ray object store;
  each query batch is searched exhaustively in every shard by a Ray task, the per-block top-k are
  merged exactly (larger cosine first, then smaller id) and the union of candidates is
  re-ranked with :func:`~MemorizationIndexLib.search.rerank`, the same code as the local path.
  Shards are searched exactly whatever the index kind, so the result equals the ``flat`` path.

The driver connects to the cluster named by ``RAY_ADDRESS`` when set, else starts a local Ray.
For a multi-node build, ``features_dir`` must be on a file system every node can write.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .encoders.tiles import is_framed
from .errors import UserError
from .index_build import (
    BuildOptions,
    build_index_from_features,
    check_build_inputs,
    check_slice_counts,
    collect_build_slices,
    subject_of,
    verified_null_from_pixels,
)
from .reference_index import EncoderInfo, Provenance, ReferenceIndex
from .region_search import Tiles
from .verified_null import NullQueries, VerifiedNull

INSTALL_HINT = "pip install 'memorization-index[ray]'"


def require_ray():
    """Import and return ``ray``, or raise a UserError saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise UserError(f"--engine ray needs Ray; install it with: {INSTALL_HINT}") from None
    return ray


def init_ray(num_cpus: int | None = None):
    """Connect to ``RAY_ADDRESS`` or start a local Ray (quietly); returns the ``ray`` module."""
    ray = require_ray()
    if not ray.is_initialized():
        kwargs = {
            "ignore_reinit_error": True,
            "include_dashboard": False,
            "log_to_driver": False,
            "configure_logging": False,
        }
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"], **kwargs)
        else:
            ray.init(num_cpus=num_cpus, **kwargs)
    try:
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
    except (ImportError, AttributeError):  # a Ray without the switch: progress bars are only cosmetic
        pass
    return ray


# ---------------------------------------------------------------------------------------------
# build-index --engine ray


def _volume_rows(
    item: dict,
    *,
    axis: str,
    preprocessing: dict,
    slice_stride: int,
    series: str | None,
    volume_index: int | None,
    copies: Sequence[str],
    size: int,
    tiles: bool,
) -> list[dict]:
    """Ray Data flat_map: one volume -> one row per kept slice and reference copy, with preprocessed pixels (and
    with ``tiles``, the slice's pixels in its whole field of view, ``preprocess.framed``, in every row of it)."""
    from .preprocess import PreprocessSettings, framed, nonempty_mask, prepare_batch
    from .transforms import ORIGINAL, reference_copy
    from .volumes import axis_name, image_slices, read_image, resolve_axis

    settings = PreprocessSettings.from_dict(preprocessing)
    image = read_image(Path(item["path"]), series=series, volume_index=volume_index)
    array_axis = resolve_axis(image, axis)
    stack = image_slices(image, array_axis)
    holdout = bool(item["holdout"])
    kept = np.flatnonzero(nonempty_mask(stack, settings))[:: 1 if holdout else slice_stride]
    copies = (ORIGINAL,) if holdout else copies
    plane = axis_name(image, array_axis)
    rows = []
    for k in kept:
        whole = {"framed": prepare_batch([stack[k]], size, framed(settings))[0, 0]} if tiles else {}
        for flip_id, copy in enumerate(copies):
            pixels = prepare_batch([reference_copy(stack[k], copy)], size, settings)[0, 0]
            rows.append(
                {
                    "volume": item["volume"],
                    "holdout": holdout,
                    "slice": int(k),
                    "flip": flip_id,
                    "array_axis": int(array_axis),
                    "plane": plane,
                    "pixels": pixels,
                }
                | whole
            )
    return rows


class _EmbedActor:
    """Ray Data actor: embeds batches of preprocessed slices and writes each batch to a feature shard, with the
    tile features (``tile/<block>``, and the volume, holdout flag and slice of each ``tile_*``) of the slices as
    cut when ``tiles`` is set and the encoder has them."""

    def __init__(
        self,
        encoder_name: str,
        checkpoint: str | None,
        blocks: Sequence[str],
        device: str,
        threads: int,
        out_dir: str,
        tiles: bool,
    ):
        import torch

        from .allocator import keep_freed_memory
        from .encoders import load_encoder

        if device == "cpu":
            torch.set_num_threads(max(1, threads))
            keep_freed_memory()  # this worker process only runs the encoder
        self.encoder = load_encoder(encoder_name, checkpoint=checkpoint, device=device, blocks=blocks)
        self.out_dir = Path(out_dir)
        self.tiles = tiles and self.encoder.has_tiles

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels = np.asarray(batch["pixels"], dtype=np.float32)
        path = self.out_dir / f"shard-{uuid.uuid4().hex}.npz"
        columns = {c: np.asarray(batch[c]) for c in ("volume", "holdout", "slice", "flip", "array_axis")}
        columns["plane"] = np.asarray(batch["plane"]).astype(str)
        if self.tiles:
            as_cut = columns["flip"] == 0
            whole = np.asarray(batch["framed"], dtype=np.float32)[as_cut]
            features, tiles = self.encoder.embed_with_tiles(pixels[:, None], whole[:, None])
            columns |= {f"tile_{c}": columns[c][as_cut] for c in ("volume", "holdout", "slice")}
            columns |= {f"tile/{b}": v if is_framed(b) else v[as_cut] for b, v in tiles.items()}
        else:
            features = self.encoder.embed(pixels[:, None])
        np.savez(path, **columns, **{f"feature/{b}": v for b, v in features.items()})
        return {"shard": np.array([str(path)]), "rows": np.array([len(pixels)])}


def _actor_layout(ray, device: str) -> tuple[int, int, str, dict]:
    """CPUs per encoder actor, number of actors, their device and extra Ray resources, from the cluster."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    use_gpu = gpus > 0 and device in ("cuda", "auto")
    if device == "cuda" and not use_gpu:
        raise UserError("--device cuda was asked for but the Ray cluster has no GPU; use --device cpu or auto")
    if use_gpu:
        return 1, gpus, "cuda", {"num_gpus": 1}
    actor_cpus = min(4, max(1, cpus - 1))
    return actor_cpus, max(1, (cpus - 1) // actor_cpus), "cpu", {}


def _merge_shards(shards: list[dict]) -> dict[str, np.ndarray]:
    """Read the feature shard files the actors wrote and concatenate their columns (empty when none)."""
    parts = []
    for row in shards:
        with np.load(row["shard"]) as data:
            parts.append({k: data[k] for k in data.files})
    if not parts:
        return {}
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _embed_volumes(
    ray,
    paths: list[Path],
    holdout: list[Path],
    options: BuildOptions,
    *,
    blocks: Sequence[str],
    size: int,
    out_dir: Path,
    threads: int,
) -> dict[str, np.ndarray]:
    """Embed the kept slices (x reference copies) of ``paths`` and ``holdout`` with Ray Data;
    returns the merged shard columns."""
    import ray.data

    actor_cpus, actors, actor_device, extra = _actor_layout(ray, options.device)
    items = [{"volume": i, "path": str(p), "holdout": False} for i, p in enumerate(paths)]
    items += [{"volume": i, "path": str(p), "holdout": True} for i, p in enumerate(holdout)]
    reading = {
        "axis": options.axis,
        "preprocessing": options.preprocessing.to_dict(),
        "slice_stride": options.slice_stride,
        "series": options.series,
        "volume_index": options.volume_index,
        "copies": options.copies,
        "size": size,
        "tiles": options.verification,
    }
    checkpoint = None if options.checkpoint is None else str(options.checkpoint)
    actor = {
        "encoder_name": options.encoder_name,
        "checkpoint": checkpoint,
        "blocks": tuple(blocks),
        "device": actor_device,
        "threads": threads,
        "out_dir": str(out_dir),
        "tiles": options.verification,
    }
    dataset = ray.data.from_items(items, override_num_blocks=max(1, len(items))).flat_map(
        _volume_rows, fn_kwargs=reading
    )
    shards = dataset.map_batches(
        _EmbedActor,
        fn_constructor_kwargs=actor,
        batch_size=options.batch_size,
        batch_format="numpy",
        concurrency=actors,
        num_cpus=actor_cpus,
        **extra,
    ).take_all()
    return _merge_shards(shards)


def build_index_ray(
    train_paths: Sequence[str | Path],
    out_dir: str | Path,
    options: BuildOptions = BuildOptions(),
    *,
    features_dir: str | Path | None = None,
    num_cpus: int | None = None,
    threads: int | None = None,
) -> ReferenceIndex:
    """:func:`~MemorizationIndexLib.index_build.build_index` with the embedding done by Ray Data.

    features_dir: where the ``shard-*.npz`` feature files go (kept); default a temporary folder
    beside ``out_dir``, removed afterwards.
    threads: torch threads of each CPU actor; default this process's torch thread count, because
    CPU convolutions round differently with other thread counts (~1e-6) and the features should
    be the single-machine ones bit for bit.
    """
    from .encoders import load_encoder

    if options.store_thumbnails:
        raise UserError("--store-thumbnails is not supported with --engine ray; build without it or use --engine local")
    train, holdout = check_build_inputs(train_paths, out_dir, options)
    subjects = [subject_of(p, options.subject_pattern) for p in train]
    ray = init_ray(num_cpus)
    encoder = load_encoder(options.encoder_name, checkpoint=options.checkpoint, device="cpu")
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    embed = {"blocks": encoder.blocks, "size": encoder.input_size, "threads": threads}
    if features_dir is None:
        Path(out_dir).resolve().parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".ray-features-", dir=Path(out_dir).resolve().parent) as work:
            merged = _embed_volumes(ray, train, holdout, options, out_dir=Path(work), **embed)
    else:
        Path(features_dir).mkdir(parents=True, exist_ok=True)
        merged = _embed_volumes(ray, train, holdout, options, out_dir=Path(features_dir), **embed)
    is_holdout = merged["holdout"].astype(bool) if merged else np.zeros(0, bool)
    per_row = {k: v for k, v in merged.items() if not k.startswith("tile")}  # tile columns: slices as cut only
    rows = {k: v[~is_holdout] for k, v in per_row.items()}
    held = {k: v[is_holdout] for k, v in per_row.items()}
    n_train = int(np.sum(rows["flip"] == 0)) if merged else 0
    n_subjects = len({subjects[v] for v in np.unique(rows["volume"])}) if merged else 0
    check_slice_counts(n_train, n_subjects, (len(held["slice"]) if merged else 0) if holdout else None)
    features, provenance = _training_rows(rows, train, subjects, options.copies, encoder.blocks)
    holdout_features = None
    if holdout:
        held_order = np.lexsort((held["slice"], held["volume"]))
        holdout_features = {b: held[f"feature/{b}"][held_order] for b in encoder.blocks}
    tiles, holdout_tiles = _tiles_of(merged, encoder.tile_keys)
    verified = _verified_null_on_driver(
        train, features, tiles, provenance, (holdout_features, holdout_tiles), encoder, options
    )
    return build_index_from_features(
        features,
        provenance,
        out_dir,
        encoder_info=EncoderInfo.of(encoder, options.checkpoint),
        holdout_features=holdout_features,
        verified_null=verified,
        tiles=tiles,
        **options.index_keywords(),
    )


def _tiles_of(merged: dict[str, np.ndarray], blocks: Sequence[str]) -> tuple[Tiles | None, Tiles | None]:
    """The tile features of the training slices as cut and of the holdout slices, each in the single-machine
    order (volumes in input order, then slices); None when the shards hold none."""
    if "tile_volume" not in merged:
        return None, None
    holdout = merged["tile_holdout"].astype(bool)
    out = []
    for side in (~holdout, holdout):
        rows = np.flatnonzero(side)
        order = rows[np.lexsort((merged["tile_slice"][rows], merged["tile_volume"][rows]))]
        out.append({b: merged[f"tile/{b}"][order] for b in blocks} if len(order) else None)
    return out[0], out[1]


def _verified_null_on_driver(
    train: list[Path],
    features: dict[str, np.ndarray],
    tiles: Tiles | None,
    provenance: Provenance,
    holdout: tuple[dict[str, np.ndarray] | None, Tiles | None],
    encoder,
    options: BuildOptions,
) -> VerifiedNull | None:
    """The verified null, as the local build makes it: the slices are read again on the driver (the
    Ray workers returned features and tiles only) and at most 1000 held-out slices go through the second
    stage. ``holdout``: the holdout slices' features and tiles (None, None without a holdout)."""
    if not options.verification:
        return None
    slices, held_slices = collect_build_slices(train, options)
    held = None if holdout[0] is None else NullQueries(held_slices.slices, holdout[0], holdout[1])
    return verified_null_from_pixels(slices, features, tiles, provenance, held, encoder, options)


def _training_rows(
    rows: dict[str, np.ndarray], train: list[Path], subjects: list[str], copies: Sequence[str], blocks: Sequence[str]
) -> tuple[dict[str, np.ndarray], Provenance]:
    """The training features and provenance in the single-machine order: reference copies outermost, then volumes
    in input order, then slices."""
    order = np.lexsort((rows["slice"], rows["volume"], rows["flip"]))
    n = int(np.sum(rows["flip"] == 0))
    original_row = {(int(rows["volume"][r]), int(rows["slice"][r])): i for i, r in enumerate(order[:n])}
    provenance = Provenance()
    for r in order:
        volume, slice_index = int(rows["volume"][r]), int(rows["slice"][r])
        provenance.append(
            str(train[volume].resolve()),
            slice_index,
            str(rows["plane"][r]),
            int(rows["array_axis"][r]),
            copies[int(rows["flip"][r])],
            original_row[(volume, slice_index)],
            subjects[volume],
        )
    return {b: rows[f"feature/{b}"][order] for b in blocks}, provenance


# ---------------------------------------------------------------------------------------------
# audit --engine ray


def _search_shard(shard: dict[str, np.ndarray], offset: int, queries: dict[str, np.ndarray], k: int):
    """Ray task: exact per-block top-k of the queries in one shard, plus the candidates' vectors."""
    import faiss

    found, local = {}, []
    for block, vectors in shard.items():
        sims, ids = faiss.knn(
            np.ascontiguousarray(queries[block], dtype=np.float32),
            vectors,
            min(k, len(vectors)),
            metric=faiss.METRIC_INNER_PRODUCT,
        )
        found[block] = (sims, np.where(ids >= 0, ids + offset, -1))
        local.append(ids)
    ids = np.concatenate(local, axis=1)
    unique = np.unique(ids[ids >= 0])
    return found, unique + offset, {block: vectors[unique] for block, vectors in shard.items()}


def shard_vectors(indexes: dict, start: int, stop: int) -> dict[str, np.ndarray]:
    """Stored vectors of rows [start, stop) of every block's index (flat: a view; ivf: reconstructed)."""
    import faiss

    out = {}
    for block, index in indexes.items():
        index = faiss.downcast_index(index)
        if isinstance(index, faiss.IndexFlat):
            xb = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
            out[block] = np.array(xb[start:stop])
        else:
            out[block] = index.reconstruct_n(start, stop - start)
    return out


class RaySearcher:
    """search(whitened, k) over row-range shards of the reference, one Ray task per shard."""

    def __init__(self, indexes: dict, n_shards: int | None = None, num_cpus: int | None = None):
        self.ray = init_ray(num_cpus)
        self.blocks = list(indexes)
        ntotal = indexes[self.blocks[0]].ntotal
        n_shards = n_shards or max(1, int(self.ray.cluster_resources().get("CPU", 1)))
        n_shards = max(1, min(n_shards, ntotal))
        bounds = np.linspace(0, ntotal, n_shards + 1).astype(np.int64)
        self.ntotal = ntotal
        self.shards = [
            (int(a), self.ray.put(shard_vectors(indexes, int(a), int(b)))) for a, b in zip(bounds[:-1], bounds[1:])
        ]
        self._task = self.ray.remote(_search_shard)

    def __call__(self, queries: dict[str, np.ndarray], k: int = 5):
        from .search import rerank

        queries = {b: np.ascontiguousarray(queries[b], dtype=np.float32) for b in self.blocks}
        query_ref = self.ray.put(queries)
        results = self.ray.get([self._task.remote(ref, offset, query_ref, k) for offset, ref in self.shards])
        k_search = max(1, min(k, self.ntotal))
        candidates = []
        for block in self.blocks:
            sims = np.concatenate([found[block][0] for found, _, _ in results], axis=1)
            ids = np.concatenate([found[block][1] for found, _, _ in results], axis=1)
            sims = np.where(ids >= 0, sims, -np.inf)
            order = np.lexsort((ids, -sims), axis=1)[:, :k_search]
            candidates.append(np.take_along_axis(ids, order, axis=1))
        known = np.concatenate([unique for _, unique, _ in results])
        stored = {b: np.concatenate([vectors[b] for _, _, vectors in results]) for b in self.blocks}

        def fetch(block, ids):
            return stored[block][np.searchsorted(known, ids)]

        return rerank(np.concatenate(candidates, axis=1), queries, fetch, k)


def attach_ray_search(index, n_shards: int | None = None, num_cpus: int | None = None):
    """Make ``index.search`` run on Ray (returns the index)."""
    index.searcher = RaySearcher(index.indexes, n_shards=n_shards, num_cpus=num_cpus)
    return index
