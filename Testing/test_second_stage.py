"""The audit's second stage: candidates (smoothed views of noisy slices only), the verified null and its
p-values, and a real audit in which transposed copies are flagged and located."""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from bend_helpers import bent_copy
from skimage.transform import resize, rotate

from MemorizationIndexLib import second_stage, verification
from MemorizationIndexLib.audit import audit_paths
from MemorizationIndexLib.audit_output import read_audit
from MemorizationIndexLib.augment_geometry import zoom
from MemorizationIndexLib.index_build import BuildOptions, build_index
from MemorizationIndexLib.index_verification import ReferenceGrids, unavailable_reason
from MemorizationIndexLib.preprocess import PreprocessSettings, scale_unit
from MemorizationIndexLib.reference_index import ReferenceIndex
from MemorizationIndexLib.second_stage import (
    TURNED_CANDIDATES,
    TURNED_VIEWS,
    SliceGrids,
    noisy_slices,
    shortlist,
    turned_views,
    verify_slices,
    with_turned_candidates,
)
from MemorizationIndexLib.slice_grid import to_grid
from MemorizationIndexLib.verified_null import MIN_BENT_SCORE, MIN_COPY_SCORE, VerifiedNull, flag_p
from MemorizationIndexLib.volumes import image_slices, read_image, resolve_axis


def test_shortlist_takes_the_views_in_turn_without_repeats() -> None:
    as_cut = (np.array([[1, 1, 2, 3]]), np.array([[0.9, 0.8, 0.7, 0.6]]))
    transposed = (np.array([[7, 1, 8, -1]]), np.array([[0.5, 0.4, 0.3, -np.inf]]))
    smoothed = (np.array([[2, 9, 4, 5]]), np.array([[0.95, 0.2, 0.1, 0.0]]))
    assert shortlist([as_cut, transposed, smoothed], 5).tolist() == [[1, 7, 2, 9, 3]]
    assert shortlist([as_cut, transposed, smoothed], 8).tolist() == [[1, 7, 2, 9, 3, 8, 4, 5]]


def test_each_turned_view_adds_its_first_candidates_not_yet_listed() -> None:
    listed = np.array([[4, 7, -1], [1, 2, 3]])
    rows = np.array([[7, 9, 9, 4, 5], [3, -1, 8, 6, 2]])
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5], [0.9, -np.inf, 0.95, 0.2, 0.1]])
    whole = (np.array([[5, 9, 11, 12, 4], [8, 6, 2, 7, 10]]), np.array([[0.9, 0.8, 0.7, 0.6, 0.5]] * 2))
    none = (np.full((2, 1), -1), np.full((2, 1), -np.inf))
    assert TURNED_CANDIDATES == 2 and len(TURNED_VIEWS) == 2
    assert with_turned_candidates(listed, [(rows, scores)]).tolist() == [[4, 7, -1, 9, 5], [1, 2, 3, 8, 6]]
    assert with_turned_candidates(listed, [(rows, scores), whole]).tolist() == [
        [4, 7, -1, 9, 5, 11, 12],  # the second view's first two not listed by the as-cut search or the first view
        [1, 2, 3, 8, 6, 7, 10],
    ]
    assert with_turned_candidates(listed, [none, whole])[:, 3:].tolist() == [[5, 9, -1, -1], [8, 6, -1, -1]]


def test_the_turned_views_turn_by_45_degrees_and_onto_the_principal_axes() -> None:
    slice2d = np.zeros((80, 120), dtype=np.float32)
    slice2d[30:50, 10:110] = 1.0  # a bar along the rows, then turned by 30° within a canvas that holds it
    turned_copy = rotate(slice2d, 30, resize=True, order=1)
    within, aligned = turned_views(turned_copy, PreprocessSettings())
    assert within.shape == turned_copy.shape
    rows, columns = np.nonzero(aligned > 0.5)
    assert np.ptp(columns) > 95 and np.ptp(rows) < 25  # back along the rows: the copy's own turn undone
    assert abs(float(aligned.sum()) - float(turned_copy.sum())) < 0.02 * float(turned_copy.sum())
    assert abs(float(within.sum()) - float(rotate(turned_copy, 45, order=1).sum())) < 0.02 * float(within.sum())


def test_only_noisy_slices_are_searched_smoothed(spine: dict[str, Path]) -> None:
    image = read_image(spine["01"])
    clean = list(image_slices(image, resolve_axis(image, "sagittal")))
    settings = PreprocessSettings()
    assert len(noisy_slices(clean, settings)) == 0
    rng = np.random.default_rng(0)
    scaled = [np.clip(scale_unit(x, settings), 0, 1) for x in clean[5:8]]
    noised = [np.hypot(x + rng.normal(0, 0.06, x.shape), rng.normal(0, 0.06, x.shape)) for x in scaled]
    assert noisy_slices(clean[:2] + noised, settings).tolist() == [2, 3, 4]


def test_verified_p_values_are_calibrated_and_reach_small_values_above_the_null() -> None:
    rng = np.random.default_rng(0)
    scores = rng.beta(2, 12, 300)
    null = VerifiedNull(scores, rng.random(300), np.full(300, np.nan), np.zeros(300), scores)
    fresh = rng.beta(2, 12, 200_000)
    p = null.verified_p(fresh, np.nan, 0.0)
    for alpha in (0.05, 0.01, 0.002):
        assert (p < alpha).mean() <= 2 * alpha, alpha
    ladder = null.verified_p(np.linspace(0, 1, 101), np.nan, 0.0)
    assert np.all(np.diff(ladder) <= 1e-12)
    assert null.verified_p(np.array([0.9]), np.nan, 0.0)[0] < 1e-4  # a copy far above a 300-slice null
    assert null.verified_p(np.array([null.threshold(1e-3) + 1e-6]), np.nan, 0.0)[0] < 1e-3


def test_each_score_is_compared_with_the_null_band_of_its_roughness() -> None:
    """Smooth null slices score higher than rough ones; a query is judged against null slices as rough as
    itself, so a smooth novel slice is not a false alarm and a rough one is not held to the smooth bar."""
    rng = np.random.default_rng(0)
    roughness = np.concatenate([rng.uniform(0.05, 0.12, 300), rng.uniform(0.15, 0.35, 300)])
    scores = np.concatenate([rng.beta(6, 10, 300), rng.beta(2, 14, 300)])  # smooth slices score higher
    null = VerifiedNull(scores, rng.random(600), roughness, np.zeros(600), scores)
    bands = null.thresholds(1e-3)
    assert len(bands) == len(null.edges()) + 1 == 4  # MAX_BANDS bands of at least MIN_BAND scores
    assert bands[0]["roughness_from"] is None and bands[-1]["roughness_to"] is None
    assert [b["n"] for b in bands] == [150] * 4
    assert min(bands[0]["threshold"], bands[1]["threshold"]) > max(bands[2]["threshold"], bands[3]["threshold"])
    assert null.threshold(1e-3) == max(b["threshold"] for b in bands)
    smooth_novel, sharp_novel = rng.beta(6, 10, 100_000), rng.beta(2, 14, 100_000)
    banded_smooth = (null.verified_p(smooth_novel, 0.08, 0.0) < 0.01).mean()
    assert banded_smooth <= 0.015 and (null.verified_p(sharp_novel, 0.3, 0.0) < 0.01).mean() <= 0.015
    pooled = VerifiedNull(
        scores, rng.random(600), np.full(600, np.nan), np.zeros(600), scores
    )  # one band, as an index without roughness
    assert len(pooled.thresholds(1e-3)) == 1
    assert (pooled.verified_p(smooth_novel, np.nan, 0.0) < 0.01).mean() >= 2 * banded_smooth
    middle = 0.5 * (bands[0]["threshold"] + bands[-1]["threshold"])
    assert null.verified_p(np.array([middle]), 0.3, 0.0)[0] < 1e-3 < null.verified_p(np.array([middle]), 0.08, 0.0)[0]


def test_a_near_exact_part_is_tested_against_its_own_null() -> None:
    """Look-alike anatomy gives the null's scores a long tail while few null slices reproduce anything
    near-exactly: a copied quarter whose score is within the first tail stands far above the second. The
    combined statistic stays calibrated."""
    rng = np.random.default_rng(0)
    n = 600
    reproduced = np.where(rng.random(n) < 0.2, rng.beta(2, 20, n), 0.0)  # most null slices reproduce nothing
    scores = np.maximum(rng.beta(4, 14, n), reproduced)  # the score is the larger of its two parts
    null = VerifiedNull(scores, rng.random(n), np.full(n, np.nan), reproduced, scores)
    band = null.thresholds(1e-3)[0]
    assert band["reproduced_threshold"] < band["threshold"]
    quarter = np.array([0.5 * (band["reproduced_threshold"] + band["threshold"])])
    assert null.verified_p(quarter, np.nan, quarter)[0] < 1e-3 < null.verified_p(quarter, np.nan, 0.0)[0]
    assert null.verified_p(quarter, np.nan, 0.1)[0] == null.verified_p(quarter, np.nan, 0.0)[0]  # under the floor
    fresh_parts = np.where(rng.random(200_000) < 0.2, rng.beta(2, 20, 200_000), 0.0)
    fresh = np.maximum(rng.beta(4, 14, 200_000), fresh_parts)
    p = null.verified_p(fresh, np.nan, fresh_parts)
    for alpha in (0.05, 0.01, 0.002):
        assert (p < alpha).mean() <= 2 * alpha, alpha


def test_a_bent_score_is_tested_against_the_nulls_own_bent_scores() -> None:
    """Bending raises other people's scores too, so the null's bent scores have a longer tail than its scores: a
    bent copy above that tail is a copy whatever its aligned score, a bent score within it is not, and the combined
    statistic stays calibrated."""
    rng = np.random.default_rng(1)
    n = 600
    scores = rng.beta(3, 14, n)
    bent = np.minimum(1.0, scores + rng.exponential(0.08, n))  # bending never lowers a score
    null = VerifiedNull(scores, rng.random(n), np.full(n, np.nan), np.zeros(n), bent)
    band = null.thresholds(1e-3)[0]
    assert band["bent_threshold"] > band["threshold"]
    low = np.array([0.25])
    assert null.verified_p(low, np.nan, 0.0, np.array([band["bent_threshold"] + 0.02]))[0] < 1e-3
    assert null.verified_p(low, np.nan, 0.0, np.array([band["threshold"]]))[0] > 1e-3
    assert null.verified_p(low, np.nan, 0.0)[0] == null.verified_p(low, np.nan, 0.0, low)[0]  # None: not bent
    fresh = rng.beta(3, 14, 200_000)
    p = null.verified_p(fresh, np.nan, 0.0, np.minimum(1.0, fresh + rng.exponential(0.08, 200_000)))
    for alpha in (0.05, 0.01, 0.002):
        assert (p < alpha).mean() <= 2 * alpha, alpha


def test_flag_p_is_twice_the_smaller_p_value_and_needs_a_fifth_of_the_slice_copied() -> None:
    global_p, verified_p = np.array([0.3, 0.0004, 0.9, 0.3]), np.array([0.01, 0.5, 0.8, 1e-6])
    scores = np.array([0.5, 0.1, 0.3, 0.15])  # the last is rare among the null but copies < 1/5
    assert flag_p(global_p, verified_p, scores, scores).tolist() == pytest.approx([0.02, 0.0008, 1, 0.6])


def test_a_bent_score_of_twice_the_floor_is_evidence_whatever_the_score_before_the_bend() -> None:
    global_p, verified_p = np.full(4, 0.3), np.full(4, 1e-6)  # each rare among the null
    scores = np.full(4, 0.15)  # under MIN_COPY_SCORE before the bend
    bent = np.array([0.15, MIN_BENT_SCORE - 0.01, MIN_BENT_SCORE, 1.0])
    assert MIN_BENT_SCORE == 2 * MIN_COPY_SCORE
    assert flag_p(global_p, verified_p, scores, bent).tolist() == pytest.approx([0.6, 0.6, 2e-6, 2e-6])


@pytest.fixture(scope="module")
def stage_audit(tmp_path_factory: pytest.TempPathFactory, spine: dict[str, Path], encoder) -> dict:
    """Index spine 01-05 with the verified null; audit an array set of transposed training slices
    of 02, slices of 06 (no index) as cut and transposed, half copies (the upper half of a slice of 02 over the lower
    half of a slice of 06), and slices of 02 and of 06 turned by 45° and 60°."""
    work = tmp_path_factory.mktemp("stage")
    train = [spine[n] for n in ("01", "02", "03", "04", "05")]
    index = build_index(train, work / "index", BuildOptions(), encoder=encoder)
    source = image_slices(read_image(spine["02"]), index.provenance.array_axis[0])
    novel = image_slices(read_image(spine["06"]), index.provenance.array_axis[0])
    copied = [4, 9, 14]
    queries = [source[k].T for k in copied] + [novel[k] for k in (5, 10)] + [novel[k].T for k in (6, 12)]
    half = source[0].shape[0] // 2
    halves = [(7, 8), (11, 9)]  # (slice of 02, slice of 06)
    queries += [np.concatenate([source[k][:half], novel[j][half:]]) for k, j in halves]
    turns = [(4, 45.0), (14, 60.0)]  # (slice, degrees): between the index's orientations (steps of 90°)
    queries += [rotate(volume[k] / float(volume[k].max()), turn) for volume in (source, novel) for k, turn in turns]
    np.save(work / "queries.npy", np.stack(queries).astype(np.float32))
    audit_paths(index, [work / "queries.npy"], work / "out")
    return {
        "index": index,
        "out": read_audit(work / "out"),
        "copied": copied,
        "halves": [k for k, _ in halves],
        "turned": [k for k, _ in turns],
        "half": half,
        "source": str(spine["02"].resolve()),
    }


def test_transposed_copies_are_flagged_and_located(stage_audit: dict) -> None:
    out = stage_audit["out"]
    assert out.summary["verification"]["used"] is True, out.summary["verification"]
    assert out.summary["verification"]["min_copy_score"] == MIN_COPY_SCORE  # the status sentence names it
    assert out.summary["verification"]["min_bent_score"] == MIN_BENT_SCORE
    copies = out.rows[:3]
    assert all(row.flagged for row in copies), [(row.p_value, row.verified_score, row.flag_p) for row in copies]
    assert [row.copy_source for row in copies] == [stage_audit["source"]] * 3
    assert [row.copy_slice for row in copies] == stage_audit["copied"]
    for row in copies:
        mask = out.copy_masks[(row.volume, row.slice)]
        assert row.copy_box is not None and mask.mean() > 0.2
        assert row.verified_score > out.summary["verification"]["threshold"]


def test_people_in_no_index_are_not_flagged_in_any_orientation(stage_audit: dict) -> None:
    novel = stage_audit["out"].rows[3:7]
    assert not any(row.flagged for row in novel), [(row.verified_score, row.flag_p) for row in novel]
    assert all(np.isfinite(row.verified_p) and row.flag_p >= min(row.p_value, row.verified_p) for row in novel), [
        (row.p_value, row.verified_score, row.verified_p, row.flag_p) for row in novel
    ]


def test_half_copies_are_flagged_with_their_source_and_located_in_the_copied_half(stage_audit: dict) -> None:
    index: ReferenceIndex = stage_audit["index"]
    assert index.regions is not None and index.config["verification"]["region_tiles"]
    halves = stage_audit["out"].rows[7:9]
    assert all(row.flagged for row in halves), [(row.verified_score, row.flag_p, row.copy_slice) for row in halves]
    assert [(row.copy_source, row.copy_slice) for row in halves] == [
        (stage_audit["source"], k) for k in stage_audit["halves"]
    ]
    for row in halves:
        top, _, bottom, _ = row.copy_box
        inside = max(0, min(bottom, stage_audit["half"]) - top) / (bottom - top)
        assert inside > 0.8, (row.copy_box, stage_audit["half"])


def test_copies_turned_between_the_index_orientations_are_found_by_the_turned_view(stage_audit: dict) -> None:
    """Training slices turned by 45° and 60° are flagged with their source (without the turned view neither source
    was among the candidates when written: method.md §7.57); the same turns of a person in no index are not."""
    rows = stage_audit["out"].rows[9:]
    copies, novel = rows[:2], rows[2:]
    assert all(row.flagged for row in copies), [(row.verified_score, row.copy_slice) for row in copies]
    assert [(row.copy_source, row.copy_slice) for row in copies] == [
        (stage_audit["source"], k) for k in stage_audit["turned"]
    ]
    assert not any(row.flagged for row in novel), [(row.verified_score, row.flag_p) for row in novel]


def test_a_copy_that_agrees_only_once_bent_is_flagged_on_its_bent_score(
    stage_audit: dict, spine: dict[str, Path], tmp_path: Path
) -> None:
    """A training slice bent and turned by 15 degrees aligns rigidly to under a fifth of itself but agrees once bent:
    its bent score is evidence by itself (MIN_BENT_SCORE); the same edit of another person's slice is not flagged."""
    index: ReferenceIndex = stage_audit["index"]
    axis = index.provenance.array_axis[0]
    source = image_slices(read_image(spine["02"]), axis)[4]
    novel = [image_slices(read_image(spine["06"]), axis)[k] for k in (4, 8)]
    # Turned with zeros outside: an edge-padded turn smears the field-filling slice's border.
    queries = [rotate(bent_copy(s / float(s.max()), 0.7, 0.04, 0.0), -15.0) for s in [source, *novel]]
    np.save(tmp_path / "bent.npy", np.stack(queries))
    audit_paths(index, [tmp_path / "bent.npy"], tmp_path / "out")
    copy, *others = read_audit(tmp_path / "out").rows
    assert copy.verified_score < MIN_COPY_SCORE <= MIN_BENT_SCORE <= copy.verified_bent, copy
    assert copy.flagged and (copy.copy_source, copy.copy_slice) == (stage_audit["source"], 4), copy
    assert not any(row.flagged for row in others), [(row.verified_score, row.verified_bent) for row in others]


def test_second_stage_says_why_it_cannot_run(stage_audit: dict, tmp_path: Path) -> None:
    index: ReferenceIndex = stage_audit["index"]
    assert unavailable_reason(index) == ""
    moved = ReferenceIndex.load(index.path)
    moved.provenance = replace(moved.provenance, source=[str(tmp_path / "gone.nii.gz")] * len(moved.provenance))
    assert "not reachable" in unavailable_reason(moved)
    made = moved.config["verification"]
    moved.config = moved.config | {"verification": made | {"views": ["as-cut", "transposed"]}}
    assert "older second stage" in unavailable_reason(moved)
    before_neighbours = {key: value for key, value in made.items() if key != "neighbour_gate"}
    moved.config = moved.config | {"verification": before_neighbours}
    assert "older second stage" in unavailable_reason(moved)
    moved.config = moved.config | {"verification": made | {"scale_range": [0.75, 1.35], "scored": "two best-ranked"}}
    reason = unavailable_reason(moved)
    assert "older second stage" in reason and "scale_range [0.75, 1.35]" in reason and "two best-ranked" in reason
    moved.verified_null = None
    assert "no verified null" in unavailable_reason(moved)


def test_an_index_without_the_verified_null_audits_globally_and_says_so(
    tmp_path: Path, spine: dict[str, Path], encoder
) -> None:
    options = BuildOptions(verification=False, holdout_paths=[spine["05"]])
    index = build_index([spine["01"], spine["02"]], tmp_path / "index", options, encoder=encoder)
    audit_paths(index, [spine["02"]], tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["verification"]["used"] is False
    assert "no verified null" in summary["verification"]["reason"]
    rows = read_audit(tmp_path / "out").rows
    assert all(np.isnan(row.verified_score) for row in rows)


def test_reference_grids_are_made_once_across_threads_and_unreadable_rows_are_left_out() -> None:
    rng = np.random.default_rng(0)
    slices = {r: np.pad(rng.random((40, 40)).astype(np.float32), 12) for r in range(12)}
    reads: list[int] = []

    def reference_slice(source: str, k: int) -> np.ndarray | None:
        reads.append(k)
        time.sleep(0.01)  # so that the threads overlap
        return None if k == 5 else slices[k]

    provenance = SimpleNamespace(source=["a.nii"] * 12, slice=list(range(12)))
    index = SimpleNamespace(provenance=provenance, preprocessing=PreprocessSettings(), reference_slice=reference_slice)
    grids = ReferenceGrids(index)
    asked = [[0, 1, 2, 3, 4, 5], [3, 4, 5, 6, 7], [0, 7, 8, 5], [8, 9, 10, 11, 1]]
    found: list[dict] = [{} for _ in asked]
    threads = [threading.Thread(target=lambda i=i: found[i].update(grids(asked[i]))) for i in range(len(asked))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    readable = [r for r in range(12) if r != 5]
    assert sorted(r for r in reads if r != 5) == readable and 5 in reads  # each readable row read once
    for rows, got in zip(asked, found):
        assert sorted(got) == sorted(r for r in rows if r != 5)
        for r, grid in got.items():
            np.testing.assert_array_equal(grid.image, to_grid(slices[r]).image)
    assert len(grids) == 11 and sorted(grids([5, 0])) == [0]
    assert sorted(r for r in reads if r != 5) == readable  # kept: not read again
    small = ReferenceGrids(index, capacity=2)
    assert sorted(small([0, 1, 2])) == [0, 1, 2] and len(small) == 3  # a call's own rows are never evicted
    assert sorted(small([3])) == [3] and len(small) == 2


def test_a_candidate_much_smaller_in_place_is_verified_again_on_its_own_square(shared_data: Path, monkeypatch) -> None:
    """A quadrant of a small slice near the top of one person's head copied over the middle slice of another
    person's: ``verify_slices`` verifies its source again on the query cut to the source's square (its side under
    1 / SQUARE_RATIO of the query grid's), which scores the copy far higher than the query's own grid does, and
    locates it in the copied quadrant (method.md §7.32). On the grid alone: at the slice's own resolution the copy
    scores 1 either way (method.md §7.44). The other three quarters are the other person's slice stretched to the
    source's shape: bent, that slice agrees in full (1 when written, 0.24 unbent), so listed beside the source it is
    the one named (method.md §7.69), while the slice's score stays the source's."""
    monkeypatch.setattr(verification, "checked_natively", lambda *_: False)  # the grid alone
    settings = PreprocessSettings()
    images = [read_image(shared_data / f"brain/ds002748/{n}_T1w.nii.gz") for n in ("sub-05", "sub-06")]
    source_volume, host_volume = (image_slices(image, resolve_axis(image, "axial")) for image in images)
    source = scale_unit(source_volume[int(0.84 * len(source_volume))], settings)
    host = scale_unit(host_volume[len(host_volume) // 2], settings)
    query = resize(host, source.shape, order=1, anti_aliasing=True).astype(np.float32)
    h, w = source.shape
    query[: h // 2, : w // 2] = source[: h // 2, : w // 2]
    reference = SliceGrids([source, host], settings, None)
    [found] = verify_slices([query], np.array([[0]]), reference, settings)
    [both] = verify_slices([query], np.array([[0, 1]]), reference, settings)
    monkeypatch.setattr(second_stage, "SQUARE_RATIO", math.inf)
    [plain] = verify_slices([query], np.array([[0]]), SliceGrids([source, host], settings, None), settings)
    assert found.row == 0 and found.score >= plain.score + 0.2 and found.score >= 0.4, (found.score, plain.score)
    mask = found.result.mask
    assert mask[: h // 2, : w // 2].sum() >= 0.8 * mask.sum() > 0
    assert both.score == found.score and both.row == 1 and both.bent == both.result.bent > found.bent, both


def test_a_native_only_candidate_counts_only_by_its_near_exact_part(shared_data: Path) -> None:
    """A candidate marked native-only counts only where its near-exact part at the query's own resolution is its
    verification, and then by that part alone: a quadrant copied over another person's slice is found by it (1 on
    every count, 0.31 on the grid when written), while a slice three slices away in the same volume, which agrees
    loosely on the grid (0.23 when written) and is reproduced nowhere, is not verified at all (method.md §7.46)."""
    settings = PreprocessSettings()
    images = [read_image(shared_data / f"brain/ds002748/{n}_T1w.nii.gz") for n in ("sub-05", "sub-06")]
    source_volume, host_volume = (image_slices(image, resolve_axis(image, "axial")) for image in images)
    at = int(0.84 * len(source_volume))
    source = scale_unit(source_volume[at], settings)
    host = scale_unit(host_volume[len(host_volume) // 2], settings)
    copy = resize(host, source.shape, order=1, anti_aliasing=True).astype(np.float32)
    h, w = source.shape
    copy[: h // 2, : w // 2] = source[: h // 2, : w // 2]
    neighbour = scale_unit(source_volume[at - 3], settings)
    grids = SliceGrids([source], settings, None)
    only = np.array([[True]])
    [found] = verify_slices([copy], np.array([[0]]), grids, settings, native_only=only)
    assert found.row == 0 and found.score >= 0.5 and found.score == found.reproduced == found.bent, found
    assert found.result is not None and found.result.on_grid < found.score
    [loose] = verify_slices([neighbour], np.array([[0]]), grids, settings)
    [dropped] = verify_slices([neighbour], np.array([[0]]), grids, settings, native_only=only)
    assert loose.row == 0 and loose.score >= 0.15, loose.score
    assert dropped.row == -1 and dropped.score == 0.0 and dropped.result is None


@pytest.mark.parametrize("source_echo", ["MESE_echo4_TE25.2ms", "MESE_echo1_TE6.3ms"])
@pytest.mark.parametrize("edit", ["zoom", "noise"])
def test_of_two_echoes_of_one_slice_that_both_verify_at_1_the_copied_one_is_named(
    shared_data: Path, source_echo: str, edit: str
) -> None:
    """A knee slice of one echo of a multi-echo series, zoomed by 1.3 or noised: at the slice's own resolution the
    same slice of the other echo is reproduced near-exactly too, so both score 1 on every count and the other echo,
    listed first, used to be named. Among equal scores the candidate whose aligned intensities match the copy's best
    over the copied region is named: the copied echo (method.md §7.61)."""
    settings = PreprocessSettings()
    knee = shared_data / "knee/pymskt-s02"
    other_echo = ({"MESE_echo4_TE25.2ms", "MESE_echo1_TE6.3ms"} - {source_echo}).pop()
    volumes = [image_slices(read_image(knee / f"{name}.nii.gz"), 0) for name in (other_echo, source_echo)]
    rng = np.random.default_rng(0)
    for k in (7, 8):
        other, source = (scale_unit(volume[k], settings) for volume in volumes)
        if edit == "zoom":
            query = zoom(source, 1.3)
        else:
            query = np.hypot(source + rng.normal(0.0, 0.08, source.shape), rng.normal(0.0, 0.08, source.shape))
        grids = SliceGrids([other, source], settings, None)
        alone = [verify_slices([query], np.array([[row]]), grids, settings)[0] for row in (0, 1)]
        [named] = verify_slices([query], np.array([[0, 1]]), grids, settings)
        assert alone[0].score == alone[1].score == 1.0, [found.score for found in alone]
        assert named.row == 1 and named.result.likeness > alone[0].result.likeness, named


def test_of_a_blended_copy_the_source_that_bends_onto_it_best_is_named(shared_data: Path) -> None:
    """A knee slice blended with its neighbour (0.59 : 0.41): as it stands, the same slice of the other echo scores
    higher than the source (0.88 against 0.68 when written), but bent onto the copy the source scores higher (0.93
    against 0.90). The source is named; the slice's score stays the largest among its candidates, so no p-value
    changes (method.md §7.69)."""
    settings = PreprocessSettings()
    knee = shared_data / "knee/pymskt-s02"
    echo1, echo4 = (
        image_slices(read_image(knee / f"{name}.nii.gz"), 0) for name in ("MESE_echo1_TE6.3ms", "MESE_echo4_TE25.2ms")
    )
    source, neighbour = (scale_unit(echo1[k], settings) for k in (20, 19))
    query = 0.59 * source + 0.41 * neighbour
    grids = SliceGrids([echo4[20], echo1[20]], settings, None)
    alone = [verify_slices([query], np.array([[row]]), grids, settings)[0] for row in (0, 1)]
    [named] = verify_slices([query], np.array([[0, 1]]), grids, settings)
    assert alone[0].score > alone[1].score and alone[1].bent > alone[0].bent, alone
    assert named.row == 1 and named.result.bent == alone[1].bent, named
    assert named.score == alone[0].score and named.bent == alone[1].bent, named
