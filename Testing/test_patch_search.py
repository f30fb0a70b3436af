"""The patch search (patch_search.py): pixel patches of the slices' small images, their index, and the training
slices a query's patches vote for."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
from scipy import ndimage

from MemorizationIndexLib.encoders.tiles import PIXEL_GRID, PIXEL_KEY, pixel_tiles
from MemorizationIndexLib.patch_search import (
    MOVE_BIN,
    PATCH_CELLS,
    PATCH_NPROBE,
    PATCH_SCAN,
    PATCH_STEP,
    PatchIndex,
    cells_scanned,
    patches,
    votes,
)
from MemorizationIndexLib.search import build_ivf_index


def _textures(n: int, seed: int = 0) -> np.ndarray:
    """n smooth random images [n, 1, PIXEL_GRID²] in [0, 1]."""
    rng = np.random.default_rng(seed)
    images = ndimage.gaussian_filter(rng.random((n, PIXEL_GRID, PIXEL_GRID)), (0, 1.5, 1.5))
    images = (images - images.min()) / (images.max() - images.min())
    return images.reshape(n, 1, -1).astype(np.float32)


def test_patches_are_unit_vectors_of_the_windows_that_are_not_flat() -> None:
    images = _textures(2)
    images[1] = 0.5  # a flat image has no patch
    vectors, image, corners = patches(images, PATCH_STEP)
    per_side = (PIXEL_GRID - PATCH_CELLS) // PATCH_STEP + 1
    assert len(vectors) == per_side**2 and (image == 0).all()
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert np.allclose(vectors.mean(axis=1), 0, atol=1e-6)
    assert (corners % PATCH_STEP == 0).all() and corners.max() == PIXEL_GRID - PATCH_CELLS
    square = images[0, 0].reshape(PIXEL_GRID, PIXEL_GRID)
    r, c = corners[5]
    window = square[r : r + PATCH_CELLS, c : c + PATCH_CELLS].ravel()
    assert np.allclose(vectors[5], (window - window.mean()) / np.linalg.norm(window - window.mean()), atol=1e-5)


def test_a_moved_region_is_named_by_its_source_and_placed_by_its_move(tmp_path: Path) -> None:
    reference = _textures(12)
    index = PatchIndex.fit(reference)
    query = np.zeros((PIXEL_GRID, PIXEL_GRID), dtype=np.float32)
    source = reference[7, 0].reshape(PIXEL_GRID, PIXEL_GRID)
    query[25:45, 3:23] = source[9:29, 30:50]  # moved by (16, -27) pixels, off the indexed patches' lattice
    ranked = index.ranked({PIXEL_KEY: np.stack([query.reshape(1, -1), reference[3]])})
    assert len(ranked) == 2 and ranked[0][0][0] == 7 and ranked[1][0][0] == 3  # a whole copy: moved by 0
    places = ranked[0][0][1]
    assert np.allclose((places[:2] - places[2:]) * PIXEL_GRID, (16, -27), atol=1.0)
    assert np.allclose(ranked[1][0][1][:2], ranked[1][0][1][2:])
    assert index.consistent(12) and not index.consistent(7)
    index.save(tmp_path)
    loaded = PatchIndex.load(tmp_path)
    assert loaded is not None and PatchIndex.load(tmp_path / "elsewhere") is None
    again = loaded.ranked({PIXEL_KEY: query.reshape(1, 1, -1)})
    assert [s for s, _ in again[0]] == [s for s, _ in ranked[0]]


def _votes_one_by_one(image, corners, scores, ids, slice_of, at) -> list[list[tuple[int, np.ndarray]]]:
    """What :func:`votes` computes, patch by patch: each training slice's best move by summed margins (the
    smallest move's bin on ties), its largest-margin patch's place, the slices by votes (the smaller on ties)."""
    moves: dict[tuple[int, int, int, int], list[tuple[float, int]]] = {}
    for p in range(len(image)):
        found = ids[p] >= 0
        margin = scores[p, 0] - scores[p][found].min() if found[0] else 0.0
        if margin > 0:
            hit = int(ids[p, 0])
            r, c = (corners[p] - at[hit]) // MOVE_BIN
            moves.setdefault((int(image[p]), int(slice_of[hit]), int(r), int(c)), []).append((float(margin), p))
    best: dict[int, dict[int, tuple[float, np.ndarray]]] = {}
    for (query, source, _, _), voted in sorted(moves.items()):
        total = sum(np.float64(m) for m, _ in voted)
        p = max(voted, key=lambda mp: (mp[0], -mp[1]))[1]
        place = np.concatenate([corners[p], at[int(ids[p, 0])]]) + PATCH_CELLS / 2.0
        if total > best.setdefault(query, {}).get(source, (-np.inf, None))[0]:
            best[query][source] = (total, place / PIXEL_GRID)
    last = max(best) if best else -1
    return [
        [(s, best.get(q, {})[s][1]) for s in sorted(best.get(q, {}), key=lambda s: (-best[q][s][0], s))]
        for q in range(last + 1)
    ]


def test_votes_are_the_best_move_of_each_training_slice() -> None:
    rng = np.random.default_rng(3)
    m, depth, indexed = 400, 4, 60
    image = np.sort(rng.integers(0, 5, m))
    image[image == 3] = 2  # a query image between others without votes gets an empty list
    corners = rng.integers(0, PIXEL_GRID - PATCH_CELLS, (m, 2))
    scores = np.sort(rng.choice([0.5, 0.7, 0.9, 1.0], (m, depth)), axis=1)[:, ::-1].astype(np.float32)
    ids = rng.integers(0, indexed, (m, depth))
    ids[::7, 2:] = -1  # fewer hits than asked for
    ids[::11, 0] = -1  # no hit: no vote
    slice_of = rng.integers(0, 6, indexed)
    at = rng.integers(0, PIXEL_GRID - PATCH_CELLS, (indexed, 2)) // 8 * 8  # few moves, so they collect votes
    got = votes(image, corners, scores, ids, slice_of, at)
    expected = _votes_one_by_one(image, corners, scores, ids, slice_of, at)
    assert len(got) == len(expected) == 5 and got[3] == []
    for ours, theirs in zip(got, expected):
        assert [s for s, _ in ours] == [s for s, _ in theirs]
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(ours, theirs))
    assert votes(image[:0], corners[:0], scores[:0], ids[:0], slice_of, at) == []


def test_a_query_patch_scans_about_patch_scan_indexed_patches_at_most() -> None:
    """Small cells are scanned PATCH_NPROBE at a time; large ones fewer, at least one, so that the search grows with
    the root of the reference (method.md §7.53)."""
    small = PatchIndex.fit(_textures(40))
    assert faiss.downcast_index(small.index).nprobe == PATCH_NPROBE == cells_scanned(small.index)
    for per_cell, cells in ((PATCH_SCAN / 2, 2), (PATCH_SCAN, 1), (PATCH_SCAN * 3, 1), (PATCH_SCAN / 8, PATCH_NPROBE)):
        vectors = np.random.default_rng(0).random((int(16 * per_cell), 4)).astype(np.float32)
        assert cells_scanned(build_ivf_index(vectors, nlist=16)) == cells


def test_a_query_without_patches_names_nothing() -> None:
    index = PatchIndex.fit(_textures(3))
    flat = np.full((2, 1, PIXEL_GRID * PIXEL_GRID), 0.3, dtype=np.float32)
    assert index.ranked({PIXEL_KEY: flat}) == [[], []]


def test_small_images_are_the_framed_inputs_averaged_down() -> None:
    framed = np.random.default_rng(1).random((3, 1, 224, 224)).astype(np.float32)
    small = pixel_tiles(framed)
    assert small.shape == (3, 1, PIXEL_GRID * PIXEL_GRID)
    block = 224 // PIXEL_GRID
    expected = framed.reshape(3, PIXEL_GRID, block, PIXEL_GRID, block).mean(axis=(2, 4)).reshape(3, 1, -1)
    assert np.allclose(small, expected, atol=1e-6)


def test_an_index_holds_pixel_patches_only_with_thumbnails(tmp_path: Path, data: dict[str, Path], encoder) -> None:
    """The patch index is made of the training slices' own pixels: an index keeps it only when its user asks for
    pixels (``--store-thumbnails``); otherwise an audit makes the same one from the training volumes."""
    from reliability_helpers import build_small_index

    from MemorizationIndexLib.patch_search import INDEX_FILE, PLACES_FILE

    bare = build_small_index(data, tmp_path / "bare", encoder=encoder)
    kept = build_small_index(data, tmp_path / "kept", encoder=encoder, store_thumbnails=True)
    assert not (tmp_path / "bare" / INDEX_FILE).exists() and not (tmp_path / "bare" / PLACES_FILE).exists()
    assert (tmp_path / "kept" / INDEX_FILE).exists() and kept.regions is not None and kept.regions.patches is not None
    assert bare.regions is not None and bare.regions.patches is None and bare.regions.small_images is not None
    made = bare.regions.patch_index()
    assert made is not None and made.index.ntotal == kept.regions.patches.index.ntotal > 0
    assert np.array_equal(made.slice_of, kept.regions.patches.slice_of)
    assert np.array_equal(made.corners, kept.regions.patches.corners)
    assert bare.regions.patch_index() is made  # made once


def test_a_reference_of_more_than_the_limit_has_no_patch_search(monkeypatch, tmp_path: Path, data, encoder) -> None:
    """Above PATCH_MAX_SLICES training slices the index and its verified null both go without the patch search, and
    the audit's check of the null's settings still holds (method.md §7.52)."""
    from reliability_helpers import build_small_index

    from MemorizationIndexLib import patch_search
    from MemorizationIndexLib.index_build import BuildOptions, build_index
    from MemorizationIndexLib.index_verification import SecondStage

    monkeypatch.setattr(patch_search, "PATCH_MAX_SLICES", 3)
    with_holdout = build_small_index(data, tmp_path / "large", encoder=encoder)
    # and with the null from held-out splits of the training slices, whose blurred twins are embedded afresh
    splits = build_index(
        [data["train1"], data["train2"], data["holdout"]],
        tmp_path / "splits",
        BuildOptions(reference_copies=False),
        encoder=encoder,
    )
    for index in (with_holdout, splits):
        assert index.regions is not None and index.regions.patch_index() is None
        assert index.config["verification"]["patch_search"] == 0
        assert SecondStage(index).used
    tiles = {PIXEL_KEY: np.zeros((4, 1, PIXEL_GRID * PIXEL_GRID), np.float32), "stage4": np.zeros((4, 2, 3))}
    assert set(patch_search.within_limit(tiles)) == {"stage4"}
    assert patch_search.within_limit({key: raw[:3] for key, raw in tiles.items()}).keys() == tiles.keys()
