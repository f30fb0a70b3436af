"""The report on audits with verification: copy mask and box on the evidence, the verified training
slice beside it, and a verdict that never rests on an uncalibrated or unverified global score."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from report_helpers import AuditedVolume, assert_offline, imgs, parse

from MemorizationIndexLib import report
from MemorizationIndexLib.audit_output import SliceScore, write_audit
from MemorizationIndexLib.scoring import NullModel

ALPHA = 0.001
VOLUME = "gen/q.nii.gz"


class FakeIndex:
    def __init__(self, slices: dict[tuple[str, int], np.ndarray]):
        self.slices = slices

    def reference_slice(self, source: str, number: int) -> np.ndarray | None:
        return self.slices.get((source, number))


def _smooth(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    noise = rng.normal(size=shape)
    for axis in (0, 1):
        noise = (noise + np.roll(noise, 1, axis) + np.roll(noise, -1, axis)) / 3.0
    return noise.astype(np.float32)


def _score(k: int, mi: float, flagged: bool, **verified) -> SliceScore:
    z = float(np.arctanh(2 * mi - 1))
    return SliceScore(k, 0.5 + 0.4 * mi, z, mi, -float(np.tanh(z)), 0.5, flagged, "t/nn.nii.gz", k, "none", **verified)


@pytest.fixture()
def pixels() -> dict:
    rng = np.random.default_rng(3)
    train = _smooth(rng, (40, 32))
    query = {k: _smooth(rng, (40, 32)) for k in range(6)}
    query[2] = np.rot90(train.T, 3).copy()  # a transposed, quarter-turned copy of training slice 7
    mask = np.zeros((40, 32), dtype=bool)
    mask[4:20, 6:26] = True
    index = FakeIndex({("t/copy.nii.gz", 7): train} | {("t/nn.nii.gz", k): _smooth(rng, (40, 32)) for k in range(6)})
    return {"train": train, "query": query, "mask": mask, "index": index}


def _write(out: Path, pixels: dict, *, verification: dict, calibration: dict, copy_flagged: bool = True) -> None:
    copy = _score(
        2,
        0.52,  # a transposed copy: the global score barely moves
        copy_flagged,
        verified_score=0.91,
        verified_p=0.0002,
        flag_p=0.0002 if copy_flagged else 0.4,
        copy_source="t/copy.nii.gz",
        copy_slice=7,
        copy_transposed=True,
        copy_angle=90.0,
        copy_scale=1.0,
        copy_box=(4, 6, 20, 26),
        verified_reproduced=0.88,
        verified_bent=0.97,
    )
    scores = [_score(k, 0.5 + 0.01 * k, False) for k in (0, 1, 3, 4, 5)]
    summary = {
        "index": {"path": "/idx"},
        "null": {"mean": 0.5, "std": 0.1, "n": 5000},
        "threshold": NullModel(np.random.default_rng(0).normal(0.5, 0.1, 5000)).threshold(ALPHA).to_dict(),
        "volumes": [
            {"volume": VOLUME, "axis": "axial", "array_axis": 0, "slices_total": 6, "calibration_holds": False}
        ],
        "verification": verification,
        "calibration": calibration,
    }
    volume = AuditedVolume(VOLUME, [copy, *scores])
    write_audit([volume], summary, np.zeros(10), out, copy_masks={(VOLUME, 2): pixels["mask"]})


USED = {
    "used": True,
    "reason": "",
    "k": 5,
    "views": ["cut", "transposed", "smoothed"],
    "null_n": 1320,
    "threshold": 0.5,
}
HOLDS = {"holds": True, "reason": "", "median_z": 0.1, "limit_z": 1.2}
FAR_ABOVE = (
    "the audited slices as a whole sit far above the null (median z 1.83 > 1.2): another contrast, anatomy or "
    "scanner than the reference, or an input made largely of copies; only verified copies are flagged"
)
NOT_HOLDS = {"holds": False, "reason": FAR_ABOVE, "median_z": 1.83, "limit_z": 1.2}
FEW_SUBJECTS = {"training_subjects": 3, "few_training_subjects": True}
UNREACHABLE = "the reference volumes are not reachable and the index has no thumbnails"
NOT_USED = {"used": False, "reason": UNREACHABLE}


def _render(out: Path, pixels: dict, **options) -> tuple[str, str]:
    query_slices = {(VOLUME, k): img for k, img in pixels["query"].items()}
    text = report.render_report(out, index=pixels["index"], query_slices=query_slices, **options)
    assert_offline(text)
    return text, " ".join(parse(text).text)


def _png(src: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))


def test_verified_copy_shows_mask_box_and_the_verified_training_slice(tmp_path: Path, pixels) -> None:
    _write(tmp_path, pixels, verification=USED, calibration=HOLDS)
    text, plain = _render(tmp_path, pixels)
    assert "Likely memorization" in plain and "1 of 6 slices" in plain
    assert "Verification ran: every slice was aligned pixel by pixel with its 5 best candidate" in plain
    assert "A verified score above 0.5 is a copy at \u03b1 = 0.001 on its own" in plain
    assert "The calibration holds for these inputs" in plain and "Flags combine the verified score" in plain
    first = text[text.index('id="ev1"') : text.index('id="ev2"')]
    assert "verified score = 0.91, near-exact part 0.88, bent 0.97 (p = " in first
    assert "transposed, 90\u00b0, \u00d71.00" in first
    assert "copy box: rows 4\u201319, columns 6\u201325" in first and "t/copy.nii.gz" in first
    assert "pixel correlation r = 1.000" in first  # the training slice turned as verified is the query
    assert "verified training slice" in first and "query (copy marked)" in first
    query = _png(imgs(parse(first), "query")[0]["src"]).astype(int)
    assert query.ndim == 3 and query.shape[:2] == (40, 32)
    red = (query[..., 0] - query[..., 1] > 40) & (query[..., 0] - query[..., 2] > 40)
    assert red[8:16, 10:22].all() and not red[30:, :].any()  # tint inside the mask only
    yellow = (query[..., 0] > 200) & (query[..., 1] > 150) & (query[..., 2] < 80)
    assert yellow[4, 10:20].all() and yellow[10, 6] and not yellow[30:, :].any()  # the box's frame
    others = [_png(a["src"]) for a in imgs(parse(text), "query")[1:]]
    assert all(img.ndim == 2 for img in others), "slices without a copy mask stay grey"
    assert "<th>calibration</th>" in text and "does not hold" in text  # the volume's entry


def test_calibration_that_does_not_hold_is_said_and_flags_rest_on_verification(tmp_path: Path, pixels) -> None:
    _write(tmp_path, pixels, verification=USED, calibration=NOT_HOLDS)
    _, plain = _render(tmp_path, pixels)
    assert "Likely memorization" not in plain
    assert "Copies of training slices verified pixel by pixel (the global calibration does not hold)" in plain
    assert f"The calibration does not hold for these inputs: {FAR_ABOVE}." in plain
    assert "Flags rest on the verified score alone" in plain


def test_an_index_of_few_training_subjects_is_named_in_the_verdict(tmp_path: Path, pixels) -> None:
    _write(tmp_path, pixels, verification=USED, calibration=HOLDS | FEW_SUBJECTS)
    text, plain = _render(tmp_path, pixels)
    assert "The index's nulls come from held-out splits of only 3 training subjects" in plain
    assert "flagged more often than \u03b1 = 0.001" in plain and "--holdout" in plain
    _write(tmp_path, pixels, verification=USED, calibration=HOLDS | {"training_subjects": 12})
    _, plain = _render(tmp_path, pixels)
    assert "nulls come from held-out splits" not in plain


def test_no_flag_under_a_failed_calibration_is_not_a_clean_bill(tmp_path: Path, pixels) -> None:
    _write(tmp_path, pixels, verification=USED, calibration=NOT_HOLDS, copy_flagged=False)
    _, plain = _render(tmp_path, pixels)
    assert "No verified copies; the calibration does not hold for these inputs" in plain
    assert "No copies of training slices found" not in plain and "Likely memorization" not in plain


def test_global_flags_without_verification_are_not_called_memorization(tmp_path: Path, pixels) -> None:
    _write(tmp_path, pixels, verification=NOT_USED, calibration=HOLDS)
    text, plain = _render(tmp_path, pixels)
    assert "Likely memorization" not in plain
    assert "Flagged on the global score alone: not verified, not conclusive" in plain
    assert f"Verification could not run: {UNREACHABLE}." in plain
    assert "Flags rest on the global score alone" in plain
    assert 'class="verdict v-amber"' in text


def test_neither_verification_nor_calibration_is_inconclusive(tmp_path: Path, pixels) -> None:
    _write(tmp_path, pixels, verification=NOT_USED, calibration=NOT_HOLDS, copy_flagged=False)
    _, plain = _render(tmp_path, pixels)
    assert "Inconclusive: the calibration does not hold and verification could not run" in plain
    assert "No slice can be flagged" in plain and "Likely memorization" not in plain


def test_no_training_images_keeps_the_copy_marks(tmp_path: Path, pixels) -> None:
    _write(tmp_path, pixels, verification=USED, calibration=HOLDS)
    text, plain = _render(tmp_path, pixels, no_training_images=True)
    assert not imgs(parse(text), "train") and "training image withheld" in plain
    assert _png(imgs(parse(text), "query")[0]["src"]).ndim == 3
    assert "copy box: rows 4\u201319, columns 6\u201325" in plain
