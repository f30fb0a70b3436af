"""Sets of 2D images and NumPy arrays (issue 13): reading, validation and the in-memory batch API,
on real MRI slices from ../shared/data."""

from __future__ import annotations

import builtins
import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MemorizationIndexLib import arrays, image_sets
from MemorizationIndexLib.errors import UserError


@pytest.fixture(scope="module")
def spine_volumes(shared_data: Path) -> dict[str, np.ndarray]:
    """Spine subjects 01-06 as arrays [20 sagittal slices, 224, 224] (uint8 as stored)."""
    folder = shared_data / "spine" / "myosegmentum"
    names = ("01", "02", "03", "04", "05", "06")
    return {n: sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{n}.nii.gz"))) for n in names}


@pytest.fixture(scope="module")
def spine_index(tmp_path_factory, shared_data: Path) -> Path:
    """An index of spine subjects 01-03 (no flipped copies) with subjects 04 and 06 as the holdout null."""
    from MemorizationIndexLib.index_build import BuildOptions, build_index

    folder = shared_data / "spine" / "myosegmentum"
    out = tmp_path_factory.mktemp("sets") / "index"
    options = BuildOptions(reference_copies=False, holdout_paths=[folder / f"{n}.nii.gz" for n in ("04", "06")])
    build_index([folder / f"{n}.nii.gz" for n in ("01", "02", "03")], out, options)
    return out


# ------------------------------------------------------------------------------------- arrays


@pytest.mark.parametrize("shape", [(224, 224), (3, 224, 224), (3, 1, 224, 224), (3, 224, 224, 1)])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
def test_array_layouts_read_as_stacks(tmp_path: Path, spine_volumes, shape, dtype) -> None:
    slices = spine_volumes["05"][5:8] if len(shape) > 2 else spine_volumes["05"][5]
    array = slices.reshape(shape).astype(dtype)
    path = tmp_path / "x.npy"
    np.save(path, array)
    n = 1 if len(shape) == 2 else 3
    assert arrays.array_file_slices(path) == n
    stack = arrays.read_array_file(path)
    assert stack.shape == (n, 224, 224) and stack.dtype == np.float32
    np.testing.assert_array_equal(stack, spine_volumes["05"][5 : 5 + n].astype(np.float32))
    np.savez_compressed(tmp_path / "x.npz", images=array)
    np.testing.assert_array_equal(arrays.read_array_file(tmp_path / "x.npz"), stack)


def _colour(slices: np.ndarray) -> np.ndarray:
    """Slices [N, H, W] as RGB [N, H, W, 3] with channels that differ (grey = their mean)."""
    return np.stack([slices, slices // 2, slices // 4], axis=-1)


@pytest.mark.parametrize(
    "layout",
    ["NxHxWx3", "NxHxWx4", "Nx3xHxW", "HxWx3", "guided-diffusion npz"],
)
def test_colour_arrays_read_as_grey(tmp_path: Path, spine_volumes, layout) -> None:
    """Colour stacks as generators save them become grey as colour pictures do: the mean of R, G and B."""
    slices = spine_volumes["05"][5:8]
    rgb = _colour(slices)
    array = {
        "NxHxWx3": rgb,
        "NxHxWx4": np.concatenate([rgb, np.full(slices.shape + (1,), 255, np.uint8)], axis=-1),  # alpha dropped
        "Nx3xHxW": np.moveaxis(rgb, -1, 1),  # a PyTorch batch
        "HxWx3": rgb[0],
        "guided-diffusion npz": rgb,
    }[layout]
    path = tmp_path / ("samples_3x224x224x3.npz" if layout.endswith("npz") else "x.npy")
    if layout.endswith("npz"):  # image_sample.py of a class-conditional model: arr_0 images, arr_1 labels
        np.savez(path, array, np.array([3, 1, 4]))
    else:
        np.save(path, array)
    n = 1 if layout == "HxWx3" else 3
    assert arrays.array_file_slices(path) == n
    stack = arrays.read_array_file(path)
    np.testing.assert_allclose(stack, rgb[:n].mean(axis=-1), rtol=1e-6)
    grey = np.stack([slices] * 3, axis=-1)  # a grey sample saved as RGB reads exactly as the grey one
    np.testing.assert_array_equal(arrays.as_stack(grey, "grey"), slices.astype(np.float32))


def test_nan_values_become_background(tmp_path: Path, spine_volumes) -> None:
    array = spine_volumes["05"][5:7].astype(np.float32)
    array[0, :10, :10] = np.nan
    stack = arrays.as_stack(array, "x")
    assert np.isfinite(stack).all() and stack[0, 0, 0] == array[np.isfinite(array)].min()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda s: np.array([s, None], dtype=object), "Python objects"),
        (lambda s: np.stack([s, s, s, s])[None], "4 channels first is not an image"),
        (lambda s: np.full((2, 32, 32), np.nan, dtype=np.float32), "no finite value"),
        (lambda s: s.astype(np.complex64)[None], "complex"),
        (lambda s: s[None, None, None], "expected HxW, NxHxW"),
        (lambda s: np.zeros((0, 32, 32), np.float32), "empty"),
        (lambda s: np.array(["a", "b"]), "expected a real numeric array"),
    ],
)
def test_bad_arrays_are_refused_in_one_line(tmp_path: Path, spine_volumes, make, message) -> None:
    array = make(spine_volumes["05"][5])
    path = tmp_path / "bad.npy"
    np.save(path, array, allow_pickle=True)
    with pytest.raises(UserError, match=message) as info:
        arrays.read_array_file(path)
    assert "\n" not in str(info.value)


def test_npz_with_several_arrays_and_broken_files(tmp_path: Path, spine_volumes) -> None:
    s = spine_volumes["05"][5]
    np.savez(tmp_path / "two.npz", a=s, b=s, labels=np.arange(2))
    with pytest.raises(UserError, match=r"holds 2 arrays of images \(a, b\)"):
        arrays.array_file_slices(tmp_path / "two.npz")
    (tmp_path / "cut.npy").write_bytes(b"\x93NUMPY\x01\x00")
    with pytest.raises(UserError, match="not a readable .npy"):
        arrays.array_file_slices(tmp_path / "cut.npy")
    (tmp_path / "cut.npz").write_bytes(b"PK\x03\x04broken")
    with pytest.raises(UserError, match="not a readable .npz"):
        arrays.array_file_slices(tmp_path / "cut.npz")


# ---------------------------------------------------------------------------------------- sets


def _write_pngs(folder: Path, slices: np.ndarray, prefix: str = "g") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, s in enumerate(slices):
        paths.append(folder / f"{prefix}{i:04d}.png")
        sitk.WriteImage(sitk.GetImageFromArray(np.asarray(s, dtype=np.uint8)), str(paths[-1]))
    return paths


def test_hidden_files_and_folders_are_not_samples(tmp_path: Path, spine_volumes) -> None:
    """Jupyter's .ipynb_checkpoints copies and macOS's ._ metadata files in a folder are not inputs: the copy was
    counted (and flagged) as a sample of its own, and the metadata file refused the whole folder."""
    from MemorizationIndexLib.volumes import expand_inputs

    folder = tmp_path / "samples"
    pngs = _write_pngs(folder, spine_volumes["05"][4:7])
    _write_pngs(folder / ".ipynb_checkpoints", spine_volumes["05"][4:5], prefix="g-checkpoint")
    (folder / "._g0000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble metadata, not a PNG")
    assert image_sets.is_set_input(folder)
    assert list(image_sets.open_set(folder).files) == pngs
    volumes = tmp_path / "volumes"
    (volumes / ".ipynb_checkpoints").mkdir(parents=True)
    for path in (volumes / "a.nii.gz", volumes / ".ipynb_checkpoints" / "a-checkpoint.nii.gz"):
        sitk.WriteImage(sitk.GetImageFromArray(spine_volumes["05"][:4]), str(path))
    assert expand_inputs([volumes]) == [volumes / "a.nii.gz"]
    assert image_sets.open_set(folder / ".ipynb_checkpoints").files[0].name == "g-checkpoint0000.png"  # if asked for


def test_folder_glob_and_array_inputs_are_sets(tmp_path: Path, spine_volumes) -> None:
    slices = spine_volumes["05"][4:10]
    pngs = _write_pngs(tmp_path / "ckpt", slices)
    np.save(tmp_path / "ckpt" / "more.npy", slices[:2])
    assert image_sets.is_set_input(tmp_path / "ckpt")
    assert image_sets.is_set_input(str(tmp_path / "ckpt" / "*.png"))
    assert image_sets.is_set_input(tmp_path / "ckpt" / "more.npy")
    assert not image_sets.is_set_input(pngs[0])  # one picture stays a volume input, as before
    sitk.WriteImage(sitk.GetImageFromArray(slices), str(tmp_path / "vol.nii.gz"))
    assert not image_sets.is_set_input(tmp_path / "vol.nii.gz")
    (tmp_path / "mixed").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(slices), str(tmp_path / "mixed" / "vol.nii.gz"))
    _write_pngs(tmp_path / "mixed", slices[:1])
    assert not image_sets.is_set_input(tmp_path / "mixed")  # a folder with a volume stays volumes

    folder_set = image_sets.open_set(str(tmp_path / "ckpt") + "/")
    assert folder_set.name == str(tmp_path / "ckpt")
    assert [p.name for p in folder_set.files] == [p.name for p in pngs] + ["more.npy"]
    assert folder_set.counts == (1,) * 6 + (2,) and folder_set.n_slices == 8
    read = [(p, k, s) for p, _, stack, _ in image_sets.iter_set_files(folder_set) for k, s in enumerate(stack)]
    assert [(p.name, k) for p, k, _ in read][-3:] == [("g0005.png", 0), ("more.npy", 0), ("more.npy", 1)]
    for (_, _, got), want in zip(read, list(slices) + list(slices[:2])):
        np.testing.assert_array_equal(got, want.astype(np.float32))  # axis 0 = rows, as stored
    glob_set = image_sets.open_set(str(tmp_path / "ckpt" / "g000[0-2].png"))
    assert [p.name for p in glob_set.files] == ["g0000.png", "g0001.png", "g0002.png"]


def test_colour_and_multipage_files_in_a_set(tmp_path: Path, spine_volumes) -> None:
    slices = spine_volumes["05"][4:7]
    (tmp_path / "set").mkdir()
    rgb = np.stack([slices[0], slices[0] // 2, slices[0] // 4], axis=-1)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "set" / "a.png"))
    sitk.WriteImage(sitk.GetImageFromArray(slices), str(tmp_path / "set" / "b.tif"))
    image_set = image_sets.open_set(tmp_path / "set")
    assert image_set.counts == (1, 3)
    read = [(p, k, s) for p, _, stack, _ in image_sets.iter_set_files(image_set) for k, s in enumerate(stack)]
    np.testing.assert_allclose(read[0][2], rgb.mean(axis=-1), rtol=1e-6)
    assert [k for _, k, _ in read] == [0, 0, 1, 2]
    np.testing.assert_array_equal(read[3][2], slices[2])


def _sample_grid(samples: np.ndarray, per_row: int, padding: int, value: float) -> np.ndarray:
    """The samples laid out as a training loop's sample grid: torchvision's make_grid layout (tiles row by row,
    ``padding`` pixels of ``value`` around and between them, the places after the last sample left at ``value``)."""
    n, h, w = samples.shape
    columns, rows = min(per_row, n), -(-n // min(per_row, n))
    grid = np.full((rows * (h + padding) + padding, columns * (w + padding) + padding), value, dtype=samples.dtype)
    for i, sample in enumerate(samples):
        r, c = divmod(i, columns)
        top, left = r * (h + padding) + padding, c * (w + padding) + padding
        grid[top : top + h, left : left + w] = sample
    return grid


def _save_picture(path: Path, grey: np.ndarray, **options) -> Path:
    """An 8-bit RGB picture (as torchvision's save_image writes a grey grid) in the format of the suffix."""
    from PIL import Image

    Image.fromarray(np.stack([grey.astype(np.uint8)] * 3, axis=-1)).save(path, **options)
    return path


@pytest.mark.parametrize("per_row, n, padding, value", [(4, 8, 2, 0), (3, 7, 1, 255), (8, 3, 4, 128), (2, 4, 2, 0)])
def test_a_sample_grid_is_read_as_its_samples(tmp_path: Path, spine_volumes, per_row, n, padding, value) -> None:
    samples = np.concatenate([spine_volumes["05"][3:13], spine_volumes["06"][3:13]])[:n]
    png = _save_picture(tmp_path / "step-4000.png", _sample_grid(samples, per_row, padding, value))
    assert image_sets.is_set_input(png)  # one grid alone is a set of its samples
    stack, mosaic = image_sets.read_set_file(png)
    layout = (mosaic.columns, mosaic.padding, mosaic.tile_shape, mosaic.samples)
    assert layout == (min(per_row, n), padding, (224, 224), n)
    np.testing.assert_array_equal(stack, samples.astype(np.float32))  # row by row, blank places dropped
    jpeg = _save_picture(tmp_path / "step-4000.jpg", _sample_grid(samples, per_row, padding, value), quality=75)
    stack, mosaic = image_sets.read_set_file(jpeg)
    assert mosaic is not None and stack.shape == samples.shape
    assert np.corrcoef(stack.ravel(), samples.ravel())[0, 1] > 0.99


def test_a_blurred_band_does_not_leave_several_samples_in_one_tile(spine_volumes) -> None:
    from MemorizationIndexLib import mosaics

    samples = np.concatenate([spine_volumes[n][3:11] for n in ("05", "06")]).astype(np.float32)
    grid = _sample_grid(samples, 4, 2, 0)
    band = slice(2 + 224, 2 + 224 + 2)  # the band between the first and second column of samples
    grid[:, band] += np.random.default_rng(0).normal(0, 0.07 * grid.max(), size=grid[:, band].shape)
    # the band is over the first search's tolerance, which a 2x2 layout of 450-pixel tiles (4 samples each) fits
    assert mosaics._layout(grid, mosaics.FLAT_SHARE * float(grid.max() - grid.min())).tile_shape == (450, 450)
    mosaic = mosaics.find_mosaic(grid)
    assert (mosaic.rows, mosaic.columns, mosaic.tile_shape, mosaic.samples) == (4, 4, (224, 224), 16)


def test_pictures_that_are_not_sample_grids_stay_one_slice(tmp_path: Path, spine_volumes, shared_data: Path) -> None:
    from MemorizationIndexLib.mosaics import find_mosaic

    samples = spine_volumes["05"][3:11]
    unpadded = _save_picture(tmp_path / "unpadded.png", _sample_grid(samples, 4, 0, 0))  # no bands to find
    assert not image_sets.is_set_input(unpadded)
    assert image_sets.read_set_file(unpadded)[0].shape == (1, 448, 896)
    for name, volume in spine_volumes.items():  # every slice of six people, each axis, as stored
        for axis in range(3):
            found = [k for k in range(volume.shape[axis]) if find_mosaic(np.take(volume, k, axis=axis)) is not None]
            assert found == [], (name, axis, found)
    # the edge slices of skull-stripped brains: specks of anatomy on a background as flat as a band, which a layout
    # of flat bands fits (taken for 1x5 and 2x3 grids before blank-or-image tiles were required)
    brains = shared_data / "brain" / "ds002748"
    for subject, slices in (("04", (7, 8, 9)), ("09", (10,)), ("16", (5, 6))):
        volume = sitk.GetArrayFromImage(sitk.ReadImage(str(brains / f"sub-{subject}_T1w.nii.gz")))
        assert [k for k in slices if find_mosaic(volume[k]) is not None] == [], subject


def test_a_folder_of_dicom_samples_is_a_set(tmp_path: Path, spine_volumes, shared_data: Path) -> None:
    samples = spine_volumes["05"][4:8].astype(np.int16)
    folder = tmp_path / "samples"
    folder.mkdir()
    for i, sample in enumerate(samples):  # SimpleITK gives each file written a series of its own
        sitk.WriteImage(sitk.GetImageFromArray(sample), str(folder / f"sample_{i}.dcm"))
    (folder / "sample_3.dcm").rename(folder / "sample_3")  # DICOM files often have no suffix
    assert image_sets.is_set_input(folder)
    assert not image_sets.is_set_input(folder, dicom=False)  # --series: one series of the folder, a volume
    image_set = image_sets.open_set(folder)
    assert [p.name for p in image_set.files] == ["sample_0.dcm", "sample_1.dcm", "sample_2.dcm", "sample_3"]
    assert image_set.counts == (1, 1, 1, 1)
    read = [stack for _, _, stack, _ in image_sets.iter_set_files(image_set)]
    np.testing.assert_array_equal(np.concatenate(read), samples.astype(np.float32))
    series_folder = shared_data / "knee" / "pymskt-s02" / "dicom_MESE_echo1"  # one series of 24 files: a volume
    assert not image_sets.is_set_input(series_folder)


def test_bad_set_members_are_refused(tmp_path: Path, spine_volumes) -> None:
    with pytest.raises(UserError, match="no PNG/JPEG/TIFF/NPY/NPZ files match"):
        image_sets.open_set(str(tmp_path / "nothing" / "*.png"))
    _write_pngs(tmp_path / "ckpt", spine_volumes["05"][4:6])
    np.save(tmp_path / "ckpt" / "bad.npy", np.array([1, None], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="bad.npy holds Python objects"):
        image_sets.open_set(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "bad.npy").unlink()
    (tmp_path / "ckpt" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    with pytest.raises(UserError, match="broken.png"):
        image_sets.open_set(tmp_path / "ckpt")


# ------------------------------------------------------------------------------- batch scoring


def test_batch_scorer_scores_numpy_and_torch_batches_in_memory(
    spine_index: Path, spine_volumes, tmp_path: Path, monkeypatch
) -> None:
    from MemorizationIndexLib.batch_scoring import BatchScorer

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # alpha 0.05 is within reach of the 40-score null: no warning
        scorer = BatchScorer(spine_index, alpha=0.05)
    with pytest.warns(UserWarning, match=r"alpha 0.001 is out of reach of this index's null \(40 scores"):
        BatchScorer(scorer.index)
    batch = spine_volumes["05"][4:12].copy()
    batch[1], batch[5] = spine_volumes["01"][7], spine_volumes["02"][12]  # two training slices copied
    batch[3] = 0  # a blank sample

    def no_disk(*args, **kwargs):
        raise AssertionError(f"the batch API opened a file: {args[:1]}")

    with monkeypatch.context() as patch:
        for module, name in ((builtins, "open"), (io, "open"), (os, "open"), (Path, "open")):
            patch.setattr(module, name, no_disk)
        numpy_scores = scorer.score(batch)
        torch_scores = scorer.score(torch.from_numpy(batch.astype(np.float32))[:, None])
        rgb_scores = scorer.score(torch.from_numpy(batch.astype(np.float32))[:, None].expand(-1, 3, -1, -1))
    for name in ("similarity", "z", "mi", "oni", "p_value"):
        np.testing.assert_allclose(getattr(torch_scores, name), getattr(numpy_scores, name), rtol=1e-6)
        np.testing.assert_allclose(getattr(rgb_scores, name), getattr(numpy_scores, name), rtol=1e-6)
    s = numpy_scores
    assert s.scored.tolist() == [True, True, True, False, True, True, True, True]
    assert np.isnan(s.mi[3]) and not s.flagged[3] and s.nn_source[3] == "" and s.nn_slice[3] == -1
    assert s.flagged[1] and s.flagged[5]
    assert Path(s.nn_source[1]).name == "01.nii.gz" and s.nn_slice[1] == 7
    assert Path(s.nn_source[5]).name == "02.nii.gz" and s.nn_slice[5] == 12
    assert s.mi[1] > 0.99 and s.mi[5] > 0.99 and s.oni[1] < -0.98
    assert s.flagged_fraction == pytest.approx(s.flagged.sum() / 7)
    assert s.threshold.alpha == 0.05
    with pytest.raises(UserError, match="expected NxHxW"):
        scorer.score(batch[0])


def test_batch_scores_equal_the_audit_of_the_same_slices(spine_index: Path, spine_volumes, tmp_path: Path) -> None:
    from MemorizationIndexLib.audit import audit_image
    from MemorizationIndexLib.batch_scoring import BatchScorer
    from MemorizationIndexLib.reference_index import ReferenceIndex

    index = ReferenceIndex.load(spine_index)
    batch = spine_volumes["05"][3:9].copy()
    batch[2] = spine_volumes["01"][7]
    scores = BatchScorer(index, alpha=0.05).score(batch)
    # each sample as its own one-slice image: the audit's per-slice result
    for i, sample in enumerate(batch):
        audited = audit_image(index, sitk.GetImageFromArray(sample[None].astype(np.float32)), "x", alpha=0.05).scores[0]
        assert scores.similarity[i] == pytest.approx(audited.similarity, rel=1e-6)
        assert scores.p_value[i] == pytest.approx(audited.p_value)
        assert (scores.nn_source[i], int(scores.nn_slice[i])) == (audited.nn_source, audited.nn_slice)


def test_training_loop_example_of_the_docs(spine_index: Path, spine_volumes, capsys) -> None:
    """Runs the training-loop example of docs/sets.md, with a stand-in model that starts to copy
    training slices at step 2000."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "sets.md").read_text(encoding="utf-8")
    block = text.split("<!-- training-loop-example -->\n```python\n", 1)[1].split("```", 1)[0]
    assert len(block.strip().splitlines()) <= 12

    class Model:
        step = 0

        def sample(self, n: int) -> torch.Tensor:
            real = np.concatenate([spine_volumes["05"][3:11], spine_volumes["06"][3:11]])[:n].astype(np.float32)
            if self.step >= 2000:
                real[:8] = spine_volumes["01"][4:12]
            return torch.from_numpy(real)[:, None]

    def train_step(model: Model, step: int) -> None:
        model.step = step

    namespace = {"n_steps": 3001, "train_step": train_step, "model": Model()}
    # the test index's null has 40 scores, so p cannot go below 1/41: audit at alpha 0.05
    exec(block.replace('"ref-index", device="cpu"', f'{str(spine_index)!r}, device="cpu", alpha=0.05'), namespace)
    history = namespace["history"]
    assert [h[0] for h in history] == [0, 1000, 2000, 3000]
    assert history[0][1] <= 2 / 16 and history[2][1] >= 8 / 16 and history[3][2] > history[0][2]
    assert "step 2000: " in capsys.readouterr().out


# ------------------------------------------------------------------------------------ set audit


def test_set_audit_equals_the_volume_audit_of_the_same_slices(spine_index: Path, spine_volumes, tmp_path: Path) -> None:
    from MemorizationIndexLib.audit import audit_image
    from MemorizationIndexLib.reference_index import ReferenceIndex
    from MemorizationIndexLib.set_audit import audit_set

    index = ReferenceIndex.load(spine_index)
    slices = spine_volumes["05"].copy()
    slices[4], slices[13] = spine_volumes["01"][4], spine_volumes["02"][13]
    _write_pngs(tmp_path / "set", slices[:12])
    np.save(tmp_path / "set" / "rest.npy", slices[12:])
    progress = []
    result = audit_set(
        index,
        image_sets.open_set(tmp_path / "set"),
        encoder=index.load_encoder(),
        alpha=0.05,
        batch_size=4,
        progress=lambda done, total: progress.append((done, total)),
        keep_evidence=3,
    )
    volume = audit_image(index, sitk.GetImageFromArray(slices.astype(np.float32)), "v", alpha=0.05, batch_size=4)
    assert [Path(m.volume).name for m in result.members] == [f"g{i:04d}.png" for i in range(12)] + ["rest.npy"]
    assert [(Path(m.volume).name, s.slice) for m in result.members for s in m.scores][-3:] == [
        ("rest.npy", 5),
        ("rest.npy", 6),
        ("rest.npy", 7),
    ]
    by_volume = {s.slice: s for s in volume.scores}
    positions = [i for i in range(12) if result.members[i].scores] + [12 + s.slice for s in result.members[-1].scores]
    assert set(positions) == set(by_volume)  # the same slices are empty one at a time as in the volume
    for position, score in zip(positions, result.scores):
        assert score.similarity == pytest.approx(by_volume[position].similarity, rel=1e-6)
        assert (score.nn_source, score.nn_slice) == (by_volume[position].nn_source, by_volume[position].nn_slice)
    assert result.members[4].flagged == 1 and result.members[-1].scores[1].flagged
    assert progress[-1] == (20, 20) and len(progress) == 2  # 16-slice chunks
    evidence = {(Path(m.volume).name, k) for m in result.members for k in m.evidence_slices}
    assert len(evidence) == 3 and {("g0004.png", 0), ("rest.npy", 1)} <= evidence


# -------------------------------------------------------------------------- command line, report


def _cli(*args: str) -> tuple[int, str, str]:
    import contextlib

    from MemorizationIndexLib import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, spine_volumes) -> tuple[Path, list[Path]]:
    """Three checkpoint folders of 12 PNG samples (subjects 05/06 slices, novel) with 0, 3 and 8 of
    them copied from training subjects 01 and 02."""
    root = tmp_path_factory.mktemp("ckpts")
    folders = []
    novel = np.concatenate([spine_volumes["05"][3:15], spine_volumes["06"][3:15]])
    for j, (name, copies) in enumerate((("ckpt-010k", 0), ("ckpt-020k", 3), ("ckpt-040k", 8))):
        samples = novel[j * 4 : j * 4 + 12].copy()
        for c in range(copies):
            samples[c] = spine_volumes["01" if c % 2 else "02"][4 + c]
        folders.append(root / name)
        _write_pngs(folders[-1], samples)
    return root, folders


def test_cli_compares_checkpoints(spine_index: Path, checkpoints, tmp_path: Path) -> None:
    import csv
    import json

    _, folders = checkpoints
    out = tmp_path / "audit"
    code, stdout, stderr = _cli("audit", str(spine_index), *map(str, folders), "--out", str(out), "--alpha", "0.05")
    assert code == 0, stderr
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert [s["set"] for s in summary["sets"]] == [str(f) for f in folders]
    assert summary["volumes"] == []
    fractions = [s["flagged_fraction"] for s in summary["sets"]]
    # alpha 0.05 over 12 novel slices: 0.6 false alarms expected, 3 or more in 2% of runs
    assert fractions[0] <= 2 / 12 and fractions[1] >= 3 / 12 and fractions[2] >= 8 / 12
    assert [s["mean_mi"] for s in summary["sets"]] == sorted(s["mean_mi"] for s in summary["sets"])
    assert [s["rows"] for s in summary["sets"]] == [[0, 12], [12, 24], [24, 36]]
    assert all(s["files"] == 12 and s["expected_false_alarms"] == pytest.approx(0.6) for s in summary["sets"])
    with open(out / "slices.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["volume"], r["slice"]) for r in rows[:2]] == [
        (str(folders[0] / "g0000.png"), "0"),
        (str(folders[0] / "g0001.png"), "0"),
    ]
    assert len(rows) == 36
    for line in ("ckpt-010k", "ckpt-020k", "ckpt-040k"):
        assert line in stdout
    text = (out / "report.html").read_text(encoding="utf-8")
    assert 'class="plot trend"' in text and 'class="plot sethist"' in text
    assert 'class="plot strips"' not in text  # no per-file strips for single-slice files
    assert text.index('id="sets"') < text.index('id="meta"')  # right below the verdict
    # the report command rebuilds it reading the evidence slices from the PNG files
    (out / "report.html").unlink()
    code, _, stderr = _cli("report", str(out))
    assert code == 0, stderr
    rebuilt = (out / "report.html").read_text(encoding="utf-8")
    assert "query image not available" not in rebuilt
    assert rebuilt.count('class="query"') == 24


def test_cli_finds_the_copies_inside_a_sample_grid(spine_index: Path, spine_volumes, tmp_path: Path) -> None:
    import csv
    import json

    samples = spine_volumes["05"][4:12].copy()  # 8 samples of a person in no index, 3 of them then copies
    sources = {1: ("01", 6), 4: ("02", 9), 6: ("01", 12)}
    for place, (subject, k) in sources.items():
        samples[place] = spine_volumes[subject][k]
    grid = _save_picture(tmp_path / "samples_step4000.png", _sample_grid(samples, 3, 2, 0))
    out = tmp_path / "audit"
    code, stdout, stderr = _cli("audit", str(spine_index), str(grid), "--out", str(out))
    assert code == 0, stderr
    assert "1 of 1 files are sample grids" in stdout
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    (entry,) = summary["sets"]
    assert (entry["sample_grids"], entry["files"], entry["slices_total"], entry["rows"]) == (1, 1, 8, [0, 8])
    with open(out / "slices.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["volume"], int(r["slice"])) for r in rows] == [(str(grid), k) for k in range(8)]
    assert {int(r["slice"]) for r in rows if r["flagged"] == "1"} == set(sources)
    for place, (subject, k) in sources.items():
        assert Path(rows[place]["nn_source"]).name == f"{subject}.nii.gz" and int(rows[place]["nn_slice"]) == k
    # the report command reads the evidence samples back out of the grid
    (out / "report.html").unlink()
    code, _, stderr = _cli("report", str(out))
    assert code == 0, stderr
    assert "query image not available" not in (out / "report.html").read_text(encoding="utf-8")


def test_cli_audits_a_folder_of_dicom_samples(spine_index: Path, spine_volumes, tmp_path: Path) -> None:
    import csv

    folder = tmp_path / "dicom_samples"
    folder.mkdir()
    samples = [spine_volumes["05"][6], spine_volumes["02"][9], spine_volumes["05"][9], spine_volumes["01"][12]]
    for i, sample in enumerate(samples):
        sitk.WriteImage(sitk.GetImageFromArray(sample.astype(np.int16)), str(folder / f"s{i}.dcm"))
    out = tmp_path / "audit"
    code, stdout, stderr = _cli("audit", str(spine_index), str(folder), "--out", str(out), "--no-report")
    assert code == 0, stderr  # before: "holds 4 DICOM series ...; pick one with --series"
    with open(out / "slices.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(r["volume"]).name for r in rows] == ["s0.dcm", "s1.dcm", "s2.dcm", "s3.dcm"]
    assert [r["flagged"] for r in rows] == ["0", "1", "0", "1"]


def test_a_sample_grid_read_as_a_volume_is_named_in_every_output(
    spine_index: Path, spine_volumes, tmp_path: Path
) -> None:
    """A grid exported as a one-slice volume (as the Slicer module exports a PNG it loaded) is one slice: the
    terminal, summary.json, the report and the Slicer panel's text say that it hides its samples."""
    import json

    from MemorizationIndexLib.mrml import read_audit_outputs
    from MemorizationIndexLib.results_html import summary_html

    grid = _sample_grid(spine_volumes["05"][4:12], 4, 2, 0).astype(np.float32)
    volume = tmp_path / "exported.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(grid[None]), str(volume))
    out = tmp_path / "audit"
    code, _, stderr = _cli("audit", str(spine_index), str(volume), "--out", str(out))
    assert code == 0, stderr
    layout = "a 2x4 sample grid of 224x224 tiles, 2-pixel padding, 8 samples"
    assert f"warning: {volume} is one picture holding {layout}" in stderr
    (entry,) = json.loads((out / "summary.json").read_text(encoding="utf-8"))["volumes"]
    assert entry["sample_grid"] == layout and entry["slices_total"] == 1
    assert f"one picture holding {layout}" in (out / "report.html").read_text(encoding="utf-8")
    audit = read_audit_outputs(out).audits[str(volume)]
    assert audit.sample_grid == layout
    panel = {
        "volume": "exported",
        "axis": "axial",
        "slices_scored": 1,
        "slices_total": 1,
        "slices_skipped_empty": 0,
        "mean_mi": 0.1,
        "mean_oni": 0.0,
        "flagged": 0,
        "flagged_fraction": 0.0,
        "flagged_slices": [],
        "threshold": {"alpha": 0.001, "mi": 0.99, "z": 4.0, "oni": -0.9},
        "sample_grid": layout,
    }
    assert f"<b>exported is one picture holding {layout}" in summary_html(panel)


def test_cli_audits_a_folder_of_2d_volume_files_as_a_set(spine_index: Path, spine_volumes, tmp_path: Path) -> None:
    """One 2D NIfTI/NRRD per sample (as MONAI's SaveImage writes 2D outputs) is a set; each file scores as the
    same file audited alone as a volume."""
    import csv
    import json

    folder = tmp_path / "samples"
    folder.mkdir()
    samples = [spine_volumes["05"][6], spine_volumes["02"][9], spine_volumes["06"][9]]
    names = ["s0.nii.gz", "s1.nrrd", "s2.nii.gz"]
    for name, sample in zip(names, samples):
        sitk.WriteImage(sitk.GetImageFromArray(sample[None]), str(folder / name))  # one voxel thick
    assert image_sets.is_set_input(folder)
    sitk.WriteImage(sitk.GetImageFromArray(spine_volumes["05"][3:6]), str(tmp_path / "three.nii.gz"))
    assert not image_sets.is_set_input(tmp_path)  # a 3D volume in the folder: volumes, as before

    def scores(out: Path) -> dict[str, tuple[float, str]]:
        with open(out / "slices.csv", newline="") as handle:
            return {Path(r["volume"]).name: (float(r["similarity"]), r["flagged"]) for r in csv.DictReader(handle)}

    code, _, stderr = _cli("audit", str(spine_index), str(folder), "--out", str(tmp_path / "set"), "--no-report")
    assert code == 0, stderr
    (entry,) = json.loads((tmp_path / "set" / "summary.json").read_text(encoding="utf-8"))["sets"]
    assert entry["files"] == 3 and entry["slices_scored"] == 3
    files = [str(folder / n) for n in names]
    code, _, stderr = _cli("audit", str(spine_index), *files, "--out", str(tmp_path / "vols"), "--no-report")
    assert code == 0, stderr
    as_set, as_volumes = scores(tmp_path / "set"), scores(tmp_path / "vols")
    assert as_set.keys() == as_volumes.keys() == set(names)
    for name in names:
        assert as_set[name][0] == pytest.approx(as_volumes[name][0], abs=1e-5)
        assert as_set[name][1] == as_volumes[name][1]
    assert as_set["s1.nrrd"][1] == "1"  # the copy of a training slice


def test_cli_audits_guided_diffusion_sample_files(spine_index: Path, spine_volumes, tmp_path: Path) -> None:
    """guided-diffusion's ``samples_NxHxWx3.npz`` (uint8 RGB images in arr_0, class labels in arr_1) is a set
    whose samples score as the same grey slices saved as one N×H×W array; its copies are flagged."""
    import csv

    samples = spine_volumes["05"][4:10].copy()
    samples[1], samples[4] = spine_volumes["01"][7], spine_volumes["02"][12]  # two training slices copied
    np.savez(tmp_path / "samples_6x224x224x3.npz", np.stack([samples] * 3, axis=-1), np.arange(6) % 2)
    np.save(tmp_path / "grey.npy", samples)

    def scores(name: str) -> list[tuple[float, str]]:
        with open(tmp_path / name / "slices.csv", newline="") as handle:
            return [(float(r["similarity"]), r["flagged"]) for r in csv.DictReader(handle)]

    for name in ("samples_6x224x224x3.npz", "grey.npy"):
        code, _, stderr = _cli("audit", str(spine_index), str(tmp_path / name), "--out", str(tmp_path / name[:5]))
        assert code == 0, stderr
    colour, grey = scores("sampl"), scores("grey.")
    assert len(colour) == 6 and [f for _, f in colour] == [f for _, f in grey]
    np.testing.assert_allclose([s for s, _ in colour], [s for s, _ in grey], rtol=1e-6)
    assert colour[1][1] == colour[4][1] == "1"  # by verification: alpha 0.001 is out of the 40-score null's reach


def test_an_unreachable_alpha_is_said_and_summary_json_stays_strict(spine_index: Path, spine_volumes, tmp_path) -> None:
    """With a null too small for alpha, the terminal says that only verified copies can be flagged, and summary.json
    writes the unreachable threshold as null (strict JSON: no Infinity), read back as infinite."""
    import json

    from MemorizationIndexLib.audit_output import read_audit

    np.save(tmp_path / "s.npy", spine_volumes["05"][5:8])
    code, stdout, stderr = _cli("audit", str(spine_index), str(tmp_path / "s.npy"), "--out", str(tmp_path / "out"))
    assert code == 0, stderr
    assert "alpha 0.001 is out of reach of this index's null (40 scores" in stdout
    assert "only copies confirmed by verification can be flagged" in stdout

    def refuse(constant: str):
        raise ValueError(f"summary.json holds {constant}")

    summary = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"), parse_constant=refuse)
    assert summary["threshold"]["similarity"] is None and summary["threshold"]["z"] is None
    threshold = read_audit(tmp_path / "out").threshold
    assert threshold.similarity == threshold.z == float("inf") and threshold.mi == 1.0


def test_cli_notes_an_input_the_calibration_does_not_hold_for(spine_index: Path, spine_volumes, tmp_path) -> None:
    """A set made wholly of training slices sits far above the null: the terminal says, as summary.json does, that
    the calibration does not hold for it and that its flags rest on verification."""
    import json

    np.save(tmp_path / "copies.npy", spine_volumes["01"][2:18])
    np.save(tmp_path / "novel.npy", spine_volumes["05"][2:18])
    out = tmp_path / "out"
    code, _, stderr = _cli(
        "audit", str(spine_index), *(str(tmp_path / n) for n in ("copies.npy", "novel.npy")), "--out", str(out)
    )
    assert code == 0, stderr
    holds = {
        Path(s["set"]).name: s["calibration_holds"] for s in json.loads((out / "summary.json").read_text())["sets"]
    }
    assert holds == {"copies.npy": False, "novel.npy": True}
    notes = [line for line in stderr.splitlines() if "calibration does not hold" in line]
    assert len(notes) == 1 and notes[0].startswith(f"note: {tmp_path / 'copies.npy'}: the calibration does not hold")
    assert "far above the null" in notes[0] and notes[0].endswith("only verified copies are flagged")


def test_cli_refuses_bad_arrays_with_one_line_and_no_outputs(spine_index: Path, spine_volumes, tmp_path: Path) -> None:
    good = tmp_path / "good"
    _write_pngs(good, spine_volumes["05"][4:6])
    cases = {
        "object.npy": np.array([spine_volumes["05"][4], None], dtype=object),
        "latents.npy": np.zeros((2, 4, 28, 28), dtype=np.float32),
        "latents_channels_last.npy": np.random.default_rng(0).normal(size=(2, 28, 28, 4)).astype(np.float32),
        "nan.npy": np.full((2, 64, 64), np.nan, dtype=np.float32),
    }
    for name, array in cases.items():
        path = tmp_path / name
        np.save(path, array, allow_pickle=True)
        out = tmp_path / f"out-{name}"
        code, stdout, stderr = _cli("audit", str(spine_index), str(good), str(path), "--out", str(out))
        assert code == 2 and stderr.count("\n") == 1 and stderr.startswith("error: "), (name, stderr)
        assert name in stderr
        assert not out.exists()


def test_outputs_written_inside_the_samples_folder_are_not_read_back(
    spine_index: Path, spine_volumes, tmp_path: Path
) -> None:
    """``audit --out samples/audit`` and an index kept beside the samples: a second audit of the folder reads its
    samples alone (the outputs' arrays were read as samples, and refused the folder); an audit without a report
    leaves no older report beside its outputs; files of a type no reader takes are named on stderr."""
    import shutil

    samples = tmp_path / "samples"
    _write_pngs(samples, spine_volumes["05"][4:7])
    (samples / "model.pt").write_bytes(b"not read")
    (samples / "config.json").write_text("{}")  # a side file: not named
    shutil.copytree(spine_index, samples / "index")
    out = samples / "audit"
    for extra in ((), ("--no-report",)):
        code, _, stderr = _cli("audit", str(spine_index), str(samples), "--out", str(out), *extra)
        assert code == 0, stderr
        assert len((out / "slices.csv").read_text().splitlines()) == 1 + 3
        notes = [line for line in stderr.splitlines() if "not read" in line]
        assert notes == [
            f"note: {samples}: 1 file(s) of a type this tool does not read were left out (model.pt); it reads "
            "volumes as NIfTI/NRRD/MHA/DICOM and 2D images as PNG/JPEG/TIFF/NPY/NPZ"
        ]
    assert not (out / "report.html").exists()  # the first audit's report described the first audit's outputs


def test_a_copied_volume_is_cut_as_the_reference_whatever_its_voxels_or_header(
    spine_index: Path, shared_data: Path, tmp_path: Path
) -> None:
    """The index's slices are all sagittal, cut along numpy axis 0 (the spine volumes' thickest axis). Two ways a 3D
    generator writes a copy of a training volume: resampled to isotropic voxels (no thickest axis: it used to be
    cut axial, where no slice matches the reference's, and nothing was flagged), and its array saved without
    geometry (unit spacing, zero origin: its patient planes mean nothing, so it is cut along the reference's numpy
    axis; nibabel's identity affine reads with two axes reversed). Each is cut as the reference was."""
    import json

    from MemorizationIndexLib.reference_index import ReferenceIndex

    index = ReferenceIndex.load(spine_index)
    assert (index.reference_plane, index.array_axis) == ("sagittal", 0)
    image = sitk.ReadImage(str(shared_data / "spine" / "myosegmentum" / "02.nii.gz"))
    isotropic = sitk.Resample(
        image, [112, 112, 40], sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), (2.0, 2.0, 2.0),
        image.GetDirection(), 0.0, image.GetPixelID(),
    )  # fmt: skip
    sitk.WriteImage(isotropic, str(tmp_path / "isotropic.nii.gz"))
    bare = sitk.GetImageFromArray(sitk.GetArrayFromImage(image))
    sitk.WriteImage(bare, str(tmp_path / "no_geometry.nii.gz"))
    bare.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(bare, str(tmp_path / "identity_affine.nii.gz"))
    names = ("isotropic", "no_geometry", "identity_affine")
    out = tmp_path / "out"
    code, _, stderr = _cli(
        "audit", str(spine_index), *(str(tmp_path / f"{n}.nii.gz") for n in names), "--out", str(out)
    )
    assert code == 0, stderr
    volumes = json.loads((out / "summary.json").read_text())["volumes"]
    assert [Path(v["volume"]).name for v in volumes] == [f"{n}.nii.gz" for n in names]
    for volume in volumes:
        assert (volume["axis"], volume["array_axis"]) == ("sagittal", 0), volume
        assert volume["flagged"] >= 0.9 * volume["slices_scored"] > 0, volume


def test_the_reference_plane_is_auto_for_an_index_of_several_planes() -> None:
    from types import SimpleNamespace

    from MemorizationIndexLib.reference_index import ReferenceIndex

    def plane(planes: list[str]) -> str:
        return ReferenceIndex.reference_plane.fget(SimpleNamespace(provenance=SimpleNamespace(axis=planes)))

    assert plane(["sagittal", "axial", "sagittal"]) == "auto"
    assert plane(["axial", "axial"]) == "axial"


def test_progress_bar_only_in_a_terminal(monkeypatch) -> None:
    from MemorizationIndexLib import cli
    from MemorizationIndexLib.progress import OverallProgress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv(cli.PROGRESS_ENV, raising=False)
    for stream, drawn in ((Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr("sys.stderr", stream)
        overall = OverallProgress(cli.make_progress("auditing"), [None, 40])
        part = overall.part(0)
        for done in range(0, 21, 5):
            part(done, 20)
        overall.finish(0, 20)
        second = overall.part(1)
        for done in range(0, 41, 10):
            second(done, 40)
        text = stream.getvalue()
        if drawn:
            assert "auditing" in text and "slice/s" in text and "60/60" in text
            assert "<" in text  # elapsed<remaining
        else:
            assert text == ""


def test_overall_progress_counts_over_inputs() -> None:
    from MemorizationIndexLib.progress import OverallProgress

    seen = []
    overall = OverallProgress(lambda d, t: seen.append((d, t)), [None, 30, None])
    overall.part(0)(5, 10)
    overall.part(0)(10, 10)
    overall.finish(0, 10)
    overall.part(1)(30, 30)
    overall.finish(1, 30)
    overall.part(2)(4, 8)
    assert seen == [(5, 60), (10, 60), (40, 60), (44, 48)]
    assert OverallProgress(None, [3]).part(0) is None


def test_demo_compares_checkpoints(tmp_path: Path, capsys) -> None:
    import json

    pytest.importorskip("dipy", reason="the demo's real MRI ships in the dipy package (make install has it)")
    from MemorizationIndexLib.demo import CHECKPOINTS, run_demo

    assert run_demo(tmp_path, device="cpu") == 0
    summary = json.loads((tmp_path / "checkpoints-audit" / "summary.json").read_text(encoding="utf-8"))
    assert [Path(s["set"]).name for s in summary["sets"]] == [name for name, _ in CHECKPOINTS]
    fractions = [s["flagged_fraction"] for s in summary["sets"]]
    assert fractions == sorted(fractions) and fractions[0] < fractions[-1]
    assert 'class="plot trend"' in (tmp_path / "checkpoints-audit" / "report.html").read_text(encoding="utf-8")
    assert "checkpoints compared" in capsys.readouterr().out
