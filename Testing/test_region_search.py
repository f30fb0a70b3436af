"""The region search (region_search.py): tile features from the encoder's forward pass, the index of the
reference slices' tiles, and the candidates it adds for partial copies."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from MemorizationIndexLib import patch_search, region_search, search
from MemorizationIndexLib.augment_partial import quarter
from MemorizationIndexLib.embedding import embed_slices, embed_slices_and_tiles
from MemorizationIndexLib.encoders.tiles import (
    COARSE_TILES,
    FINE_QUERY_TILES,
    FINE_TILES,
    INDEXED_FINE,
    PIXEL_GRID,
    PIXEL_KEY,
    fine_key,
    indexed,
    indexed_windows_of,
    is_fine,
    pool_tiles,
)
from MemorizationIndexLib.patch_search import PATCH_CANDIDATES
from MemorizationIndexLib.preprocess import PreprocessSettings, framed, nonempty_mask, prepare_batch, scale_unit
from MemorizationIndexLib.region_search import NATIVE_ONLY_CANDIDATES, REGION_CANDIDATES, RegionHits, RegionIndex
from MemorizationIndexLib.search import Neighbours
from MemorizationIndexLib.second_stage import candidates, noisy_slices, with_region_candidates
from MemorizationIndexLib.transforms import rotate
from MemorizationIndexLib.volumes import image_slices, read_image


def test_tiles_are_window_means_inside_the_map() -> None:
    maps = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    coarse, fine = pool_tiles(maps, COARSE_TILES), pool_tiles(maps, FINE_TILES)
    assert coarse.shape == (2, 13, 3) and fine.shape == (2, 49, 3)
    assert all(0 <= t < b <= 1 and 0 <= left < r <= 1 for t, b, left, r in COARSE_TILES + FINE_TILES)
    assert torch.equal(coarse[:, 0], maps[:, :, :4, :4].mean(dim=(2, 3)))  # the top-left quarter
    assert torch.equal(coarse[:, 4], maps[:, :, 2:6, 2:6].mean(dim=(2, 3)))  # the centre
    assert torch.equal(coarse[:, -1], maps[:, :, :, 4:].mean(dim=(2, 3)))  # the right half
    assert torch.equal(fine[:, 0], maps[:, :, :2, :2].mean(dim=(2, 3)))  # a quarter of the side
    assert torch.equal(fine[:, 1], maps[:, :, :2, 1:3].mean(dim=(2, 3)))  # ... an eighth of the side on
    assert torch.equal(fine[:, -1], maps[:, :, 6:, 6:].mean(dim=(2, 3)))  # ... to the bottom-right corner
    assert len(set(FINE_TILES)) == 49


def test_a_slice_has_fine_tiles_at_half_the_step_of_those_indexed() -> None:
    maps = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    query = pool_tiles(maps, FINE_QUERY_TILES)
    assert query.shape == (2, 169, 3) and len(set(FINE_QUERY_TILES)) == 169
    assert torch.equal(query[:, 1], maps[:, :, :4, 1:5].mean(dim=(2, 3)))  # a sixteenth of the side on
    # The indexed tiles are every other one of them, in the same order.
    assert [FINE_QUERY_TILES[i] for i in INDEXED_FINE] == list(FINE_TILES)
    assert torch.equal(query[:, list(INDEXED_FINE)], pool_tiles(maps, FINE_TILES))
    raw = np.random.default_rng(0).normal(size=(5, 169, 3)).astype(np.float32)
    assert np.array_equal(indexed(fine_key("stage4"), raw), raw[:, list(INDEXED_FINE)])
    assert np.array_equal(indexed("stage4", raw[:, :13]), raw[:, :13])  # coarse tiles are all indexed
    assert indexed_windows_of(fine_key("stage4")) == FINE_TILES and indexed_windows_of("stage5") == COARSE_TILES


def test_a_region_index_holds_the_indexed_fine_tiles_and_places_the_query_tiles_at_half_the_step() -> None:
    rng = np.random.default_rng(1)
    key = fine_key("stage4")
    tiles = {key: rng.normal(size=(30, len(FINE_QUERY_TILES), 16)).astype(np.float32)}
    regions = RegionIndex.fit(tiles, np.arange(30))
    assert regions.kinds["fine"].index.ntotal == 30 * len(FINE_TILES) and regions.consistent(30)
    # A query whose only distinctive tile is an off-lattice window of slice 7's indexed window 9 ...
    query = {key: rng.normal(size=(1, len(FINE_QUERY_TILES), 16)).astype(np.float32) * 0.1}
    off_lattice = next(i for i in range(len(FINE_QUERY_TILES)) if i not in INDEXED_FINE)
    query[key][0, off_lattice] = tiles[key][7, INDEXED_FINE[9]]
    named = regions.search(query)
    assert named.rows[0, 0] == 7
    top, bottom, left, right = FINE_QUERY_TILES[off_lattice]
    assert named.places[0, 0, :2].tolist() == [(top + bottom) / 2, (left + right) / 2]  # where the query's tile is
    top, bottom, left, right = FINE_TILES[9]
    assert named.places[0, 0, 2:].tolist() == [(top + bottom) / 2, (left + right) / 2]  # ... and the source's
    with pytest.raises(ValueError, match="169 tiles"):
        regions.search({key: query[key][:, list(INDEXED_FINE)]})


def test_a_slice_named_by_both_kinds_keeps_the_fine_tiles_places() -> None:
    """A query whose one coarse tile and one fine tile copy training slice 7's: the coarse kind names it first, and it
    keeps the fine tiles' places, framed in the whole view (closer to a moved copy's; method.md §7.49)."""
    rng = np.random.default_rng(2)
    coarse, fine = "stage4", fine_key("stage4")
    tiles = {
        coarse: rng.normal(size=(30, len(COARSE_TILES), 16)).astype(np.float32),
        fine: rng.normal(size=(30, len(FINE_QUERY_TILES), 16)).astype(np.float32),
    }
    regions = RegionIndex.fit(tiles, np.arange(30))
    query = {key: 0.1 * rng.normal(size=(1, *raw.shape[1:])).astype(np.float32) for key, raw in tiles.items()}
    query[coarse][0, 3] = tiles[coarse][7, 5]
    query[fine][0, 40] = tiles[fine][7, INDEXED_FINE[9]]
    named = regions.search(query)
    assert named.rows[0, 0] == 7 and named.framed[0, 0] and list(named.rows[0]).count(7) == 1
    top, bottom, left, right = FINE_QUERY_TILES[40]
    assert named.places[0, 0, :2].tolist() == [(top + bottom) / 2, (left + right) / 2]
    top, bottom, left, right = FINE_TILES[9]
    assert named.places[0, 0, 2:].tolist() == [(top + bottom) / 2, (left + right) / 2]


def _tile_kinds(tiles: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The encoder's tiles alone, without the slices' small images: a region index of them has no patch search, for
    the tests of what the tiles themselves name."""
    return {key: raw for key, raw in tiles.items() if key != PIXEL_KEY}


def _hits(rows: list[list[int]]) -> RegionHits:
    """Region hits of ``rows`` whose places are (row, position, row, position) for telling them apart, framed
    (fractions of the whole field of view) where the row is odd."""
    rows_ = np.array(rows)
    places = np.stack([rows_, np.broadcast_to(np.arange(rows_.shape[1]), rows_.shape)] * 2, axis=-1).astype(float)
    return RegionHits(rows_, np.where((rows_ >= 0)[..., None], places, np.nan), (rows_ >= 0) & (rows_ % 2 == 1))


def test_region_candidates_follow_the_global_ones_without_repeats() -> None:
    listed = np.array([[4, 2, -1], [1, 3, 5]])
    found = with_region_candidates(listed, _hits([[2, 7, 7], [9, -1, 1]]))
    counted = 3 + REGION_CANDIDATES
    assert found.rows.shape == (2, counted + NATIVE_ONLY_CANDIDATES)
    # The last NATIVE_ONLY_CANDIDATES places count only by their near-exact part (method.md §7.46).
    assert found.native_only[:, counted:].all() and not found.native_only[:, :counted].any()
    # The patch search's rows lead the region search's, in places of their own (method.md §7.52).
    patched = with_region_candidates(listed, replace(_hits([[2, 7, 7], [9, -1, 1]]), patched=PATCH_CANDIDATES))
    assert patched.rows.shape == (2, counted + PATCH_CANDIDATES + NATIVE_ONLY_CANDIDATES)
    assert not patched.native_only[:, : counted + PATCH_CANDIDATES].any()
    assert found.rows[:, :6].tolist() == [[4, 2, -1, 7, -1, -1], [1, 3, 5, 9, -1, -1]]
    assert (found.rows[:, 6:] == -1).all()
    # Every candidate the region search named carries the places of its first naming; the others none.
    assert found.places[0, 1].tolist() == [2, 0, 2, 0] and found.places[0, 3].tolist() == [7, 1, 7, 1]
    assert found.places[1, 0].tolist() == [1, 2, 1, 2] and found.places[1, 3].tolist() == [9, 0, 9, 0]
    assert np.isnan(found.places[0, 0]).all() and np.isnan(found.places[1, 4:]).all()
    assert found.framed[:, :4].tolist() == [[False, False, False, True], [True, False, False, True]]  # rows 7, 1, 9
    assert not found.framed[:, 4:].any()
    many = _hits([[4, 8, 2, 6, 9, 11], [-1, -1, -1, -1, -1, -1]])  # both kinds' rows: at most m + extra are added
    fewer = with_region_candidates(listed, many, 2, 1)
    assert fewer.rows.tolist() == [[4, 2, -1, 8, 6, 9], [1, 3, 5, -1, -1, -1]]
    assert fewer.native_only.tolist() == [[False] * 5 + [True]] * 2


def test_a_second_view_takes_the_region_candidates_in_turn_or_alone() -> None:
    mine, view = _hits([[4, 2, 7], [1, 3, 5], [6, -1, -1]]), _hits([[9, 3, 0], [8, -1, 6]])
    both = mine.with_view(np.array([1, 2]), view, alone=np.array([1]))
    assert both.rows.tolist() == [[4, 2, 7, -1, -1, -1], [9, 1, 3, 0, 5, -1], [8, 6, -1, -1, -1, -1]]
    assert np.array_equal(both.places[1, 0], view.places[0, 0]) and np.array_equal(both.places[1, 1], mine.places[1, 0])
    assert np.array_equal(both.places[1, 2], view.places[0, 1])  # a row both name keeps the view's place
    assert np.array_equal(both.places[2, :2], view.places[1, [0, 2]]) and np.isnan(both.places[2, 2:]).all()
    assert np.array_equal(both.places[0, :3], mine.places[0]) and np.isnan(both.places[0, 3:]).all()
    assert both.framed.tolist() == [
        [False, False, True, False, False, False],  # rows 4, 2, 7
        [True, True, True, False, True, False],  # rows 9, 1, 3, 0, 5
        [False] * 6,  # rows 8, 6
    ]
    assert both.patched == 0 and mine.with_view(np.array([1]), replace(view, patched=3), np.array([])).patched == 3


@pytest.fixture(scope="module")
def spine_slices(spine: dict[str, Path]) -> dict[str, list[np.ndarray]]:
    """Non-empty sagittal slices of spine 01–03 (the reference) and of 06 (another person)."""
    out = {}
    for name in ("01", "02", "03", "06"):
        stack = image_slices(read_image(spine[name]), 0)
        out[name] = [stack[k] for k in np.flatnonzero(nonempty_mask(stack, PreprocessSettings()))]
    return out


@pytest.fixture(scope="module")
def spine_reference(encoder, spine_slices) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """The reference slices (spine 01–03) and their tiles, embedded once for the tests that index them."""
    reference = spine_slices["01"] + spine_slices["02"] + spine_slices["03"]
    return reference, embed_slices_and_tiles(encoder, reference, PreprocessSettings())[1]


def test_tiles_come_from_the_forward_pass_that_gives_the_features(encoder, spine_slices) -> None:
    slices = spine_slices["06"][:10]
    features, tiles = embed_slices_and_tiles(encoder, slices, PreprocessSettings(), tiled=7, batch_size=4)
    alone = embed_slices(encoder, slices, PreprocessSettings(), batch_size=4)
    assert all(np.array_equal(features[b], alone[b]) for b in encoder.blocks)
    assert encoder.region_block == "stage4"  # the shallowest of stage4..stage6: the most local features
    assert encoder.tile_keys == encoder.blocks + (fine_key("stage4"), PIXEL_KEY)
    shapes = {b: (7, len(COARSE_TILES), alone[b].shape[1]) for b in encoder.blocks}
    assert {key: t.shape for key, t in tiles.items()} == shapes | {
        fine_key("stage4"): (7, len(FINE_QUERY_TILES), alone["stage4"].shape[1]),
        PIXEL_KEY: (7, 1, PIXEL_GRID * PIXEL_GRID),
    }
    assert embed_slices_and_tiles(encoder, slices, PreprocessSettings(), tiled=0)[1] is None


def test_fine_tiles_see_the_whole_field_of_view(encoder, brain_subjects: list[Path]) -> None:
    """Coarse tiles come from the slice cropped to its foreground, as the global features do; fine tiles from the
    slice in its whole field of view, where a partial copy keeps its place (method.md §7.31)."""
    settings, slices = PreprocessSettings(), _brain_slices(brain_subjects[0], 40)[:3]
    _, tiles = embed_slices_and_tiles(encoder, slices, settings)
    cropped = prepare_batch(slices, encoder.input_size, settings)
    whole = prepare_batch(slices, encoder.input_size, framed(settings))
    assert not np.allclose(cropped, whole)  # a brain slice has margins that the crop takes away
    with torch.inference_mode():
        fine = pool_tiles(encoder.region_maps(whole), FINE_QUERY_TILES).numpy()
        coarse = pool_tiles(encoder.feature_maps(cropped)["stage5"], COARSE_TILES).numpy()
    np.testing.assert_allclose(tiles[fine_key(encoder.region_block)], fine, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(tiles["stage5"], coarse, rtol=1e-4, atol=1e-6)


def _hosts(reference: list[np.ndarray], other: list[np.ndarray], rows: list[int]) -> list[np.ndarray]:
    """For each reference row, another person's slice resampled onto its grid and brought to its brightness."""
    hosts = []
    for j, row in enumerate(rows):
        source = np.asarray(reference[row], dtype=np.float32)
        host = np.asarray(other[(7 * j) % len(other)], dtype=np.float32)
        host = host[
            np.ix_(
                np.linspace(0, host.shape[0] - 1, source.shape[0]).astype(int),
                np.linspace(0, host.shape[1] - 1, source.shape[1]).astype(int),
            )
        ]
        hosts.append(host / max(float(np.percentile(host, 99.5)), 1e-6) * float(np.percentile(source, 99.5)))
    return hosts


def _half_copies(reference: list[np.ndarray], other: list[np.ndarray], rows: list[int]) -> list[np.ndarray]:
    """Each reference slice's upper half over another person's slice."""
    copies = []
    for row, host in zip(rows, _hosts(reference, other, rows)):
        half = len(host) // 2
        copies.append(np.concatenate([reference[row][:half], host[half:]]))
    return copies


def _moved_patches(
    reference: list[np.ndarray],
    other: list[np.ndarray],
    rows: list[int],
    side: float = 0.4,
    band: tuple[float, float] = (0.2, 0.4),
) -> list[np.ndarray]:
    """A square of ``side`` of each reference slice's side, from a place whose top lies in the ``band`` of its
    height, pasted at another place of another person's slice (places that are no tile's)."""
    rng = np.random.default_rng(7)
    copies = []
    for row, host in zip(rows, _hosts(reference, other, rows)):
        h, w = host.shape
        size = int(side * min(h, w))
        y0, x0 = int(rng.uniform(*band) * h), int(rng.uniform(0.05, 0.55) * w)
        y1, x1 = int(rng.uniform(0.05, 0.55) * h), int(rng.uniform(0.05, 0.55) * w)
        copy = host.copy()
        copy[y1 : y1 + size, x1 : x1 + size] = reference[row][y0 : y0 + size, x0 : x0 + size]
        copies.append(copy)
    return copies


def test_half_copies_find_their_source_among_the_region_candidates(
    encoder, spine_slices, spine_reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference, tiles = spine_reference
    rows = np.arange(100, 100 + len(reference))  # original rows need not start at 0
    regions = RegionIndex.fit(tiles, rows)
    sources = list(range(3, len(reference), 6))
    _, query_tiles = embed_slices_and_tiles(
        encoder, _half_copies(reference, spine_slices["06"], sources), PreprocessSettings()
    )
    named = regions.search(query_tiles)
    found = named.rows
    assert found.shape == (len(sources), PATCH_CANDIDATES + 2 * (REGION_CANDIDATES + NATIVE_ONLY_CANDIDATES))
    assert named.places.shape == (*found.shape, 4) and np.isfinite(named.places[found >= 0]).all()
    assert ((named.places[found >= 0] > 0) & (named.places[found >= 0] < 1)).all()  # tile centres
    hits = [rows[s] in found[i] for i, s in enumerate(sources)]
    assert np.mean(hits) >= 0.9, (np.mean(hits), len(hits))
    assert regions.consistent(100 + len(reference)) and not regions.consistent(100 + len(reference) - 1)
    regions.save(tmp_path, with_patches=True)
    loaded = RegionIndex.load(tmp_path)
    again = None if loaded is None else loaded.search(query_tiles)
    assert again is not None and np.array_equal(again.rows, found)
    assert np.array_equal(again.places, named.places, equal_nan=True)
    assert RegionIndex.load(tmp_path / "elsewhere") is None
    monkeypatch.setattr(region_search, "IVF_MIN_VECTORS", 10)  # the large-reference kind finds the same sources
    monkeypatch.setattr(patch_search, "IVF_MIN_PATCHES", 10)
    approximate = RegionIndex.fit(tiles, rows).search(query_tiles).rows
    assert np.mean([rows[s] in approximate[i] for i, s in enumerate(sources)]) >= np.mean(hits) - 0.1


def test_moved_patches_are_found_by_the_fine_tiles(encoder, spine_slices, spine_reference) -> None:
    reference, tiles = spine_reference
    rows = np.arange(len(reference))
    sources = list(range(2, len(reference), 3))
    _, query_tiles = embed_slices_and_tiles(
        encoder, _moved_patches(reference, spine_slices["06"], sources), PreprocessSettings()
    )
    both = RegionIndex.fit(tiles, rows)
    coarse = RegionIndex.fit({b: tiles[b] for b in encoder.blocks}, rows)
    assert list(both.kinds) == ["coarse", "fine"] and list(coarse.kinds) == ["coarse"]
    found = both.search(query_tiles).rows
    alone = coarse.search(query_tiles).rows
    hits = np.mean([s in found[i][:REGION_CANDIDATES] for i, s in enumerate(sources)])
    hits_coarse = np.mean([s in alone[i][:REGION_CANDIDATES] for i, s in enumerate(sources)])
    assert hits >= 0.5 and hits >= hits_coarse + 0.2, (hits, hits_coarse, len(sources))


def test_moved_patches_off_the_indexed_tiles_are_named_by_the_query_tiles_between_them(
    encoder, spine_slices, spine_reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A patch moved anywhere rarely lands on the indexed tiles' lattice; a query's fine tiles at half its step put a
    # window within a sixteenth of the side of one the index holds of the source (method.md §7.48).
    reference, tiles = spine_reference
    tiles = _tile_kinds(tiles)
    regions = RegionIndex.fit(tiles, np.arange(len(reference)))
    sources = list(range(1, len(reference), 2))
    patches = _moved_patches(reference, spine_slices["06"], sources, side=0.3)
    _, query_tiles = embed_slices_and_tiles(encoder, patches, PreprocessSettings())
    found = regions.search(query_tiles).rows
    monkeypatch.setattr(region_search, "windows_of", indexed_windows_of)  # the query's tiles on the lattice alone
    lattice = RegionIndex.fit(tiles, np.arange(len(reference)))
    on_lattice = lattice.search({key: indexed(key, raw) for key, raw in query_tiles.items()}).rows
    named = np.mean([s in found[i][:REGION_CANDIDATES] for i, s in enumerate(sources)])
    named_on_lattice = np.mean([s in on_lattice[i][:REGION_CANDIDATES] for i, s in enumerate(sources)])
    # measured: 0.60 of 30 patches named among the first REGION_CANDIDATES rows, against 0.47 on the lattice alone
    assert named >= named_on_lattice + 0.1, (named, named_on_lattice, len(sources))


def test_the_region_candidates_name_whole_copies_and_moved_patches(encoder, spine_slices, spine_reference) -> None:
    # The audit verifies 3 global candidates and up to REGION_CANDIDATES region ones (method.md §7.29): the region
    # search must name a whole copy's source as well (turned and blurred, as the global search may rank it low), and
    # its deeper ranks must hold moved patches' sources that its first 3 miss.
    reference, tiles = spine_reference
    regions = RegionIndex.fit(_tile_kinds(tiles), np.arange(len(reference)))
    sources = list(range(2, len(reference), 3))
    whole = [ndimage.gaussian_filter(rotate(reference[s], 20.0), 1.5) for s in sources]
    patches = _moved_patches(reference, spine_slices["06"], sources, side=0.35)
    _, query_tiles = embed_slices_and_tiles(encoder, whole + patches, PreprocessSettings())
    found = regions.search(query_tiles).rows
    whole_named = np.array([s in found[i][:REGION_CANDIDATES] for i, s in enumerate(sources)])
    moved = found[len(sources) :]
    moved_named = np.array([s in moved[i][:REGION_CANDIDATES] for i, s in enumerate(sources)])
    moved_first = np.array([s in moved[i][:3] for i, s in enumerate(sources)])
    assert whole_named.mean() >= 0.9, (whole_named.mean(), len(sources))
    # measured: 0.8 of 20 moved patches named among the first 6, 0.6 among the first 3
    assert moved_named.mean() >= max(0.7, moved_first.mean() + 0.1), (moved_named.mean(), moved_first.mean())


def test_tile_margins_are_hits_above_the_tiles_deepest_one() -> None:
    scores = np.array([[0.9, 0.5, 0.4], [0.8, 0.8, 0.8], [0.7, 0.6, -3.4e38]], dtype=np.float32)
    ids = np.array([[5, 2, 9], [1, 4, 7], [3, 8, -1]])
    margins = search.tile_margins(scores, ids)
    assert np.allclose(margins[0], [0.5, 0.1, 0.0]) and np.allclose(margins[1], 0.0)  # generic: no hit stands out
    assert np.allclose(margins[2, :2], [0.1, 0.0]) and margins[2, 2] == -np.inf  # the deepest hit that was found


def _brain_slices(path: Path, step: int) -> list[np.ndarray]:
    """Every ``step``-th non-empty slice of a brain volume's middle three fifths."""
    stack = image_slices(read_image(path), 0)
    kept = np.flatnonzero(nonempty_mask(stack, PreprocessSettings()))
    kept = kept[len(kept) // 5 : -(len(kept) // 5)]
    return [stack[k] for k in kept[::step]]


def test_background_tiles_do_not_crowd_out_pasted_brain_patches(
    encoder, brain_subjects: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A brain slice is mostly background, whose tiles are about as near every training slice's background
    tiles as can be: ranked by raw cosine, they decide which slices the fine tiles propose. Ranked by margin over
    each tile's deepest hit, the pasted patch's own tiles do."""
    reference = _brain_slices(brain_subjects[1], 3) + _brain_slices(brain_subjects[2], 3)
    _, tiles = embed_slices_and_tiles(encoder, reference, PreprocessSettings())
    rows = np.arange(len(reference))
    sources = list(range(1, len(reference), 2))
    copies = _moved_patches(reference, _brain_slices(brain_subjects[4], 3), sources, side=0.35, band=(0.25, 0.4))
    _, query_tiles = embed_slices_and_tiles(encoder, copies, PreprocessSettings())
    regions = RegionIndex.fit(_tile_kinds(tiles), rows)
    hits = np.mean([s in found for s, found in zip(sources, regions.search(query_tiles).rows)])
    monkeypatch.setattr(region_search, "tile_margins", lambda scores, ids: np.where(ids >= 0, scores, -np.inf))
    by_cosine = np.mean([s in found for s, found in zip(sources, regions.search(query_tiles).rows)])
    # measured: 0.85 of 26 named by margin, 0.62 by raw cosine (the query's fine tiles at half the indexed step,
    # method.md §7.48, raised both)
    assert hits >= 0.6 and hits >= by_cosine + 0.2, (hits, by_cosine, len(sources))


def _nothing_found(n: int, depth: int) -> Neighbours:
    """A global search that found no reference for any of ``n`` queries."""
    return Neighbours(np.zeros(n), np.full((n, depth), -1), np.full((n, depth), -np.inf, dtype=np.float32))


def test_a_noisy_slice_is_region_searched_by_its_smoothed_view(encoder, brain_subjects: list[Path]) -> None:
    """Heavy noise swamps the fine tiles of the slice as cut; the smoothed view, which a noisy slice gets for the
    global search anyway, names the source among the region candidates (method.md §7.30)."""
    reference = [s for subject in brain_subjects[1:5] for s in _brain_slices(subject, 1)]  # neighbours included
    _, tiles = embed_slices_and_tiles(encoder, reference, PreprocessSettings())
    regions = RegionIndex.fit(_tile_kinds(tiles), np.arange(len(reference)))
    sources = list(range(1, len(reference), 10))
    rng = np.random.default_rng(2)
    noisy = []
    for row in sources:
        unit = np.clip(reference[row] / np.percentile(reference[row], 99.5), 0, 1).astype(np.float32)
        noisy.append(np.hypot(unit + rng.normal(0, 0.25, unit.shape), rng.normal(0, 0.25, unit.shape)))
    assert len(noisy_slices(noisy, PreprocessSettings())) == len(noisy)
    _, query_tiles = embed_slices_and_tiles(encoder, noisy, PreprocessSettings())
    shortlisted = candidates(
        encoder,
        noisy,
        _nothing_found(len(noisy), 3),
        lambda raw, depth: _nothing_found(len(next(iter(raw.values()))), depth),
        np.arange(len(reference)),
        PreprocessSettings(),
        k=3,
        search_regions=regions.search,
        tiles=query_tiles,
    )
    as_cut = with_region_candidates(np.full((len(noisy), 3), -1), regions.search(query_tiles)).rows
    # Among the candidates that count as any (the native-only ones come last; method.md §7.46): measured 1.0 named
    # from the smoothed view, 0.87 from the slices as cut (0.97 with six native-only ones too); at σ 0.13 and 0.18
    # both name all (since the fine tiles see the whole field of view, method.md §7.31; before, 0.83-0.90 as cut at
    # σ 0.12-0.14)
    counted = 3 + REGION_CANDIDATES
    smoothed_named = np.mean([s in shortlisted.rows[i][:counted] for i, s in enumerate(sources)])
    as_cut_named = np.mean([s in as_cut[i][:counted] for i, s in enumerate(sources)])
    assert smoothed_named >= 0.95 and smoothed_named >= as_cut_named + 0.05, (smoothed_named, as_cut_named)


def test_brain_quarter_copies_are_named_by_the_fine_tiles_of_the_whole_view(
    encoder, brain_subjects: list[Path]
) -> None:
    """A quadrant of a training slice over someone else's slice (the benchmark's ``quarter``): the foreground crop
    of the copy is not its source's (the other three quadrants decide it), while in the whole field of view the
    quadrant sits where it sat in its source, so the fine tiles of the whole view rank the source first more often
    than those of the crops (method.md §7.31)."""
    settings = PreprocessSettings()
    reference = [s for subject in brain_subjects[1:5] for s in _brain_slices(subject, 4)]
    others = _brain_slices(brain_subjects[0], 3)
    rows, rng = list(range(0, len(reference), 3)), np.random.default_rng(5)
    copies = [
        quarter(scale_unit(reference[row], settings), rng, scale_unit(others[(7 * j) % len(others)], settings))[0]
        for j, row in enumerate(rows)
    ]
    fine = {key: t for key, t in embed_slices_and_tiles(encoder, reference, settings)[1].items() if is_fine(key)}
    regions = RegionIndex.fit(fine, np.arange(len(reference)))
    whole = embed_slices_and_tiles(encoder, copies, settings)[1]
    batch = prepare_batch(copies, encoder.input_size, settings)
    cropped = {key: encoder.embed_with_tiles(batch, batch)[1][key] for key in fine}  # fine tiles of the crops
    first = [np.mean([r == hits[0] for r, hits in zip(rows, regions.search(t, 1).rows)]) for t in (whole, cropped)]
    # measured: 1.0 of 26 ranked first from the whole view, 0.92 from the crops (0.85 before the query's fine tiles lay
    # at half the indexed step, method.md §7.48; within the first 6: 1.0 either way)
    assert first[0] >= 0.95 and first[0] >= first[1] + 0.05, first


def _named_first(tiles: dict[str, np.ndarray], query_tiles: dict[str, np.ndarray], sources: list[int]) -> float:
    """The share of queries whose source is among the first PATCH_CANDIDATES rows of a region search of ``tiles``."""
    found = RegionIndex.fit(tiles, np.arange(len(next(iter(tiles.values()))))).search(query_tiles).rows
    return float(np.mean([s in found[i][:PATCH_CANDIDATES] for i, s in enumerate(sources)]))


def test_pasted_patches_are_named_first_by_their_own_pixels(
    encoder, spine_slices, spine_reference, brain_subjects: list[Path]
) -> None:
    """A pasted region keeps its source's pixels while the tiles' features see the host around it: the patch search
    names the source among its first PATCH_CANDIDATES rows, which lead the region search's (method.md §7.52)."""
    reference, tiles = spine_reference
    sources = list(range(1, len(reference), 2))
    copies = _moved_patches(reference, spine_slices["06"], sources, side=0.3)
    query_tiles = embed_slices_and_tiles(encoder, copies, PreprocessSettings())[1]
    named, by_tiles = _named_first(tiles, query_tiles, sources), _named_first(_tile_kinds(tiles), query_tiles, sources)
    # measured: 0.90 of 30 spine patches, against 0.37 by the tiles' first rows
    assert named >= 0.8 and named >= by_tiles + 0.3, (named, by_tiles)
    brain = _brain_slices(brain_subjects[1], 3) + _brain_slices(brain_subjects[2], 3)
    brain_tiles = embed_slices_and_tiles(encoder, brain, PreprocessSettings())[1]
    sources = list(range(1, len(brain), 2))
    pasted = _moved_patches(brain, _brain_slices(brain_subjects[4], 3), sources, side=0.3, band=(0.25, 0.4))
    query_tiles = embed_slices_and_tiles(encoder, pasted, PreprocessSettings())[1]
    named = _named_first(brain_tiles, query_tiles, sources)
    by_tiles = _named_first(_tile_kinds(brain_tiles), query_tiles, sources)
    # measured: 0.88 of 26 brain patches, against 0.08
    assert named >= 0.8 and named >= by_tiles + 0.3, (named, by_tiles)
