"""The region search (region_search.py): tile features from the encoder's forward pass, the index of the
reference slices' tiles, and the candidates it adds for partial copies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from MemorizationIndexLib import region_search
from MemorizationIndexLib.embedding import embed_slices, embed_slices_and_tiles
from MemorizationIndexLib.encoders.tiles import TILES, pool_tiles
from MemorizationIndexLib.preprocess import PreprocessSettings, nonempty_mask
from MemorizationIndexLib.region_search import RegionIndex
from MemorizationIndexLib.second_stage import with_region_candidates
from MemorizationIndexLib.volumes import image_slices, read_image


def test_tiles_are_window_means_inside_the_map() -> None:
    maps = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    tiles = pool_tiles(maps)
    assert tiles.shape == (2, len(TILES), 3)
    assert all(0 <= top < bottom <= 1 and 0 <= left < right <= 1 for top, bottom, left, right in TILES)
    assert torch.equal(tiles[:, 0], maps[:, :, :4, :4].mean(dim=(2, 3)))  # the top-left quarter
    assert torch.equal(tiles[:, 4], maps[:, :, 2:6, 2:6].mean(dim=(2, 3)))  # the centre
    assert torch.equal(tiles[:, 12], maps[:, :, :, 4:].mean(dim=(2, 3)))  # the right half
    assert torch.equal(tiles[:, 13], maps[:, :, :2, :2].mean(dim=(2, 3)))  # the first of the small windows
    assert torch.equal(tiles[:, 14], maps[:, :, :2, 1:3].mean(dim=(2, 3)))  # ... an eighth of the side on
    assert torch.equal(tiles[:, -1], maps[:, :, 6:, 6:].mean(dim=(2, 3)))  # ... to the bottom-right corner
    assert len(TILES) == len(set(TILES)) == 9 + 4 + 49


def test_region_candidates_follow_the_global_ones_without_repeats() -> None:
    listed = np.array([[4, 2, -1], [1, 3, 5]])
    regions = np.array([[2, 7, 7], [9, -1, 1]])
    assert with_region_candidates(listed, regions).tolist() == [[4, 2, -1, 7, -1, -1], [1, 3, 5, 9, -1, -1]]


@pytest.fixture(scope="module")
def spine_slices(spine: dict[str, Path]) -> dict[str, list[np.ndarray]]:
    """Non-empty sagittal slices of spine 01–03 (the reference) and of 06 (another person)."""
    out = {}
    for name in ("01", "02", "03", "06"):
        stack = image_slices(read_image(spine[name]), 0)
        out[name] = [stack[k] for k in np.flatnonzero(nonempty_mask(stack, PreprocessSettings()))]
    return out


def test_tiles_come_from_the_forward_pass_that_gives_the_features(encoder, spine_slices) -> None:
    slices = spine_slices["06"][:10]
    features, tiles = embed_slices_and_tiles(encoder, slices, PreprocessSettings(), tiled=7, batch_size=4)
    alone = embed_slices(encoder, slices, PreprocessSettings(), batch_size=4)
    assert all(np.array_equal(features[b], alone[b]) for b in encoder.blocks)
    assert encoder.region_block == "stage4"  # the shallowest of stage4..stage6: the most local features
    assert {b: t.shape for b, t in tiles.items()} == {"stage4": (7, len(TILES), alone["stage4"].shape[1])}
    assert embed_slices_and_tiles(encoder, slices, PreprocessSettings(), tiled=0)[1] is None


def _half_copies(reference: list[np.ndarray], other: list[np.ndarray], rows: list[int]) -> list[np.ndarray]:
    """Each reference slice's upper half over another person's slice (resampled onto the same grid)."""
    copies = []
    for j, row in enumerate(rows):
        source = np.asarray(reference[row], dtype=np.float32)
        host = np.asarray(other[(7 * j) % len(other)], dtype=np.float32)
        host = host[
            np.ix_(
                np.linspace(0, host.shape[0] - 1, source.shape[0]).astype(int),
                np.linspace(0, host.shape[1] - 1, source.shape[1]).astype(int),
            )
        ]
        host = host / max(float(np.percentile(host, 99.5)), 1e-6) * float(np.percentile(source, 99.5))
        half = source.shape[0] // 2
        copies.append(np.concatenate([source[:half], host[half:]]))
    return copies


def test_half_copies_find_their_source_among_the_region_candidates(
    encoder, spine_slices, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = spine_slices["01"] + spine_slices["02"] + spine_slices["03"]
    _, tiles = embed_slices_and_tiles(encoder, reference, PreprocessSettings())
    rows = np.arange(100, 100 + len(reference))  # original rows need not start at 0
    regions = RegionIndex.fit(tiles, rows)
    sources = list(range(3, len(reference), 6))
    _, query_tiles = embed_slices_and_tiles(
        encoder, _half_copies(reference, spine_slices["06"], sources), PreprocessSettings()
    )
    found, scores = regions.search(query_tiles)
    hits = [rows[s] in found[i] for i, s in enumerate(sources)]
    assert np.mean(hits) >= 0.9, (np.mean(hits), len(hits))
    assert np.all(np.diff(scores, axis=1) <= 0)
    regions.save(tmp_path)
    loaded = RegionIndex.load(tmp_path)
    assert loaded is not None and np.array_equal(loaded.search(query_tiles)[0], found)
    assert RegionIndex.load(tmp_path / "elsewhere") is None
    monkeypatch.setattr(region_search, "IVF_MIN_VECTORS", 10)  # the large-reference kind finds the same sources
    approximate = RegionIndex.fit(tiles, rows).search(query_tiles)[0]
    assert np.mean([rows[s] in approximate[i] for i, s in enumerate(sources)]) >= np.mean(hits) - 0.1
