"""Sets of 2D images and NumPy arrays (issue 13): reading, validation and the in-memory batch API,
on real MRI slices from ../shared/data."""

from __future__ import annotations

import builtins
import io
import os
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
    from MemorizationIndexLib.reference_index import build_index

    folder = shared_data / "spine" / "myosegmentum"
    out = tmp_path_factory.mktemp("sets") / "index"
    build_index([folder / f"{n}.nii.gz" for n in ("01", "02", "03")], out, device="cpu", reference_copies=False,
                holdout_paths=[folder / f"{n}.nii.gz" for n in ("04", "06")])
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
    np.testing.assert_array_equal(stack, spine_volumes["05"][5:5 + n].astype(np.float32))
    np.savez_compressed(tmp_path / "x.npz", images=array)
    np.testing.assert_array_equal(arrays.read_array_file(tmp_path / "x.npz"), stack)


def test_nan_values_become_background(tmp_path: Path, spine_volumes) -> None:
    array = spine_volumes["05"][5:7].astype(np.float32)
    array[0, :10, :10] = np.nan
    stack = arrays.as_stack(array, "x")
    assert np.isfinite(stack).all() and stack[0, 0, 0] == array[np.isfinite(array)].min()


@pytest.mark.parametrize("make, message", [
    (lambda s: np.array([s, None], dtype=object), "Python objects"),
    (lambda s: np.stack([s, s, s], axis=-1)[None], "colour images are not read"),
    (lambda s: np.full((2, 32, 32), np.nan, dtype=np.float32), "no finite value"),
    (lambda s: s.astype(np.complex64)[None], "complex"),
    (lambda s: s[None, None, None], "expected HxW, NxHxW"),
    (lambda s: np.zeros((0, 32, 32), np.float32), "empty"),
    (lambda s: np.array(["a", "b"]), "expected a real numeric array"),
])
def test_bad_arrays_are_refused_in_one_line(tmp_path: Path, spine_volumes, make, message) -> None:
    array = make(spine_volumes["05"][5])
    path = tmp_path / "bad.npy"
    np.save(path, array, allow_pickle=True)
    with pytest.raises(UserError, match=message) as info:
        arrays.read_array_file(path)
    assert "\n" not in str(info.value)


def test_npz_with_several_arrays_and_broken_files(tmp_path: Path, spine_volumes) -> None:
    s = spine_volumes["05"][5]
    np.savez(tmp_path / "two.npz", a=s, b=s)
    with pytest.raises(UserError, match="holds 2 arrays"):
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
    read = list(image_sets.iter_set_slices(folder_set))
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
    read = list(image_sets.iter_set_slices(image_set))
    np.testing.assert_allclose(read[0][2], rgb.mean(axis=-1), rtol=1e-6)
    assert [k for _, k, _ in read] == [0, 0, 1, 2]
    np.testing.assert_array_equal(read[3][2], slices[2])


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


def test_batch_scorer_scores_numpy_and_torch_batches_in_memory(spine_index: Path, spine_volumes, tmp_path: Path,
                                                               monkeypatch) -> None:
    from MemorizationIndexLib.batch_scoring import BatchScorer

    scorer = BatchScorer(spine_index, alpha=0.05)
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
    for name in ("similarity", "z", "mi", "oni", "p_value"):
        np.testing.assert_allclose(getattr(torch_scores, name), getattr(numpy_scores, name), rtol=1e-6)
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


def test_training_loop_example(spine_index: Path, spine_volumes) -> None:
    """The ten-line example of docs/python-api.md: the flagged fraction every N steps."""
    from MemorizationIndexLib.batch_scoring import BatchScorer

    def generator_step(step: int) -> torch.Tensor:  # stands in for a model that starts to copy
        real = spine_volumes["05"][4:12].astype(np.float32)
        if step >= 200:
            real[:4] = spine_volumes["01"][4:8]
        return torch.from_numpy(real)[:, None]

    scorer = BatchScorer(spine_index, alpha=0.05)
    history = []
    for step in range(0, 301):
        samples = generator_step(step)
        if step % 100 == 0:
            scores = scorer.score(samples)
            history.append((step, scores.flagged_fraction, float(np.nanmean(scores.mi))))
    assert [h[0] for h in history] == [0, 100, 200, 300]
    assert history[0][1] <= 0.25 and history[2][1] >= 0.5 and history[2][2] > history[0][2]


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
    result = audit_set(index, image_sets.open_set(tmp_path / "set"), encoder=index.load_encoder(), alpha=0.05,
                       batch_size=4, progress=lambda done, total: progress.append((done, total)), keep_evidence=3)
    volume = audit_image(index, sitk.GetImageFromArray(slices.astype(np.float32)), "v", alpha=0.05, batch_size=4)
    assert [Path(m.volume).name for m in result.members] == [f"g{i:04d}.png" for i in range(12)] + ["rest.npy"]
    assert [(Path(m.volume).name, s.slice) for m in result.members for s in m.scores][-3:] == [
        ("rest.npy", 5), ("rest.npy", 6), ("rest.npy", 7)]
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
