"""calibration_check: does the null hold for an audited input as a whole (docs/method.md §8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from MemorizationIndexLib.calibration_check import (
    ABOVE,
    BELOW,
    ENERGY_QUANTILE,
    MIN_SLICES,
    OUTSIDE,
    CalibrationCheck,
    check_calibration,
    limit_for,
)
from MemorizationIndexLib.embedding import embed_slices
from MemorizationIndexLib.index_build import BuildOptions, build_index
from MemorizationIndexLib.preprocess import PreprocessSettings, nonempty_mask
from MemorizationIndexLib.reference_index import ReferenceIndex
from MemorizationIndexLib.scoring import NullModel
from MemorizationIndexLib.volumes import image_slices, read_image, resolve_axis
from MemorizationIndexLib.whitening import ShrinkageWhitener


@pytest.fixture(scope="module")
def null() -> NullModel:
    return NullModel(np.random.default_rng(0).normal(0.3, 0.02, 2000))


def test_input_like_the_null_holds(null):
    draws = np.random.default_rng(1).choice(null.values, 120)
    check = check_calibration(draws, null)
    assert check.holds and check.reason == "" and check.direction == ""
    assert abs(check.median_z) < check.limit_z and check.n_slices == 120


def test_bulk_far_above_the_null_fails_and_names_the_mismatch(null):
    shifted = np.random.default_rng(2).choice(null.values, 120) + 1.8 * null.std
    check = check_calibration(shifted, null)
    assert not check.holds and check.direction == ABOVE and not check.global_flags_valid
    assert check.median_z > check.limit_z == pytest.approx(limit_for(120))
    assert "far above the null" in check.reason and f"{check.median_z:.2f}" in check.reason
    assert "contrast" in check.reason and "made largely of copies" in check.reason


def test_bulk_far_below_the_null_fails_but_global_flags_stay_conservative(null):
    shifted = np.random.default_rng(3).choice(null.values, 60) - 2.0 * null.std
    check = check_calibration(shifted, null)
    assert not check.holds and check.direction == BELOW and check.global_flags_valid
    assert "far below the null" in check.reason


def test_features_outside_the_references_fail_whatever_the_similarity(null):
    rng = np.random.default_rng(4)
    null_energy = rng.gamma(8.0, 0.25, 2000)  # held-out people of the reference: median about 2
    like_null = rng.choice(null.values, 60)
    limit = np.quantile(null_energy, ENERGY_QUANTILE)
    check = check_calibration(like_null, null, rng.choice(null_energy, 60), null_energy)
    assert check.holds and check.direction == ""
    outside = check_calibration(like_null, null, np.full(60, 3.0 * limit), null_energy)
    assert not outside.holds and outside.direction == OUTSIDE and not outside.global_flags_valid
    assert "outside the reference" in outside.reason and "contrast" in outside.reason
    assert f"{limit:.2f}" in outside.reason and outside.median_z == check.median_z
    below = check_calibration(like_null - 2.0 * null.std, null, np.full(60, 3.0 * limit), null_energy)
    assert below.direction == OUTSIDE  # far below the null, and outside: no global flag stands
    above = check_calibration(like_null + 1.8 * null.std, null, np.full(60, 3.0 * limit), null_energy)
    assert above.direction == ABOVE  # above the null already withholds global flags, with its own reason
    assert check_calibration(like_null, null, np.full(60, 3.0 * limit), None).holds  # an index without energies
    assert check_calibration(like_null[:3], null, np.full(3, 3.0 * limit), null_energy).holds  # too few slices


def test_feature_energy_is_about_one_for_the_fitted_rows_and_grows_away_from_them():
    rng = np.random.default_rng(5)
    scales = np.linspace(0.2, 5.0, 32)
    fitted = (rng.normal(size=(4000, 32)) * scales).astype(np.float32)
    whitener = ShrinkageWhitener(shrinkage=0.0).fit(fitted)
    assert np.median(whitener.energy(fitted)) == pytest.approx(1.0, abs=0.1)
    other = (rng.normal(size=(200, 32)) * scales[::-1] + 3.0).astype(np.float32)
    assert np.median(whitener.energy(other)) > 5.0


def test_the_index_records_its_null_slices_feature_energy(index_dir: Path):
    index = ReferenceIndex.load(index_dir)
    assert index.null_energy is not None and len(index.null_energy) == len(index.null_similarity)
    assert np.isfinite(index.null_energy).all() and np.median(index.null_energy) > 0


def test_small_inputs_get_a_wider_limit_and_tiny_ones_are_not_judged(null):
    assert limit_for(5) > limit_for(20) > limit_for(200) > 0.6
    one_copy = np.array([null.values[-1] + 10 * null.std])
    check = check_calibration(one_copy, null)
    assert check.holds and check.n_slices == 1 < MIN_SLICES
    assert check_calibration(np.array([]), null).holds


def test_non_finite_similarities_are_ignored_and_the_dict_form_is_complete(null):
    values = np.concatenate([null.values[::100], [np.nan, np.inf]])
    check = check_calibration(values, null)
    assert check.n_slices == len(null.values[::100])
    assert set(check.to_dict()) == {"holds", "reason", "median_z", "limit_z", "direction", "n_slices"}
    assert isinstance(check, CalibrationCheck)


# --- real data: a small spine index (5 people), a sixth spine person and brain T1 slices ------------------


def _slices(path: Path, stride: int = 1) -> list[np.ndarray]:
    image = read_image(path)
    stack = image_slices(image, resolve_axis(image, "auto"))
    return list(stack[nonempty_mask(stack, PreprocessSettings())][::stride])


def _similarity(index: ReferenceIndex, encoder, slices: list[np.ndarray]) -> np.ndarray:
    raw = embed_slices(encoder, slices, index.preprocessing)
    return index.search(index.whiten(raw), k=1).similarity


@pytest.fixture(scope="module")
def spine_index(tmp_path_factory, spine, encoder) -> ReferenceIndex:
    """Spine 01-05 as cut only (every 2nd slice): another index configuration than the measured ones."""
    paths = [spine[n] for n in ("01", "02", "03", "04", "05")]
    options = BuildOptions(slice_stride=2, reference_copies=False)
    return build_index(paths, tmp_path_factory.mktemp("spine-index") / "index", options, encoder=encoder)


def test_real_novel_spine_person_holds(spine_index, spine, encoder):
    check = check_calibration(_similarity(spine_index, encoder, _slices(spine["06"])), spine_index.null_model)
    assert check.holds, check


def test_real_brain_t1_against_a_spine_index_is_flagged_only_where_the_check_fails(
    spine_index, brain_subjects, encoder
):
    """Another contrast and anatomy than the index: either the check fails, or the null's flags stay rare."""
    similarity = _similarity(spine_index, encoder, _slices(brain_subjects[0], stride=3))
    check = check_calibration(similarity, spine_index.null_model)
    flagged = float(np.mean(spine_index.null_model.p_value(similarity) < 1e-3))
    print(f"brain T1 against spine 01-05 (as cut): {check}, flagged {flagged:.3f}")
    assert not check.holds or flagged <= 0.01, (check, flagged)
