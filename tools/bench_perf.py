#!/usr/bin/env python
"""`make bench`: speed and memory of MemorizationIndex (issue 6); prints a table, writes OUT/results.json.

Sections
  encoders  embedding throughput of each encoder vs a bare forward pass of the same network on
            the same batch (mri-core: a random-weight ViT-B/16 checkpoint written to a temp dir).
  audit     a 100,000-slice reference (synthetic features, written with build_index_from_features)
            and the audit of one synthetic 180-slice volume, vs bare forward + bare FAISS search run
            back to back (best of 8 interleaved rounds, and the median of the per-round ratios)
            (in this process, which sets the allocator as the CLI does: allocator.py); the whole
            `memorization-index audit` command vs a plain process doing only the bare job
            (import, load network and FAISS files, read and prepare the slices, forward, search);
            index build time/peak memory, load time and loaded memory (in a fresh process).
  large     a synthetic 1,000,000-vector reference at the search layer (whitened low-rank + noise
            features in the default encoder's block dims, planted near-duplicates): exact (flat)
            vs IVF + exact re-ranking: time per query slice, recall@1, identical similarity/mi,
            build time and peak memory, load time and memory of the saved IVF indexes.
  scaling   time per query slice of exact and IVF search at several reference sizes.
  sets      a folder of 240 single-slice PNG files audited as a set vs the same slices as one NIfTI
            (throughput ratio, >= 0.9 required), and the in-memory batch API vs the bare job
            (preprocessing, forward pass, search).
  verification  a real 180-slice query (the central coronal slices of brain sub-01) audited with
            audit_image against a reference index with a verified null and thumbnails, with and
            without the second stage (interleaved rounds, median of the per-round ratios; issue 12:
            at most 1.5x wanted), and the second stage step by step (views embedding, view
            searches, then verification: reference grids, query grids and pairs together on the
            pixel-work threads, as verify_shortlist runs them; the reference grids are also timed
            alone, on one thread, outside the step sum). The reference: 4 real
            brain subjects' coronal slices with their reference copies, embedded, plus synthetic
            feature vectors up to the audit reference's size whose provenance cycles over those
            real slices, so every candidate is verified against real pixels.

The 1M reference is built at the search layer because the train-split calibration null of
build_index_from_features searches ~10% of the reference against the rest ten times (quadratic):
at 1M vectors on 2 CPU cores that alone takes hours. Use a --holdout null for such references.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MemorizationIndex"))

from MemorizationIndexLib import search
from MemorizationIndexLib.allocator import keep_freed_memory
from MemorizationIndexLib.encoders import load_encoder
from MemorizationIndexLib.machine_info import describe, machine
from MemorizationIndexLib.scoring import NullModel, mi_from_z
from MemorizationIndexLib.whitening import ShrinkageWhitener

if TYPE_CHECKING:
    from collections.abc import Callable

    import SimpleITK as sitk

    from MemorizationIndexLib.encoders.base import Encoder
    from MemorizationIndexLib.reference_index import Provenance, ReferenceIndex
    from MemorizationIndexLib.verified_null import VerifiedNull

DIMS = {"stage4": 80, "stage5": 112, "stage6": 192}  # the default encoder's blocks


# ------------------------------------------------------------------------------------------ utils


def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def rss_mb() -> float:
    return _status("VmRSS")


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_mb() -> float:
    return _status("VmHWM")


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved_runs(fns: dict, repeat: int = 4) -> dict[str, list[float]]:
    """Times of each function over ``repeat`` rounds that run them in turn (a slow spell of this
    shared machine then hits every contender alike)."""
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def interleaved_best(fns: dict, repeat: int = 4) -> dict:
    """Best time of each function over interleaved rounds (:func:`interleaved_runs`)."""
    return {name: min(values) for name, values in interleaved_runs(fns, repeat).items()}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------- encoders


def _published_network(
    name: str, encoder: Encoder, checkpoint: Path, x: torch.Tensor
) -> tuple[torch.nn.Module, torch.Tensor, tuple]:
    """The network as published (3 normalised channels), its RGB input and the block ids to read."""
    from MemorizationIndexLib.encoders.efficientnet_lite import EfficientNetLite0, load_lite0_state, weights_path
    from MemorizationIndexLib.encoders.mri_core import VisionTransformer

    if name == "default":
        published = EfficientNetLite0()
        published.load_state_dict(load_lite0_state(weights_path()))
        x_rgb = (x.expand(-1, 3, -1, -1) * 255.0 - 127.0) / 128.0
        ids = encoder.blocks
    else:
        published = VisionTransformer(14, layerscale=True)
        published.load_state_dict(torch.load(checkpoint, weights_only=True))
        x_rgb = x.expand(-1, 3, -1, -1).contiguous()
        ids = encoder.block_ids
    return published, x_rgb, ids


def bench_encoders(devices: list[str], quick: bool) -> list[dict]:
    from MemorizationIndexLib.encoders.mri_core import VisionTransformer

    rows = []
    tmp = tempfile.TemporaryDirectory()
    checkpoint = Path(tmp.name) / "mri_core_random.pth"
    torch.manual_seed(0)
    torch.save(VisionTransformer(14, layerscale=True).state_dict(), checkpoint)
    for device in devices:
        for name, batch_size in (("default", 32), ("mri-core", 8 if device == "cpu" else 64)):
            encoder = load_encoder(name, checkpoint=checkpoint if name == "mri-core" else None, device=device)
            batch = np.random.default_rng(0).random((batch_size, 1, 224, 224), dtype=np.float32)
            x = torch.from_numpy(batch).to(device)
            # The network as published reads 3 normalised channels; ours folds that into its first layer.
            published, x_rgb, ids = _published_network(name, encoder, checkpoint, x)
            published.eval().to(device)

            def forward(model, inputs):
                with torch.inference_mode():
                    out = model(inputs, ids)
                    for v in out.values():
                        v.float().cpu()

            repeat = 2 if (quick or (name == "mri-core" and device == "cpu")) else 3
            forward(encoder.model, x)
            encoder.embed(batch)  # warm-up
            best = interleaved_best(
                {
                    "bare": lambda: forward(encoder.model, x),
                    "published": lambda: forward(published, x_rgb),
                    "embed": lambda: encoder.embed(batch),
                },
                repeat,
            )
            t_bare, t_embed = best["bare"], best["embed"]
            rows.append(
                {
                    "encoder": name,
                    "device": device if device == "cpu" else torch.cuda.get_device_name(0),
                    "batch": batch_size,
                    "bare_slices_per_s": batch_size / t_bare,
                    "embed_slices_per_s": batch_size / t_embed,
                    "ratio": t_bare / t_embed,
                    "published_rgb_slices_per_s": batch_size / best["published"],
                }
            )
            log(
                f"encoder {name} on {device}: embed {batch_size / t_embed:.1f} slices/s, "
                f"bare {batch_size / t_bare:.1f} slices/s, "
                f"published RGB network {batch_size / best['published']:.1f} slices/s"
            )
            encoder = published = None
    tmp.cleanup()
    return rows


# ------------------------------------------------------------------------------- synthetic features


class Synthetic:
    """Low-rank + noise raw features per block, generated in seeded chunks (reproducible by row)."""

    def __init__(self, seed: int = 0, rank: int = 24, chunk: int = 100_000):
        rng = np.random.default_rng(seed)
        self.seed, self.rank, self.chunk = seed, rank, chunk
        self.mixing = {b: rng.standard_normal((rank, d), dtype=np.float32) * 2.0 + 0.5 for b, d in DIMS.items()}
        self.offset = {b: rng.standard_normal(d, dtype=np.float32) * 3.0 for b, d in DIMS.items()}

    def chunk_features(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, index])
        latent = rng.standard_normal((self.chunk, self.rank), dtype=np.float32)
        return {
            b: np.maximum(
                latent @ self.mixing[b] + self.offset[b] + rng.standard_normal((self.chunk, d), dtype=np.float32), 0.0
            )
            for b, d in DIMS.items()
        }

    def rows(self, n: int):
        """Yield (start, features) chunks covering rows [0, n)."""
        for index, start in enumerate(range(0, n, self.chunk)):
            features = self.chunk_features(index)
            yield start, {b: v[: n - start] for b, v in features.items()}

    def fresh(self, n: int, salt: int) -> dict[str, np.ndarray]:
        """n rows never in the reference (novel queries / holdout)."""
        rng = np.random.default_rng([self.seed, 10_000 + salt])
        latent = rng.standard_normal((n, self.rank), dtype=np.float32)
        return {
            b: np.maximum(latent @ self.mixing[b] + self.offset[b] + rng.standard_normal((n, d), dtype=np.float32), 0.0)
            for b, d in DIMS.items()
        }


def near_copies(raw: dict[str, np.ndarray], level: float, seed: int) -> dict[str, np.ndarray]:
    """Planted near-duplicates: raw features plus Gaussian noise of ``level`` x each row's feature std."""
    rng = np.random.default_rng(seed)
    return {
        b: v + level * v.std(axis=1, keepdims=True) * rng.standard_normal(v.shape, dtype=np.float32)
        for b, v in raw.items()
    }


# ------------------------------------------------------------------------------------ audit @ 100k


def synthetic_volume(n_slices: int = 180, size: int = 192, seed: int = 0):
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    head = ((yy - size / 2) ** 2 / (0.42 * size) ** 2 + (xx - size / 2) ** 2 / (0.36 * size) ** 2) < 1
    array = np.zeros((n_slices, size, size), np.float32)
    for k in range(n_slices):
        array[k] = head * (100 + 30 * np.sin(xx / (5 + k % 7)) * np.cos(yy / (6 + k % 5))) + rng.uniform(
            0, 8, (size, size)
        )
    return sitk.GetImageFromArray(array)


def load_in_subprocess(code: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "MemorizationIndex")},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


LOAD_INDEX = """
import json, time
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'): return int(line.split()[1]) / 1024
import faiss, numpy
from MemorizationIndexLib.reference_index import ReferenceIndex
from MemorizationIndexLib import search
before = rss(); t = time.perf_counter()
index = ReferenceIndex.load({path!r})
dt = time.perf_counter() - t
after = rss()
ivec = sum(search.vector_bytes(i) for i in index.indexes.values()) / 2**20
print(json.dumps({{"load_s": dt, "rss_delta_mb": after - before, "index_structures_mb": ivec}}))
"""

LOAD_FAISS = """
import json, time
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'): return int(line.split()[1]) / 1024
import faiss
from MemorizationIndexLib import search
before = rss(); t = time.perf_counter()
indexes = [search.prepare_loaded(faiss.read_index(p)) for p in {paths!r}]
dt = time.perf_counter() - t
print(json.dumps({{"load_s": dt, "rss_delta_mb": rss() - before}}))
"""


def _build_audit_index(out: Path, encoder: Encoder, n_reference: int) -> tuple[Path, float, float, int]:
    """Build the synthetic n-row audit index; return its path, build seconds, peak MB and raw vector bytes."""
    from MemorizationIndexLib.index_build import build_index_from_features
    from MemorizationIndexLib.reference_index import EncoderInfo, Provenance

    synth = Synthetic(seed=1)
    features = {b: np.concatenate([f[b] for _, f in synth.rows(n_reference)]) for b in DIMS}
    provenance = Provenance()
    for row in range(n_reference):
        provenance.append(
            f"/reference/sub-{row // 180:05d}.nii.gz", row % 180, "axial", 0, "none", row, f"sub-{row // 180:05d}"
        )
    holdout = synth.fresh(2000, salt=1)
    path = out / "index-100k"
    gc_before = rss_mb()
    reset_peak()
    start = time.perf_counter()
    built = build_index_from_features(
        features, provenance, path, encoder_info=EncoderInfo.of(encoder), holdout_features=holdout, overwrite=True
    )
    build_s = time.perf_counter() - start
    build_peak = peak_mb() - gc_before
    raw_bytes = sum(v.nbytes for v in features.values())
    del features, built
    return path, build_s, build_peak, raw_bytes


def _audit_runs(
    index: ReferenceIndex,
    encoder: Encoder,
    image: sitk.Image,
    stack: np.ndarray,
    keep: np.ndarray,
    tensor: torch.Tensor,
    raw: dict,
) -> dict[str, list[float]]:
    """Interleaved timings of the audit, its parts and the bare forward pass + FAISS search (8 rounds)."""
    from MemorizationIndexLib.audit import audit_image
    from MemorizationIndexLib.preprocess import prepare_batch

    whitened = index.whiten(raw)

    def bare_forward():
        with torch.inference_mode():
            for s in range(0, len(tensor), 32):
                encoder.model(tensor[s : s + 32], encoder.blocks)

    def bare_faiss():
        for b in index.indexes:
            index.indexes[b].search(whitened[b], 5)

    def bare():
        bare_forward()
        bare_faiss()

    audit_image(index, image, "generated", encoder=encoder)  # warm-up
    return interleaved_runs(
        {
            "audit": lambda: audit_image(index, image, "generated", encoder=encoder),
            "bare": bare,
            "bare_forward": bare_forward,
            "bare_faiss": bare_faiss,
            "preprocess": lambda: prepare_batch([stack[k] for k in keep], encoder.input_size, index.preprocessing),
            "audit_search": lambda: index.search(index.whiten(raw), k=5),
        },
        repeat=8,
    )


def bench_audit(out: Path, n_reference: int) -> dict:
    from MemorizationIndexLib.preprocess import nonempty_mask, prepare_batch
    from MemorizationIndexLib.reference_index import ReferenceIndex
    from MemorizationIndexLib.volumes import image_slices, resolve_axis

    encoder = load_encoder("default")
    path, build_s, build_peak, raw_bytes = _build_audit_index(out, encoder, n_reference)
    loaded = load_in_subprocess(LOAD_INDEX.format(path=str(path)))
    index = ReferenceIndex.load(path)
    log(f"100k index: built in {build_s:.1f} s, loads in {loaded['load_s']:.2f} s")

    image = synthetic_volume()
    stack = image_slices(image, resolve_axis(image, index.axis))
    keep = np.flatnonzero(nonempty_mask(stack, index.preprocessing))
    prepared = prepare_batch([stack[k] for k in keep], encoder.input_size, index.preprocessing)
    tensor = torch.from_numpy(prepared)
    raw = encoder.embed(prepared)
    runs = _audit_runs(index, encoder, image, stack, keep, tensor, raw)
    best = {name: min(values) for name, values in runs.items()}
    t_audit, t_bare, t_forward, t_faiss, t_search = (
        best["audit"],
        best["bare"],
        best["bare_forward"],
        best["bare_faiss"],
        best["audit_search"],
    )
    paired = [b / a for a, b in zip(runs["audit"], runs["bare"])]
    end_to_end = bench_cli_audit(out, path, image)
    result = {
        "n_reference": n_reference,
        "n_query_slices": int(len(keep)),
        "index_kind": index.index_kind,
        "build_s": build_s,
        "build_peak_mb_over_start": build_peak,
        "raw_vector_mb": raw_bytes / 2**20,
        "load_s": loaded["load_s"],
        "loaded_rss_mb": loaded["rss_delta_mb"],
        "loaded_index_structures_mb": loaded["index_structures_mb"],
        "audit_s": t_audit,
        "bare_s": t_bare,
        "bare_forward_s": t_forward,
        "bare_faiss_s": t_faiss,
        "preprocess_s": best["preprocess"],
        "audit_search_s": t_search,
        "audit_speed_vs_bare": t_bare / t_audit,
        "audit_speed_vs_bare_per_round": paired,
        "audit_speed_vs_bare_median_round": float(np.median(paired)),
        "search_speed_vs_bare_faiss": t_faiss / t_search,
        "end_to_end": end_to_end,
    }
    log(
        f"audit of {len(keep)} slices vs {n_reference}: {t_audit:.2f} s; bare forward + FAISS {t_bare:.2f} s "
        f"(forward {t_forward:.2f} s, FAISS {t_faiss:.3f} s)"
    )
    return result


BARE_PROCESS = """
from MemorizationIndexLib.allocator import keep_freed_memory
keep_freed_memory()  # the same allocator setting as the CLI
import faiss, numpy as np, SimpleITK as sitk, torch
from MemorizationIndexLib.encoders import load_encoder
from MemorizationIndexLib.preprocess import PreprocessSettings, nonempty_mask, prepare_batch
from MemorizationIndexLib.volumes import image_slices
encoder = load_encoder("default")
indexes = [faiss.read_index(p) for p in {index_files!r}]
stack = image_slices(sitk.ReadImage({volume!r}), 0)
settings = PreprocessSettings()
keep = np.flatnonzero(nonempty_mask(stack, settings))
pixels = torch.from_numpy(prepare_batch([stack[k] for k in keep], encoder.input_size, settings))
with torch.inference_mode():
    parts = [encoder.model(pixels[s : s + 32], encoder.blocks) for s in range(0, len(pixels), 32)]
for index, block in zip(indexes, encoder.blocks):
    index.search(np.ascontiguousarray(torch.cat([p[block] for p in parts]).numpy()), 5)
"""


def bench_cli_audit(out: Path, index_path: Path, image) -> dict:
    """Wall clock of the whole ``memorization-index audit`` command (start-up, imports, index
    checks and loading, outputs, report) against a plain Python process that does only the bare
    job on the same volume: import, load the network and the FAISS files, read and slice the
    volume, prepare the slices, forward pass, FAISS search (same allocator setting)."""
    import SimpleITK as sitk

    volume = out / "volume-180.nii.gz"
    sitk.WriteImage(image, str(volume))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "MemorizationIndex")}
    blocks = json.loads((index_path / "config.json").read_text())["encoder"]["blocks"]
    bare = [
        sys.executable,
        "-c",
        BARE_PROCESS.format(index_files=[str(index_path / f"index_{b}.faiss") for b in blocks], volume=str(volume)),
    ]
    target = out / "cli-audit"
    commands = {
        "cli_audit_s": [
            sys.executable,
            "-m",
            "MemorizationIndexLib.cli",
            "audit",
            str(index_path),
            str(volume),
            "--out",
            str(target),
        ],
        "cli_audit_no_report_s": [
            sys.executable,
            "-m",
            "MemorizationIndexLib.cli",
            "audit",
            str(index_path),
            str(volume),
            "--out",
            str(target),
            "--no-report",
        ],
        "bare_process_s": bare,
    }
    walls: dict[str, list[float]] = {key: [] for key in commands}
    for _ in range(3):
        for key, command in commands.items():
            subprocess.run(["rm", "-rf", str(target)], check=True)
            start = time.perf_counter()
            subprocess.run(command, check=True, env=env, capture_output=True)
            walls[key].append(time.perf_counter() - start)
    result = {key: min(values) for key, values in walls.items()}
    result["cli_speed_vs_bare"] = result["bare_process_s"] / result["cli_audit_s"]
    result["cli_no_report_speed_vs_bare"] = result["bare_process_s"] / result["cli_audit_no_report_s"]
    log(
        f"CLI audit {result['cli_audit_s']:.2f} s (without report {result['cli_audit_no_report_s']:.2f} s) "
        f"vs the bare job in a plain process {result['bare_process_s']:.2f} s"
    )
    return result


# ------------------------------------------------------------------------- audit with the second stage

BRAIN = ROOT.parent / "shared" / "data" / "brain" / "ds002748"
VERIFY_AXIS = "coronal"  # the brain volumes' longest axis (194-211 slices): 180 of them make one query volume
VERIFY_SUBJECTS = 4  # real reference subjects (sub-02 ..); sub-01 is the query, sub-24 the global null's holdout
VERIFY_NULL_SLICES = 300  # held-out slices of the verified null (build_index verifies up to 1000)


def _real_reference(
    encoder: Encoder, paths: list[Path], patches: bool
) -> tuple[dict, dict, Provenance, dict, VerifiedNull, int]:
    """Real brain slices with their reference copies, embedded as build_index does (with the tiles of the
    slices as cut); thumbnails of the slices; a verified null of held-out subject splits (verified_null.py,
    as build_index computes it), with the patch search when ``patches`` (as the index it is for will have it)."""
    from MemorizationIndexLib.calibration import DEFAULT_QUERY_FRACTION
    from MemorizationIndexLib.embedding import embed_slices_and_tiles
    from MemorizationIndexLib.encoders.tiles import PIXEL_KEY
    from MemorizationIndexLib.index_build import BuildOptions, collect_slices, with_reference_copies
    from MemorizationIndexLib.preprocess import PreprocessSettings, scale_unit
    from MemorizationIndexLib.second_stage import SliceGrids, slice_places
    from MemorizationIndexLib.verified_null import split_verified_null

    settings = PreprocessSettings()
    train = collect_slices(paths, axis=VERIFY_AXIS, preprocessing=settings)
    provenance, slices = with_reference_copies(train.slices, train.provenance, BuildOptions().copies)
    features, tiles = embed_slices_and_tiles(encoder, slices, settings, tiled=len(train.slices))
    thumbnails = {r: np.round(scale_unit(s, settings) * 255).astype(np.uint8) for r, s in enumerate(train.slices)}
    null = split_verified_null(
        train.slices,
        features,
        np.asarray(provenance.original_row),
        np.asarray(train.provenance.subject),
        SliceGrids(train.slices, settings, slice_places(train.provenance)),
        encoder,
        settings,
        lambda: ShrinkageWhitener(seed=0),
        query_fraction=DEFAULT_QUERY_FRACTION,
        seed=0,
        tiles=tiles if patches else {key: raw for key, raw in tiles.items() if key != PIXEL_KEY},
        n_queries=VERIFY_NULL_SLICES,
    )
    return features, tiles, provenance, thumbnails, null, len(train.slices)


def _padded(
    features: dict, tiles: dict, provenance: Provenance, n_originals: int, n_reference: int
) -> tuple[dict, dict, Provenance]:
    """The real rows followed by synthetic feature rows up to ``n_reference``, laid out as ``build_index``
    lays out slices: each synthetic slice is an original (flip none) followed by its reference copies
    (``BuildOptions().copies``), which point at it. A synthetic slice's provenance is one of the real
    slices in turn, so a candidate among them is verified against that real slice's pixels (its grid
    made for its own row, as a distinct reference slice's would be). Every synthetic original also gets
    synthetic tiles, so the region index holds the tiles of every original slice, real or synthetic, and the small
    image of the real slice it cycles over with noise of its own, so the patch index holds as many patches."""
    from MemorizationIndexLib.encoders.tiles import PIXEL_KEY, block_of
    from MemorizationIndexLib.index_build import BuildOptions
    from MemorizationIndexLib.reference_index import Provenance

    n_real, copies = len(provenance), BuildOptions().copies
    pad = n_reference - n_real
    if pad <= 0:  # the real slices alone (they are never cut)
        return features, tiles, provenance
    synthetic = {b: np.concatenate([f[b] for _, f in Synthetic(seed=5).rows(pad)]) for b in DIMS}
    padded = Provenance()
    p = provenance
    for r in range(n_real):
        padded.append(p.source[r], p.slice[r], p.axis[r], p.array_axis[r], p.flip[r], p.original_row[r], p.subject[r])
    for i in range(pad):
        slice_number, copy = divmod(i, len(copies))
        j = slice_number % n_originals
        original = n_real + slice_number * len(copies)
        subject = f"synthetic-{slice_number // 200}"
        padded.append(p.source[j], p.slice[j], p.axis[j], p.array_axis[j], copies[copy], original, subject)
    n_synthetic_slices = -(-pad // len(copies))
    padded_tiles = {}
    for key, real in tiles.items():
        if key == PIXEL_KEY:  # the small image of the real slice it cycles over, with noise of its own
            noise = np.random.default_rng(7).normal(0.0, 0.01, (n_synthetic_slices, *real.shape[1:]))
            cycled = real[np.arange(n_synthetic_slices) % n_originals]
            padded_tiles[key] = np.concatenate([real, np.clip(cycled + noise, 0, 1).astype(np.float32)])
            continue
        per_tile = [
            np.concatenate([f[block_of(key)] for _, f in Synthetic(seed=100 + t).rows(n_synthetic_slices)])
            for t in range(real.shape[1])
        ]
        padded_tiles[key] = np.concatenate([real, np.stack(per_tile, axis=1)])
    return {b: np.concatenate([features[b], synthetic[b]]) for b in DIMS}, padded_tiles, padded


def _build_verification_index(out: Path, encoder: Encoder, n_reference: int) -> tuple[ReferenceIndex, dict]:
    """The 100k index with a verified null and thumbnails (real part + synthetic padding), and what it holds."""
    from MemorizationIndexLib.embedding import embed_slices
    from MemorizationIndexLib.index_build import BuildOptions, build_index_from_features, collect_slices
    from MemorizationIndexLib.patch_search import searched
    from MemorizationIndexLib.preprocess import PreprocessSettings
    from MemorizationIndexLib.reference_index import EncoderInfo
    from MemorizationIndexLib.transforms import ORIGINAL

    start = time.perf_counter()
    paths = sorted(BRAIN.glob("sub-*_T1w.nii.gz"))
    copies = len(BuildOptions().copies)
    features, tiles, provenance, thumbnails, null, n_originals = _real_reference(
        encoder, paths[1 : 1 + VERIFY_SUBJECTS], patches=searched(-(-n_reference // copies))
    )
    holdout = collect_slices(paths[-1:], axis=VERIFY_AXIS, preprocessing=PreprocessSettings())
    holdout_features = embed_slices(encoder, holdout.slices, PreprocessSettings())
    n_real = len(provenance)
    features, tiles, provenance = _padded(features, tiles, provenance, n_originals, n_reference)
    index = build_index_from_features(
        features,
        provenance,
        out / "index-verification",
        encoder_info=EncoderInfo.of(encoder),
        axis=VERIFY_AXIS,
        holdout_features=holdout_features,
        thumbnails=thumbnails,
        verified_null=null,
        tiles=tiles,
        overwrite=True,
    )
    n_slices = int(np.count_nonzero(np.asarray(provenance.flip) == ORIGINAL))
    info = {
        "n_reference": n_reference,
        "n_reference_slices": n_slices,
        "n_region_tiles": sum(kind.index.ntotal for kind in index.regions.kinds.values()),  # tile vectors
        "n_patches": 0 if index.regions.patches is None else index.regions.patches.index.ntotal,  # pixel patches
        "n_real_vectors": n_real,
        "n_real_slices": n_originals,
        "n_real_subjects": VERIFY_SUBJECTS,
        "n_synthetic_vectors": n_reference - n_real,
        "n_verified_null": int(len(null.scores)),
        "setup_s": time.perf_counter() - start,
        "reference": (
            f"{n_originals} real coronal brain slices of {VERIFY_SUBJECTS} subjects (ds002748 sub-02..) with their "
            f"{n_real // n_originals - 1} flipped and turned copies ({n_real:,} embedded vectors, thumbnails, "
            f"verified null of {len(null.scores) // 2} held-out slices and their blurred twins), padded with "
            f"{n_reference - n_real:,} synthetic feature vectors laid out as build-index lays out slices ({n_slices:,} "
            "slices in all, each with its flipped and turned copies; region index of their tiles), whose provenance "
            "cycles over the real slices (a candidate among them is verified against real pixels)"
        ),
    }
    return index, info


def verification_query() -> sitk.Image:
    """A real 180-slice query volume: the 180 central coronal slices of sub-01 (in no reference)."""
    import SimpleITK as sitk

    from MemorizationIndexLib.volumes import resolve_axis

    image = sitk.ReadImage(str(BRAIN / "sub-01_T1w.nii.gz"))
    dim = 2 - resolve_axis(image, VERIFY_AXIS)
    start = (image.GetSize()[dim] - 180) // 2
    cut = [slice(None)] * 3
    cut[dim] = slice(start, start + 180)
    return image[tuple(cut)]


def _lapper() -> tuple[dict[str, float], Callable[[str], None]]:
    """A dict of named laps and the function that records the time since the last lap under a name."""
    times: dict[str, float] = {}
    last = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        times[name] = now - last[0]
        last[0] = now

    return times, lap


def _second_stage_parts(
    index: ReferenceIndex, encoder: Encoder, slices: list, raw: dict, tiles: dict, n_real_slices: int
) -> dict[str, float]:
    """One pass of the second stage step by step, as verify_queries runs it (fresh grid cache), timed."""
    from MemorizationIndexLib.embedding import embed_slices_and_tiles
    from MemorizationIndexLib.index_verification import ReferenceGrids
    from MemorizationIndexLib.preprocess import framed, prepare_batch
    from MemorizationIndexLib.second_stage import (
        listed_before_regions,
        noisy_slices,
        search_depth,
        shortlist,
        smoothed_view,
        turned_hits,
        verify_shortlist,
        view_hits,
        with_region_candidates,
        with_smoothed_regions,
        with_turned_candidates,
    )

    settings, depth, n = index.preprocessing, search_depth(index.candidates), len(slices)
    original = np.asarray(index.provenance.original_row)
    whitened = index.whiten(raw)
    times, lap = _lapper()
    whole_view = framed(settings)
    with torch.inference_mode():  # the fine tiles' pass over the slices in their whole field of view, as batched
        for start in range(0, n, AUDIT_BATCH):
            encoder.fine_tiles(prepare_batch(slices[start : start + AUDIT_BATCH], encoder.input_size, whole_view))
    lap("framed_tiles")
    index.search(whitened, k=5)
    lap("as_cut_search_k5")
    as_cut = index.search(whitened, k=depth)
    lap("as_cut_search_deep")
    noisy = noisy_slices(slices, settings)
    views = [smoothed_view(slices[i]) for i in noisy]
    lap("views_made")
    hits, view_tiles = [view_hits(as_cut, original)], None
    if len(noisy):
        view_raw, view_tiles = embed_slices_and_tiles(encoder, views, settings)
        found = index.search(index.whiten(view_raw), k=depth)
        lap("views_embedding")
        rows_of, scores_of = view_hits(found, original)
        all_rows, all_scores = np.full((n, depth), -1), np.full((n, depth), -np.inf)
        all_rows[noisy], all_scores[noisy] = rows_of, scores_of
        hits.append((all_rows, all_scores))
    else:
        lap("views_embedding")
    rows = shortlist(hits, index.candidates)
    lap("view_searches")

    def search_whitened(features: dict[str, np.ndarray], deep: int) -> search.Neighbours:
        return index.search(index.whiten(features), k=deep)

    turned_depth = search_depth(listed_before_regions(index.candidates))
    rows = with_turned_candidates(rows, turned_hits(encoder, slices, search_whitened, original, settings, turned_depth))
    lap("turned_views")
    regions = index.regions.search(tiles)
    if view_tiles is not None:
        regions = with_smoothed_regions(regions, slices, noisy, index.regions.search(view_tiles), settings)
    listed = with_region_candidates(rows, regions)
    rows = listed.rows
    lap("region_search")
    if index.regions.patches is not None:  # the patch search alone, again (its time is part of the region search's)
        index.regions.patches.ranked(tiles)
    lap("patch_search_alone")
    wanted = sorted({int(r) for r in rows.ravel() if r >= 0})
    reference = ReferenceGrids(index)(wanted)
    lap("reference_grids_alone")
    used = ReferenceGrids(index)
    verify_shortlist(slices, listed, used, settings)
    lap("verification")
    pairs = sum(sum(int(r) in reference for r in candidates_of if r >= 0) for candidates_of in rows)
    real = sum(r < n_real_slices for r in wanted)
    times |= {
        "n_reference_grids": len(wanted),
        "n_reference_grids_made": len(used),
        "n_real_reference_grids": real,
        "n_pairs": pairs,
        "n_noisy": len(noisy),
    }
    return times


def _verification_runs(index: ReferenceIndex, encoder: Encoder, image, n_real_slices: int, rounds: int) -> tuple:
    """Interleaved rounds: the audit without the second stage, with it (a fresh stage each time, so
    no reference grid is reused across rounds, as in separate CLI runs), and its steps one by one."""
    from MemorizationIndexLib.audit import audit_image
    from MemorizationIndexLib.embedding import embed_slices_and_tiles
    from MemorizationIndexLib.index_verification import SecondStage
    from MemorizationIndexLib.preprocess import nonempty_mask
    from MemorizationIndexLib.volumes import image_slices, resolve_axis

    def audit(enabled: bool):
        stage = SecondStage(index, enabled=enabled)
        assert stage.used == enabled, stage.reason
        return audit_image(index, image, "query", encoder=encoder, stage=stage)

    stack = image_slices(image, resolve_axis(image, index.axis))
    slices = [stack[k] for k in np.flatnonzero(nonempty_mask(stack, index.preprocessing))]
    raw, tiles = embed_slices_and_tiles(encoder, slices, index.preprocessing)
    start = time.perf_counter()
    index.reference_slice(index.provenance.source[0], index.provenance.slice[0])
    thumbnails_s = time.perf_counter() - start  # the thumbnail file, read once per loaded index
    flagged = audit(True).flagged  # warm-up
    audit(False)
    parts: list[dict] = []
    runs = interleaved_runs(
        {
            "without": lambda: audit(False),
            "with": lambda: audit(True),
            "parts": lambda: parts.append(_second_stage_parts(index, encoder, slices, raw, tiles, n_real_slices)),
        },
        rounds,
    )
    return runs, parts, len(slices), thumbnails_s, flagged


AUDIT_BATCH = 32  # slices per forward pass in audit_image (its default batch_size)
STAGE_STEPS = (
    "framed_tiles",
    "views_made",
    "views_embedding",
    "view_searches",
    "turned_views",
    "region_search",
    "as_cut_search_extra",
    "verification",
)


def bench_verification(out: Path, n_reference: int, rounds: int) -> dict:
    """A real 180-slice query audited against an index with a verified null and reference pixels,
    with and without the second stage (same index), and the second stage's steps."""
    if not BRAIN.is_dir():
        log(f"verification section skipped: {BRAIN} is absent")
        return {"skipped": f"{BRAIN} is absent"}
    encoder = load_encoder("default")
    index, result = _build_verification_index(out, encoder, n_reference)
    log(f"verification index ready in {result['setup_s']:.0f} s: {result['reference']}")
    image = verification_query()
    runs, parts, n_query, thumbnails_s, flagged = _verification_runs(
        index, encoder, image, result["n_real_slices"], rounds
    )
    for p in parts:
        p["as_cut_search_extra"] = p["as_cut_search_deep"] - p["as_cut_search_k5"]
    ratios = [w / wo for w, wo in zip(runs["with"], runs["without"])]
    alone = ("reference_grids_alone", "patch_search_alone")
    steps = {name: float(np.median([p[name] for p in parts])) for name in (*STAGE_STEPS, *alone)}
    result |= {
        "n_query_slices": n_query,
        "candidates": index.candidates,
        "rounds": rounds,
        "query": "the 180 central coronal slices of ds002748 sub-01 (a person in no reference)",
        "flagged_with_verification": flagged,
        "without_s": runs["without"],
        "with_s": runs["with"],
        "without_median_s": float(np.median(runs["without"])),
        "with_median_s": float(np.median(runs["with"])),
        "ratio_per_round": ratios,
        "ratio_median_round": float(np.median(ratios)),
        "thumbnail_file_load_s": thumbnails_s,
        "steps_median_s": steps,
        "steps_sum_s": float(sum(steps[name] for name in STAGE_STEPS)),
        "reference_grids_per_audit": int(np.median([p["n_reference_grids"] for p in parts])),
        "reference_grids_made_per_audit": int(np.median([p["n_reference_grids_made"] for p in parts])),
        "real_reference_grids_per_audit": int(np.median([p["n_real_reference_grids"] for p in parts])),
        "pairs_per_audit": int(np.median([p["n_pairs"] for p in parts])),
        "noisy_slices_per_audit": int(np.median([p["n_noisy"] for p in parts])),
        "load_average": os.getloadavg(),
    }
    log(
        f"audit of {n_query} slices: without verification {result['without_median_s']:.2f} s, with "
        f"{result['with_median_s']:.2f} s (median of rounds); ratio {result['ratio_median_round']:.2f} (<= 1.5 wanted)"
    )
    return result


# ------------------------------------------------------------------------------------ sets of 2D files


def set_bench_slices(n: int) -> tuple[np.ndarray, str]:
    """n real MRI slices [n, 224, 224] uint8 (spine subjects of ../shared/data), or synthetic ones
    when that folder is absent; and where they came from."""
    import SimpleITK as sitk

    spine = sorted((ROOT.parent / "shared" / "data" / "spine" / "myosegmentum").glob("*.nii.gz"))
    if spine:
        stacks, total = [], 0
        for path in spine:
            stacks.append(sitk.GetArrayFromImage(sitk.ReadImage(str(path))))
            total += len(stacks[-1])
            if total >= n:
                break
        return np.concatenate(stacks)[:n].astype(np.uint8), f"real spine slices ({len(stacks)} subjects)"
    array = sitk.GetArrayFromImage(synthetic_volume(n, 224))
    return np.clip(array / array.max() * 255, 0, 255).astype(np.uint8), "synthetic slices (../shared/data absent)"


def _write_set_files(out: Path, slices: np.ndarray) -> tuple[Path, Path]:
    """Write the slices as a folder of single-slice PNG files and as one NIfTI volume."""
    import SimpleITK as sitk

    folder, volume = out / "set-pngs", out / "set-volume.nii.gz"
    folder.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(slices):
        sitk.WriteImage(sitk.GetImageFromArray(s), str(folder / f"g{i:04d}.png"))
    sitk.WriteImage(sitk.GetImageFromArray(slices), str(volume))
    return folder, volume


def _build_sets_index(out: Path, encoder: Encoder) -> ReferenceIndex:
    """The synthetic 20k-row reference index the set benchmark audits against."""
    from MemorizationIndexLib.index_build import build_index_from_features
    from MemorizationIndexLib.reference_index import EncoderInfo, Provenance

    synth = Synthetic(seed=2)
    features = next(f for _, f in synth.rows(20_000))
    provenance = Provenance()
    for row in range(20_000):
        subject = f"sub-{row // 200:05d}"
        provenance.append(f"/reference/{subject}.nii.gz", row % 200, "axial", 0, "none", row, subject)
    return build_index_from_features(
        features,
        provenance,
        out / "index-sets",
        encoder_info=EncoderInfo.of(encoder),
        holdout_features=synth.fresh(2000, salt=3),
        overwrite=True,
    )


def bench_sets(out: Path, n_slices: int = 240) -> dict:
    """A folder of n single-slice PNG files audited as a set vs the same slices as one NIfTI volume
    (audit_paths, outputs written, no report; 4 interleaved rounds); and the in-memory batch
    API (BatchScorer.score) on the same slices vs the bare job: preprocessing, forward pass, search."""
    from MemorizationIndexLib.audit import audit_paths
    from MemorizationIndexLib.batch_scoring import BatchScorer
    from MemorizationIndexLib.preprocess import prepare_batch

    slices, origin = set_bench_slices(n_slices)
    folder, volume = _write_set_files(out, slices)
    encoder = load_encoder("default")
    index = _build_sets_index(out, encoder)
    scorer = BatchScorer(index)

    def bare():  # the least any caller does: prepare the slices, forward pass, whiten, search
        tensor = torch.from_numpy(prepare_batch(list(slices), encoder.input_size, index.preprocessing))
        with torch.inference_mode():
            parts = [encoder.model(tensor[s : s + 32], encoder.blocks) for s in range(0, len(tensor), 32)]
        raw = {b: torch.cat([p[b] for p in parts]).numpy() for b in encoder.blocks}
        index.search(index.whiten(raw), k=5)

    audit_paths(index, [folder], out / "set-audit")  # warm-up
    runs = interleaved_runs(
        {
            "set": lambda: audit_paths(index, [folder], out / "set-audit"),
            "volume": lambda: audit_paths(index, [volume], out / "volume-audit"),
            "batch_api": lambda: scorer.score(slices),
            "bare": bare,
        },
        repeat=4,
    )
    best = {name: min(values) for name, values in runs.items()}
    per_round = [v / t for v, t in zip(runs["volume"], runs["set"])]
    api_rounds = [b / t for b, t in zip(runs["bare"], runs["batch_api"])]
    result = {
        "n_slices": n_slices,
        "slices": origin,
        "set_s": best["set"],
        "volume_s": best["volume"],
        "set_vs_volume_throughput": best["volume"] / best["set"],
        "set_vs_volume_per_round": per_round,
        "set_vs_volume_median_round": float(np.median(per_round)),
        "batch_api_s": best["batch_api"],
        "bare_s": best["bare"],
        "batch_api_vs_bare": best["bare"] / best["batch_api"],
        "batch_api_vs_bare_median_round": float(np.median(api_rounds)),
    }
    log(
        f"{n_slices} PNG files as a set {best['set']:.2f} s vs one NIfTI {best['volume']:.2f} s "
        f"(throughput ratio: best vs best {result['set_vs_volume_throughput']:.2f}, median of rounds "
        f"{result['set_vs_volume_median_round']:.2f})"
    )
    return result


# ------------------------------------------------------------------------------------ 1M reference


def _whitened_reference(synth: Synthetic, n: int, planted_rows: np.ndarray) -> tuple[dict, dict, dict]:
    """(whiteners, whitened reference vectors [n, d] per block, raw features of the planted rows)."""
    first = synth.chunk_features(0)
    whiteners = {b: ShrinkageWhitener().fit(first[b]) for b in DIMS}
    vectors = {b: np.empty((n, d), np.float32) for b, d in DIMS.items()}
    planted_raw = {b: np.empty((len(planted_rows), d), np.float32) for b, d in DIMS.items()}
    for begin, features in synth.rows(n):
        stop = begin + len(features["stage4"])
        inside = (planted_rows >= begin) & (planted_rows < stop)
        for b in DIMS:
            vectors[b][begin:stop] = whiteners[b].transform(features[b])
            planted_raw[b][inside] = features[b][planted_rows[inside] - begin]
    return whiteners, vectors, planted_raw


def _timed_build(build, vectors: dict) -> tuple[dict, float, float]:
    """(indexes per block, build seconds, peak MB above the RSS before the build)."""
    base = rss_mb()
    reset_peak()
    start = time.perf_counter()
    indexes = {b: build(vectors[b]) for b in DIMS}
    return indexes, time.perf_counter() - start, peak_mb() - base


def _search_figures(
    flat: dict, ivf: dict, vectors: dict, queries: dict, planted_rows: np.ndarray, n_exact: int
) -> dict:
    """Exact against IVF search: time per query slice, recall of the planted rows, agreement of the scores."""
    n_planted = len(planted_rows)
    novel_q = {b: q[n_planted:] for b, q in queries.items()}
    exact_q = {b: np.concatenate([q[:n_exact], novel_q[b][: max(1, n_exact // 5)]]) for b, q in queries.items()}
    n_exact_total, n_queries = len(exact_q["stage4"]), len(queries["stage4"])
    t_exact = best_of(lambda: search.search_blocks(flat, exact_q, k=5), 1)
    exact = search.search_blocks(flat, exact_q, k=5)
    t_bare_flat = best_of(lambda: [flat[b].search(exact_q[b], 5) for b in DIMS], 1)
    approx_sub = search.search_blocks(ivf, exact_q, k=5)
    t_ivf = best_of(lambda: search.search_blocks(ivf, queries, k=5), 2)
    approx = search.search_blocks(ivf, queries, k=5)
    t_bare_ivf = best_of(lambda: [ivf[b].search(queries[b], 5) for b in DIMS], 2)
    null = NullModel(approx.similarity[n_planted:])
    mi_exact = mi_from_z(null.z(exact.similarity[:n_exact]))
    mi_ivf = mi_from_z(null.z(approx_sub.similarity[:n_exact]))
    novel_exact = slice(n_exact, n_exact_total)
    return {
        "mean_planted_cosine": {
            b: float(np.mean(np.sum(queries[b][:n_planted] * vectors[b][planted_rows], axis=1))) for b in DIMS
        },
        "exact_ms_per_query": 1000 * t_exact / n_exact_total,
        "bare_flat_faiss_ms_per_query": 1000 * t_bare_flat / n_exact_total,
        "ivf_ms_per_query": 1000 * t_ivf / n_queries,
        "bare_ivf_faiss_ms_per_query": 1000 * t_bare_ivf / n_queries,
        "speedup_ivf_vs_exact": (t_exact / n_exact_total) / (t_ivf / n_queries),
        "search_speed_vs_bare_faiss_ivf": t_bare_ivf / t_ivf,
        "n_planted": n_planted,
        "recall_at_1_planted_ivf": float(np.mean(approx.ids[:n_planted, 0] == planted_rows)),
        "n_planted_exact_checked": n_exact,
        "recall_at_1_planted_exact": float(np.mean(exact.ids[:n_exact, 0] == planted_rows[:n_exact])),
        "planted_same_top1_as_exact": float(np.mean(approx_sub.ids[:n_exact, 0] == exact.ids[:n_exact, 0])),
        "planted_identical_similarity": float(np.mean(approx_sub.similarity[:n_exact] == exact.similarity[:n_exact])),
        "planted_max_abs_mi_difference": float(np.max(np.abs(mi_exact - mi_ivf))),
        "novel_top1_agreement_with_exact": float(np.mean(approx_sub.ids[novel_exact, 0] == exact.ids[novel_exact, 0])),
        "novel_mean_similarity_ratio_ivf_over_exact": float(
            np.mean(approx_sub.similarity[novel_exact] / exact.similarity[novel_exact])
        ),
    }


def _ivf_load_figures(out: Path, ivf: dict, raw_bytes: int) -> dict:
    """Save the IVF indexes and load them in a fresh process: seconds and resident memory."""
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        paths = []
        for b, index in ivf.items():
            paths.append(str(Path(tmp) / f"index_{b}.faiss"))
            faiss.write_index(index, paths[-1])
        loaded = load_in_subprocess(LOAD_FAISS.format(paths=paths))
    figures = {
        "ivf_load_s": loaded["load_s"],
        "ivf_loaded_rss_mb": loaded["rss_delta_mb"],
        "ivf_loaded_over_raw": loaded["rss_delta_mb"] / (raw_bytes / 2**20),
    }
    log(
        f"IVF indexes load in {loaded['load_s']:.1f} s, {loaded['rss_delta_mb']:.0f} MB "
        f"({figures['ivf_loaded_over_raw']:.3f}x raw)"
    )
    return figures


def _scaling(vectors: dict, queries: dict, n: int, ivf_ms_at_n: float) -> dict:
    """Time per query slice at smaller reference sizes (prefixes of the same vectors)."""
    scaling = {"n_vectors": [], "exact_ms_per_query": [], "ivf_ms_per_query": []}
    probe = {b: q[:200] for b, q in queries.items()}
    n_probe = len(probe["stage4"])
    for size in sorted({max(1000, n // 10), max(1000, (3 * n) // 10), n}):
        prefix = {b: v[:size] for b, v in vectors.items()}
        t_e = best_of(lambda: [faiss.knn(probe[b], prefix[b], 5, metric=faiss.METRIC_INNER_PRODUCT) for b in DIMS], 1)
        if size == n:
            ivf_ms = ivf_ms_at_n
        else:
            small = {b: search.build_ivf_index(prefix[b]) for b in DIMS}
            ivf_ms = 1000 * best_of(lambda: search.search_blocks(small, probe, k=5), 2) / n_probe
            del small
        scaling["n_vectors"].append(size)
        scaling["exact_ms_per_query"].append(1000 * t_e / n_probe)
        scaling["ivf_ms_per_query"].append(ivf_ms)
        log(f"scaling {size:,}: exact {scaling['exact_ms_per_query'][-1]:.2f} ms, IVF {ivf_ms:.3f} ms per query slice")
    return scaling


def bench_large(out: Path, n: int, n_planted: int, n_exact: int, n_novel: int, level: float) -> tuple[dict, dict]:
    synth = Synthetic(seed=2)
    planted_rows = np.sort(np.random.default_rng(3).choice(n, n_planted, replace=False))
    start = time.perf_counter()
    whiteners, vectors, planted_raw = _whitened_reference(synth, n, planted_rows)
    log(f"{n:,} synthetic vectors generated and whitened in {time.perf_counter() - start:.1f} s")
    queries_raw, novel_raw = near_copies(planted_raw, level, seed=4), synth.fresh(n_novel, salt=2)
    queries = {
        b: np.concatenate([whiteners[b].transform(queries_raw[b]), whiteners[b].transform(novel_raw[b])]) for b in DIMS
    }
    raw_bytes = sum(v.nbytes for v in vectors.values())
    ivf, ivf_build_s, ivf_peak = _timed_build(search.build_ivf_index, vectors)
    ivf_bytes = sum(search.vector_bytes(i) for i in ivf.values())
    flat, flat_build_s, flat_peak = _timed_build(search.build_flat_index, vectors)
    log(f"IVF built in {ivf_build_s:.1f} s, flat in {flat_build_s:.1f} s")
    result = {
        "n_vectors": n,
        "dims": DIMS,
        "raw_vector_mb": raw_bytes / 2**20,
        "noise_level": level,
        "ivf": search.describe_index(ivf["stage4"]),
        "ivf_build_s": ivf_build_s,
        "ivf_build_peak_mb": ivf_peak,
        "ivf_index_mb": ivf_bytes / 2**20,
        "ivf_index_over_raw": ivf_bytes / raw_bytes,
        "flat_build_s": flat_build_s,
        "flat_build_peak_mb": flat_peak,
    }
    result.update(_search_figures(flat, ivf, vectors, queries, planted_rows, n_exact))
    log(
        f"1M: exact {result['exact_ms_per_query']:.1f} ms/query, IVF {result['ivf_ms_per_query']:.2f} ms/query, "
        f"recall@1 {result['recall_at_1_planted_ivf']:.4f}"
    )
    del flat
    result.update(_ivf_load_figures(out, ivf, raw_bytes))
    del ivf
    return result, _scaling(vectors, queries, n, result["ivf_ms_per_query"])


# ------------------------------------------------------------------------------------------- main


def _audit_lines(a: dict) -> list[str]:
    """The audit section of the printed table."""
    return [
        "",
        f"audit of {a['n_query_slices']} slices vs {a['n_reference']:,} reference slices ({a['index_kind']}):",
        f"  audit {a['audit_s']:.2f} s | bare forward + FAISS {a['bare_s']:.2f} s "
        f"(forward {a['bare_forward_s']:.2f} s, FAISS {a['bare_faiss_s']:.3f} s)"
        f" | speed vs bare: median of per-round ratios {a['audit_speed_vs_bare_median_round']:.2f} "
        f"(>= 0.9 required), best vs best {a['audit_speed_vs_bare']:.2f}"
        f" | preprocessing {a['preprocess_s']:.2f} s",
        f"  search: audit {a['audit_search_s'] * 1000:.1f} ms vs bare FAISS {a['bare_faiss_s'] * 1000:.1f} ms "
        f"({a['search_speed_vs_bare_faiss']:.2f}x speed)",
        f"  whole CLI command: {a['end_to_end']['cli_audit_s']:.2f} s "
        f"({a['end_to_end']['cli_audit_no_report_s']:.2f} s with --no-report) vs the bare job"
        f" (read, prepare, forward, FAISS) as a plain process {a['end_to_end']['bare_process_s']:.2f} s "
        f"| speed vs bare"
        f" {a['end_to_end']['cli_speed_vs_bare']:.2f} "
        f"({a['end_to_end']['cli_no_report_speed_vs_bare']:.2f} without report)",
        f"  build {a['build_s']:.1f} s (peak +{a['build_peak_mb_over_start']:.0f} MB) | load {a['load_s']:.2f} s, "
        f"{a['loaded_rss_mb']:.0f} MB RSS"
        f" (FAISS {a['loaded_index_structures_mb']:.0f} MB) vs raw vectors {a['raw_vector_mb']:.0f} MB",
    ]


def _large_lines(g: dict) -> list[str]:
    """The large section of the printed table."""
    return [
        "",
        f"{g['n_vectors']:,}-vector reference (search layer), "
        f"IVF nlist={g['ivf']['nlist']} nprobe={g['ivf']['nprobe']}:",
        f"  exact {g['exact_ms_per_query']:.2f} ms/query (bare FAISS {g['bare_flat_faiss_ms_per_query']:.2f}) "
        f"| IVF+rerank {g['ivf_ms_per_query']:.3f} ms/query"
        f" (bare FAISS {g['bare_ivf_faiss_ms_per_query']:.3f}) "
        f"| speedup {g['speedup_ivf_vs_exact']:.1f}x (>= 10 required)",
        f"  planted recall@1 {g['recall_at_1_planted_ivf']:.4f} of {g['n_planted']} (>= 0.999 required); "
        f"identical similarity to exact {g['planted_identical_similarity']:.4f}"
        f" of {g['n_planted_exact_checked']}; max |mi diff| {g['planted_max_abs_mi_difference']:.2g}",
        f"  IVF build {g['ivf_build_s']:.1f} s (peak +{g['ivf_build_peak_mb']:.0f} MB); "
        f"load {g['ivf_load_s']:.2f} s, {g['ivf_loaded_rss_mb']:.0f} MB"
        f" = {g['ivf_loaded_over_raw']:.3f}x raw {g['raw_vector_mb']:.0f} MB (<= 1.2 required)",
    ]


def _sets_lines(t: dict) -> list[str]:
    """The sets section of the printed table."""
    return [
        "",
        f"a set of {t['n_slices']} single-slice PNG files ({t['slices']}) vs the same slices as one NIfTI:",
        f"  set {t['set_s']:.2f} s | volume {t['volume_s']:.2f} s | throughput ratio set/volume: median of "
        f"per-round ratios {t['set_vs_volume_median_round']:.2f} (>= 0.9 required), best vs best "
        f"{t['set_vs_volume_throughput']:.2f}",
        f"  in-memory batch API {t['batch_api_s']:.2f} s vs bare preprocessing + forward + FAISS "
        f"{t['bare_s']:.2f} s | speed vs bare: median of rounds {t['batch_api_vs_bare_median_round']:.2f}, "
        f"best vs best {t['batch_api_vs_bare']:.2f}",
    ]


def _verification_lines(v: dict) -> list[str]:
    """The verification section of the printed table."""
    if "skipped" in v:
        return ["", f"audit with the second stage: skipped ({v['skipped']})"]
    steps = v["steps_median_s"]
    return [
        "",
        f"audit of {v['n_query_slices']} real slices with and without the second stage (k = {v['candidates']}) "
        f"vs {v['n_reference']:,} vectors:",
        f"  reference: {v['reference']}",
        f"  without {v['without_median_s']:.2f} s | with {v['with_median_s']:.2f} s (medians of {v['rounds']} rounds)"
        f" | with/without: median of per-round ratios {v['ratio_median_round']:.2f} (<= 1.5 wanted)",
        "  second stage, step by step (medians): "
        + ", ".join(f"{name.replace('_', ' ')} {steps[name]:.2f} s" for name in STAGE_STEPS)
        + f"; sum {v['steps_sum_s']:.2f} s; reference grids alone (one thread, not in the sum) "
        f"{steps['reference_grids_alone']:.2f} s; patch search alone (part of the region search) "
        f"{steps.get('patch_search_alone', float('nan')):.2f} s over {v.get('n_patches', 0):,} indexed patches",
        f"  per audit: {v['reference_grids_per_audit']} candidate reference slices "
        f"({v['real_reference_grids_per_audit']} of the real slices' own rows; "
        f"{v.get('reference_grids_made_per_audit', '?')} of them made into grids: the rest waited for a "
        f"neighbour that did not verify), {v['pairs_per_audit']} shortlisted pairs, "
        f"{v.get('noisy_slices_per_audit', '?')} "
        "noisy slices searched smoothed; thumbnail file read "
        f"{v['thumbnail_file_load_s']:.2f} s once per loaded index (not in the rounds)",
    ]


def _scaling_lines(s: dict) -> list[str]:
    """The scaling section of the printed table."""
    lines: list[str] = []
    lines += ["", f"{'vectors':>10} {'exact ms/q':>11} {'IVF ms/q':>9}"]
    for n, e, i in zip(s["n_vectors"], s["exact_ms_per_query"], s["ivf_ms_per_query"]):
        lines.append(f"{n:>10,} {e:>11.2f} {i:>9.3f}")
    return lines


def table(results: dict) -> str:
    """The printed summary of all sections."""
    lines = [
        f"machine: {describe(results['machine'])}",
        "",
    ]
    lines.append(
        f"{'encoder':<10} {'device':<10} {'embed slices/s':>15} {'bare slices/s':>14} {'ratio':>6} "
        f"{'RGB net slices/s':>17}"
    )
    for row in results["encoders"]:
        lines.append(
            f"{row['encoder']:<10} {row['device'][:10]:<10} {row['embed_slices_per_s']:>15.1f} "
            f"{row['bare_slices_per_s']:>14.1f} {row['ratio']:>6.2f} {row['published_rgb_slices_per_s']:>17.1f}"
        )
    for key, section in (
        ("audit", _audit_lines),
        ("large", _large_lines),
        ("sets", _sets_lines),
        ("verification", _verification_lines),
        ("scaling", _scaling_lines),
    ):
        if results.get(key):
            lines += section(results[key])
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench", help="results folder (default: bench)")
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes (a few minutes): 20k audit reference, 200k large reference"
    )
    parser.add_argument(
        "--large", type=int, default=1_000_000, help="vectors of the large reference (default: 1,000,000)"
    )
    parser.add_argument(
        "--audit-reference", type=int, default=100_000, help="slices of the audit reference (default: 100,000)"
    )
    parser.add_argument(
        "--verification-rounds",
        type=int,
        default=None,
        help="rounds of the verification section (default 9, 3 quick; its per-round ratio swings by ±0.15)",
    )
    parser.add_argument(
        "--sections",
        default="encoders,audit,large,sets,verification",
        help="comma list of encoders,audit,large,sets,verification",
    )
    args = parser.parse_args(argv)
    keep_freed_memory()  # as the CLI does; the plain-process comparison in the audit section does not
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sections = set(args.sections.split(","))
    large_n = 200_000 if args.quick else args.large
    audit_n = 20_000 if args.quick else args.audit_reference
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = {
        "machine": machine(),
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "encoders": [],
    }
    started = time.perf_counter()
    if "encoders" in sections:
        results["encoders"] = bench_encoders(devices, args.quick)
    if "audit" in sections:
        results["audit"] = bench_audit(out, audit_n)
    if "large" in sections:
        results["large"], results["scaling"] = bench_large(
            out, large_n, n_planted=2000, n_exact=250 if not args.quick else 200, n_novel=1000, level=0.3
        )
    if "sets" in sections:
        results["sets"] = bench_sets(out)
    if "verification" in sections:
        results["verification"] = bench_verification(
            out, audit_n, rounds=args.verification_rounds or (3 if args.quick else 9)
        )
    results["total_s"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(table(results))
    print(f"\nresults in {out / 'results.json'} ({results['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
