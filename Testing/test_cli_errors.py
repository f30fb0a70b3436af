"""Bad and unusual inputs through the CLI: one ``error:`` line, exit code 2, nothing written -
or the documented behaviour (docs/reliability.md)."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from reliability_helpers import REPO, assert_clean_error, run_cli

from MemorizationIndexLib import volumes
from MemorizationIndexLib.preprocess import PreprocessSettings, nonempty_mask
from MemorizationIndexLib.reference_index import ReferenceIndex

DICOM_SERIES = ("knee", "pymskt-s02", "dicom_MESE_echo1")
SECOND_SERIES_UID = "1.2.826.0.1.3680043.8.498.20261128.7"


@pytest.fixture(autouse=True)
def _reuse_encoder(monkeypatch: pytest.MonkeyPatch, encoder) -> None:
    """Audits reuse the module's encoder (the index still checks it is the right one)."""

    def load(self, **_options):
        self.check_encoder(encoder)
        return encoder

    monkeypatch.setattr(ReferenceIndex, "load_encoder", load)


def _query_array(data: dict[str, Path]) -> tuple[np.ndarray, sitk.Image]:
    image = sitk.ReadImage(str(data["query"]))
    return sitk.GetArrayFromImage(image), image  # uint8 [4, 224, 224]


def _save(array: np.ndarray, like: sitk.Image | None, path: Path, is_vector: bool = False) -> Path:
    image = sitk.GetImageFromArray(array, isVector=is_vector)
    if like is not None:
        image.CopyInformation(like)
    sitk.WriteImage(image, str(path))
    return path


def _second_series(folder: Path, count: int = 3) -> None:
    """Add a second DICOM series: a few slices of the first, re-written with another SeriesInstanceUID."""
    for i, source in enumerate(sorted(folder.glob("*.dcm"))[:count]):
        image = sitk.ReadImage(str(source))
        image.SetMetaData("0020|000e", SECOND_SERIES_UID)
        image.SetMetaData("0008|0018", f"{SECOND_SERIES_UID}.{i + 1}")
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"second_{i}.dcm"))
        writer.Execute(image)


@pytest.fixture(scope="module")
def two_series(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    folder = tmp_path_factory.mktemp("dicom") / "two_series"
    shutil.copytree(shared_data.joinpath(*DICOM_SERIES), folder)
    _second_series(folder)
    assert len(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))) == 2
    return folder


# --- inputs refused: one line, exit 2, nothing written ------------------------------------------------


def _truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _bad_missing(tmp: Path, data, array, like) -> list[str]:
    return [str(tmp / "nope.nii.gz")]


def _bad_broken_link(tmp: Path, data, array, like) -> list[str]:
    link = tmp / "link.nii.gz"
    link.symlink_to(tmp / "gone.nii.gz")
    return [str(link)]


def _bad_text(tmp: Path, data, array, like) -> list[str]:
    (tmp / "notes.txt").write_text("not an image")
    return [str(tmp / "notes.txt")]


def _bad_garbage_nifti(tmp: Path, data, array, like) -> list[str]:
    (tmp / "garbage.nii.gz").write_bytes(os.urandom(4096))
    return [str(tmp / "garbage.nii.gz")]


def _bad_text_as_nifti(tmp: Path, data, array, like) -> list[str]:
    (tmp / "text.nii").write_text("hello " * 100)
    return [str(tmp / "text.nii")]


def _bad_empty_file(tmp: Path, data, array, like) -> list[str]:
    (tmp / "empty.nii.gz").write_bytes(b"")
    return [str(tmp / "empty.nii.gz")]


def _bad_truncated_niigz(tmp: Path, data, array, like) -> list[str]:
    return [str(_truncate(_save(array, like, tmp / "cut.nii.gz")))]


def _bad_truncated_nii(tmp: Path, data, array, like) -> list[str]:
    return [str(_truncate(_save(array, like, tmp / "cut.nii"), 0.9))]


def _bad_truncated_nrrd(tmp: Path, data, array, like) -> list[str]:
    return [str(_truncate(_save(array, like, tmp / "cut.nrrd")))]


def _bad_good_then_truncated(tmp: Path, data, array, like) -> list[str]:
    return [str(data["query"]), str(_truncate(_save(array, like, tmp / "cut.nii.gz")))]


def _bad_4d(tmp: Path, data, array, like) -> list[str]:
    return [str(_save(np.stack([array, array]), None, tmp / "four_d.nii.gz"))]


def _bad_channel_first(tmp: Path, data, array, like) -> list[str]:
    """A (1, H, W, D) array saved as NIfTI, as a generator writes its channel-first output: ITK reads D volumes."""
    return [str(_save(array[..., None], None, tmp / "channel_first.nii.gz"))]


def _bad_complex(tmp: Path, data, array, like) -> list[str]:
    real = sitk.Cast(sitk.GetImageFromArray(array), sitk.sitkFloat32)
    sitk.WriteImage(sitk.RealAndImaginaryToComplex(real, real), str(tmp / "complex.nii.gz"))
    return [str(tmp / "complex.nii.gz")]


def _bad_two_channels(tmp: Path, data, array, like) -> list[str]:
    return [str(_save(np.stack([array, array], axis=-1), None, tmp / "two.mha", is_vector=True))]


def _bad_empty_folder(tmp: Path, data, array, like) -> list[str]:
    (tmp / "folder").mkdir()
    (tmp / "folder" / "readme.txt").write_text("no images here")
    return [str(tmp / "folder")]


BAD_INPUTS: dict[str, tuple[Callable, list[str], tuple[str, ...]]] = {
    "missing path": (_bad_missing, [], ("input not found",)),
    "broken symlink": (_bad_broken_link, [], ("input not found",)),
    "not an image (.txt)": (_bad_text, [], ("not a supported image file",)),
    "random bytes named .nii.gz": (_bad_garbage_nifti, [], ("garbage.nii.gz",)),
    "text named .nii": (_bad_text_as_nifti, [], ("text.nii",)),
    "empty .nii.gz": (_bad_empty_file, [], ("empty.nii.gz",)),
    "truncated .nii.gz": (_bad_truncated_niigz, [], ("truncated",)),
    "truncated .nii": (_bad_truncated_nii, [], ("truncated",)),
    "truncated .nrrd": (_bad_truncated_nrrd, [], ("cut.nrrd",)),
    "good input then a truncated one": (_bad_good_then_truncated, [], ("truncated",)),
    "4D without --volume-index": (_bad_4d, [], ("4d image with 2 volumes", "--volume-index 0..1")),
    "channel-first array saved as NIfTI": (_bad_channel_first, [], ("channel-first", "array[0]")),
    "4D with an out-of-range --volume-index": (_bad_4d, ["--volume-index", "7"], ("out of range",)),
    "--volume-index on a 3D image": (
        lambda t, d, a, log: [str(d["query"])],
        ["--volume-index", "2"],
        ("single volume",),
    ),
    "complex pixels": (_bad_complex, [], ("complex pixels",)),
    "two-channel pixels": (_bad_two_channels, [], ("2 components",)),
    "folder without images": (_bad_empty_folder, [], ("no readable volumes or 2D images", "PNG/JPEG/TIFF/NPY/NPZ")),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_one_line_error_nothing_written(case: str, tmp_path: Path, index_dir: Path, data, capsys) -> None:
    make, extra, needles = BAD_INPUTS[case]
    array, like = _query_array(data)
    inputs = make(tmp_path, data, array, like)
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "out" / "audit"
    code, stdout, err = run_cli(capsys, "audit", index_dir, *inputs, "--out", out, *extra)
    assert_clean_error(code, err, *needles)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_unreadable_file_is_refused(tmp_path: Path, index_dir: Path, data, capsys, monkeypatch) -> None:
    path = tmp_path / "secret.nii.gz"
    shutil.copy(data["query"], path)
    path.chmod(0)  # enough for a normal user; root reads any mode, so the permission check is also simulated
    real_access = os.access
    monkeypatch.setattr(volumes.os, "access", lambda p, mode: False if Path(p) == path else real_access(p, mode))
    code, _, err = run_cli(capsys, "audit", index_dir, path, "--out", tmp_path / "out")
    assert_clean_error(code, err, "permission denied")
    assert not (tmp_path / "out").exists()


def test_output_that_is_a_file_is_refused(tmp_path: Path, index_dir: Path, data, capsys) -> None:
    out = tmp_path / "out.txt"
    out.write_text("keep me")
    code, _, err = run_cli(capsys, "audit", index_dir, data["query"], "--out", out)
    assert_clean_error(code, err, "is not a folder")
    assert out.read_text() == "keep me"


def test_dicom_folder_with_two_series(tmp_path: Path, index_dir: Path, two_series: Path, capsys) -> None:
    code, _, err = run_cli(capsys, "audit", index_dir, two_series, "--out", tmp_path / "out")
    assert_clean_error(code, err, "2 dicom series", SECOND_SERIES_UID, "--series")
    code, _, err = run_cli(capsys, "audit", index_dir, two_series, "--series", "1.2.3", "--out", tmp_path / "out")
    assert_clean_error(code, err, "not in", SECOND_SERIES_UID)
    assert not (tmp_path / "out").exists()
    code, _, err = run_cli(
        capsys, "audit", index_dir, two_series, "--series", SECOND_SERIES_UID, "--out", tmp_path / "out", "--no-report"
    )
    assert code == 0, err
    assert set(_scored(tmp_path / "out")) == {0, 1, 2}


def test_build_index_bad_inputs_write_nothing(tmp_path: Path, data, capsys) -> None:
    out = tmp_path / "index"
    code, _, err = run_cli(capsys, "build-index", data["train1"], tmp_path / "missing.nii.gz", "--out", out)
    assert_clean_error(code, err, "input not found")
    array, like = _query_array(data)
    four_d = _save(np.stack([array, array]), None, tmp_path / "four_d.nii.gz")
    code, _, err = run_cli(capsys, "build-index", data["train1"], four_d, "--out", out)
    assert_clean_error(code, err, "--volume-index")
    code, _, err = run_cli(
        capsys,
        "build-index",
        data["train1"],
        data["train2"],
        "--holdout",
        _truncate(_save(array, like, tmp_path / "cut.nii")),
        "--out",
        out,
    )
    assert_clean_error(code, err, "truncated")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.nii", "four_d.nii.gz"]


def test_cli_error_in_a_real_process(tmp_path: Path, index_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "MemorizationIndex")}
    (tmp_path / "x.nii.gz").write_bytes(b"\x1f\x8b broken gzip")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "MemorizationIndexLib.cli",
            "audit",
            str(index_dir),
            str(tmp_path / "x.nii.gz"),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=env,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


# --- documented behaviours (exit 0) ----------------------------------------------------------------------


def _scored(out: Path) -> dict[int, float]:
    with open(out / "slices.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for column in ("similarity", "z", "mi", "oni", "p_value"):
            assert np.isfinite(float(row[column])), row
    return {int(row["slice"]): float(row["similarity"]) for row in rows}


def _audit_ok(capsys, index_dir: Path, path: Path, out: Path, *extra: str) -> tuple[dict[int, float], str]:
    code, _, err = run_cli(capsys, "audit", index_dir, path, "--out", out, "--no-report", *extra)
    assert code == 0, err
    assert "Traceback" not in err
    return _scored(out), err


@pytest.fixture(scope="module")
def reference_scores(tmp_path_factory: pytest.TempPathFactory, index_dir: Path, data) -> dict[int, float]:
    from MemorizationIndexLib.audit import audit_paths

    out = tmp_path_factory.mktemp("reference-audit")
    audit = audit_paths(index_dir, [data["query"]], out, alpha=0.01)
    return {s.slice: s.similarity for s in audit[0].scores}


def test_2d_images_are_one_slice(tmp_path: Path, index_dir: Path, data, capsys, reference_scores) -> None:
    array, _ = _query_array(data)
    for name in ("slice.png", "slice.nii.gz", "slice.tif"):
        scores, _ = _audit_ok(
            capsys, index_dir, _save(array[1], None, tmp_path / name), tmp_path / f"out-{name}", "--axis", "sagittal"
        )
        assert list(scores) == [0]
        assert scores[0] == pytest.approx(reference_scores[1], abs=1e-4)


def test_rgb_is_read_as_grey(tmp_path: Path, index_dir: Path, data, capsys, reference_scores) -> None:
    array, _ = _query_array(data)
    rgb = np.stack([array[2]] * 3, axis=-1)
    scores, _ = _audit_ok(capsys, index_dir, _save(rgb, None, tmp_path / "rgb.png", is_vector=True), tmp_path / "out")
    assert scores[0] == pytest.approx(reference_scores[2], abs=1e-4)


def test_4d_with_volume_index(tmp_path: Path, index_dir: Path, data, capsys, reference_scores) -> None:
    array, _ = _query_array(data)
    four_d = _save(np.stack([np.zeros_like(array), array]), None, tmp_path / "four_d.nii.gz")
    scores, _ = _audit_ok(capsys, index_dir, four_d, tmp_path / "out", "--volume-index", "1")
    assert scores == pytest.approx(reference_scores, abs=1e-4)


def test_nan_and_inf_voxels_become_background(tmp_path: Path, index_dir: Path, data, capsys) -> None:
    array, like = _query_array(data)
    dirty = array.astype(np.float32)
    dirty[:, :20, :20] = np.nan
    dirty[0, 100, 100] = np.inf
    dirty[1, 5, 100] = -np.inf
    scores, _ = _audit_ok(capsys, index_dir, _save(dirty, like, tmp_path / "nan.nii.gz"), tmp_path / "out")
    assert sorted(scores) == [0, 1, 2, 3]
    image = volumes.read_image(tmp_path / "nan.nii.gz")
    assert np.isfinite(sitk.GetArrayViewFromImage(image)).all()


def test_constant_slices_are_skipped(tmp_path: Path, index_dir: Path, data, capsys, reference_scores) -> None:
    array, like = _query_array(data)
    mixed = array.copy()
    mixed[0] = 0
    mixed[3] = 200  # a constant bright slice would otherwise be embedded as an all-black image
    scores, _ = _audit_ok(capsys, index_dir, _save(mixed, like, tmp_path / "mixed.nii.gz"), tmp_path / "out-mixed")
    assert sorted(scores) == [1, 2]
    scores, err = _audit_ok(
        capsys, index_dir, _save(np.full_like(array, 7), like, tmp_path / "flat.nii.gz"), tmp_path / "out-flat"
    )
    assert scores == {} and "warning:" in err and "no slice could be scored" in err


def test_slices_under_16_pixels_are_skipped(tmp_path: Path, index_dir: Path, data, capsys) -> None:
    rng = np.random.default_rng(0)
    settings = PreprocessSettings()
    assert settings.min_slice_pixels == 16
    assert not nonempty_mask(rng.random((3, 15, 40), dtype=np.float32), settings).any()
    assert not nonempty_mask(rng.random((3, 40, 15), dtype=np.float32), settings).any()
    assert nonempty_mask(rng.random((3, 16, 40), dtype=np.float32), settings).all()
    array, _ = _query_array(data)
    tiny = np.ascontiguousarray(array[:, 100:112, 100:112])
    scores, err = _audit_ok(capsys, index_dir, _save(tiny, None, tmp_path / "tiny.nii.gz"), tmp_path / "out")
    assert scores == {} and "no slice could be scored" in err


@pytest.mark.parametrize(
    ("dtype", "scale", "offset"),
    [
        (np.uint16, 250, 0),
        (np.int16, 100, -1000),
        (np.int32, 100000, -5),
        (np.float64, 1e-3, 0.0),
        (np.float64, 1e30, 0.0),
    ],
)
def test_pixel_types_read_as_float32_without_overflow(
    tmp_path: Path, index_dir: Path, data, capsys, reference_scores, dtype, scale, offset
) -> None:
    array, like = _query_array(data)
    typed = (array.astype(np.float64) * scale + offset).astype(dtype)
    path = _save(typed, like, tmp_path / "typed.nrrd")
    image = volumes.read_image(path)
    assert image.GetPixelID() == sitk.sitkFloat32
    scores, _ = _audit_ok(capsys, index_dir, path, tmp_path / "out")
    assert scores == pytest.approx(reference_scores, abs=2e-3)
