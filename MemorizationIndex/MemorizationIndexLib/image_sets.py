"""Sets of 2D images: what 2D generators write (folders of PNG/JPEG/TIFF files, NumPy arrays).

A *set* is audited as one unit: its slices are read, prepared and embedded in batches across
files, and the outputs summarise it as one row (slices.csv still has one row per slice, with the
file as ``volume`` and the slice's index inside the file, 0 for a 2D image). A query input is a set
when it is

- a folder whose image files are all 2D formats (PNG, JPEG, TIFF, NPY, NPZ; searched recursively) or
  volume files of one slice each (a 2D NIfTI/NRRD/MHA per sample, as MONAI's ``SaveImage`` writes 2D
  outputs; read with the volume reader's checks),
- a glob pattern (quoted, so that the shell leaves it to us), e.g. ``'samples/*.png'``, or
- one ``.npy``/``.npz`` file (an N×H×W stack is a set of N samples),
- one picture that is a sample grid (:mod:`mosaics`: the padded mosaic training loops save), or
- a folder of DICOM samples: DICOM files each in a series of its own, at least two (what writing each
  generated slice as its own DICOM file gives: SimpleITK and pydicom make a new series UID per file
  unless told otherwise); a file's frames are its slices.

A picture of a set that is a sample grid is read as its samples, row by row, like the pages of a
multi-page TIFF. Anything else (volume files, DICOM folders, folders holding any volume file, a single
picture that is not a sample grid) stays a volume input, audited as before. Array axes: see :mod:`arrays`
(axis 0 = image rows).
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image

from .arrays import ARRAY_SUFFIXES, array_file_slices, as_stack, grey_from_channels, read_array_file
from .errors import UserError, itk_reason, one_line
from .mosaics import Mosaic, find_mosaic, mosaic_samples
from .volumes import (
    dicom_file_series,
    image_slices,
    inspect_input,
    is_volume_file,
    listed_files,
    read_image,
    resolve_axis,
)

SET_AXIS = "2d"  # the array_axis/axis of a set's files in the outputs (2D images or stacks of them)
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
SET_SUFFIXES = PICTURE_SUFFIXES + ARRAY_SUFFIXES
_GLOB_CHARACTERS = "*?["
_SIDE_FILE_ENDINGS = (
    *(".json", ".tsv", ".csv", ".txt", ".md", ".log", ".yaml", ".yml", ".html", ".xml", ".pdf", ".bval", ".bvec"),
    *(".raw", ".raw.gz", ".zraw"),  # the detached pixels of a .mhd or .nhdr header
)
PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg")  # read with Pillow; TIFF (multi-page, float) with ITK


@dataclass(frozen=True)
class ImageSet:
    """A set of 2D image files in audit order, with the number of slices of each from its header (a
    sample grid counts 1 until it is read: the counts serve progress, the audit counts what it reads)."""

    name: str
    files: tuple[Path, ...]
    counts: tuple[int, ...]

    @property
    def n_slices(self) -> int:
        """Slices in the whole set, from the headers."""
        return sum(self.counts)


def _is_set_file(path: Path) -> bool:
    return path.suffix.lower() in SET_SUFFIXES


def _is_volume_of_one_slice(path: Path) -> bool:
    """Whether a NIfTI/NRRD/MHA file's header says it is one 2D slice (2D, or one voxel thick along one axis)."""
    if path.suffix.lower() in (*SET_SUFFIXES, ".dcm") or not is_volume_file(path):
        return False
    try:
        size = inspect_input(path).size
    except UserError:
        return False  # left to the volume reader's error
    return len(size) == 2 or (len(size) == 3 and sorted(size)[0] == 1 < sorted(size)[1])


def _folder_files(folder: Path) -> list[Path]:
    return [p for p in listed_files(folder) if is_volume_file(p) or _is_set_file(p)]


def unread_files(folder: Path) -> list[Path]:
    """The files of an input folder that no reader takes by their suffix (a .webp or .bmp picture, a model.pt),
    when the folder holds files that one does; side files that hold no image (text, tables, JSON sidecars, the
    detached data of a .mhd or .nhdr header) are not counted; [] for a DICOM folder, whose files need no suffix."""
    files = listed_files(folder)
    read = [p for p in files if is_volume_file(p) or _is_set_file(p)]
    if not any(p.suffix.lower() != ".dcm" for p in read):
        return []
    return [p for p in files if not (is_volume_file(p) or _is_set_file(p) or _is_side_file(p))]


def _is_side_file(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(_SIDE_FILE_ENDINGS)


def _is_glob(raw: str) -> bool:
    return any(c in raw for c in _GLOB_CHARACTERS) and not Path(raw).exists()


def dicom_samples(folder: Path) -> tuple[Path, ...] | None:
    """The files of a folder of DICOM samples (module docstring) in path order, or None when the folder
    is not one (a DICOM series folder, or a folder holding other image files)."""
    if any(p.suffix.lower() != ".dcm" for p in _folder_files(folder)):
        return None
    series = dicom_file_series(folder)
    if len(series) < 2 or len(set(series.values())) != len(series):
        return None
    return tuple(series)


def is_set_input(raw: str | Path, *, dicom: bool = True) -> bool:
    """True when a query argument is a set (see the module docstring): from names, the pixels of a single
    picture, the headers of a folder's volume files and, with ``dicom``, the series of its DICOM files."""
    raw = str(raw)
    if _is_glob(raw):
        return True
    path = Path(raw)
    if path.is_file():
        return path.suffix.lower() in ARRAY_SUFFIXES or _is_sample_grid(path)
    if path.is_dir():
        files = _folder_files(path)
        if files and all(_is_set_file(p) or _is_volume_of_one_slice(p) for p in files):
            return True
        return dicom and dicom_samples(path) is not None
    return False


def _open_picture(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"cannot read {path} as an image ({one_line(exc)}); is the file complete?") from None


def _slices_in(path: Path) -> int:
    """Slices of one set file from its header: array files and pictures (Pillow) cost well under
    a millisecond a file, so sets of thousands of files are checked before any work."""
    suffix = path.suffix.lower()
    if suffix in ARRAY_SUFFIXES:
        return array_file_slices(path)
    if suffix in PILLOW_SUFFIXES:
        with _open_picture(path) as image:
            if min(image.size) < 1:
                raise UserError(f"{path} is empty (size {image.size[0]}x{image.size[1]})")
            return 1
    if suffix not in PICTURE_SUFFIXES and is_volume_file(path) and suffix != ".dcm":
        return 1  # a volume file of one slice (is_set_input checked its header)
    info = inspect_input(path, dicom=True)
    if info.dimension == 4:
        raise UserError(f"{path} is a 4D image; a set holds 2D images (or 3D stacks of 2D images)")
    return 1 if info.dimension == 2 else int(info.size[2])


def open_set(raw: str | Path) -> ImageSet:
    """The set named by a folder, glob or array file, every file checked from its header (cheap)."""
    raw = str(raw)
    if _is_glob(raw):
        files = sorted(Path(p) for p in glob.glob(raw, recursive=True) if Path(p).is_file())
        files = [p for p in files if _is_set_file(p)]
        if not files:
            raise UserError(f"no PNG/JPEG/TIFF/NPY/NPZ files match {raw}")
    else:
        path = Path(raw)
        files = [path] if path.is_file() else list(dicom_samples(path) or _folder_files(path))
        if not files:
            raise UserError(f"no readable 2D images in folder {path} (expected PNG/JPEG/TIFF/NPY/NPZ files)")
    name = raw.rstrip("/\\") or raw
    return ImageSet(name, tuple(files), tuple(_slices_in(p) for p in files))


def _read_picture(path: Path) -> np.ndarray:
    """A PNG/JPEG file's pixels [H, W] or [H, W, channels] (Pillow: about 4x faster than ITK here)."""
    with _open_picture(path) as image:
        try:
            if image.mode not in ("1", "L", "LA", "I", "I;16", "I;16B", "F", "RGB", "RGBA"):
                image = image.convert("RGBA" if "A" in image.mode else "RGB")  # palette, CMYK, ...
            return np.asarray(image)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {path} as an image ({one_line(exc)}); is the file complete?") from None


def _is_sample_grid(path: Path) -> bool:
    """Whether one picture file is a sample grid (its pixels read once; a file that cannot be read is
    left to the volume reader's error)."""
    if path.suffix.lower() not in PICTURE_SUFFIXES:
        return False
    try:
        return read_set_file(path)[1] is not None
    except UserError:
        return False


def _file_pixels(path: Path) -> np.ndarray:
    """One set file's pixels [N, H, W] float32 as stored: N = 1 for a 2D image, the pages of a
    multi-page TIFF; colour becomes grey (the mean of R, G and B, as for volumes), alpha is dropped."""
    suffix = path.suffix.lower()
    if suffix in ARRAY_SUFFIXES:
        return read_array_file(path)
    if suffix not in PICTURE_SUFFIXES and suffix != ".dcm" and is_volume_file(path):
        image = read_image(path)  # NIfTI/NRRD/MHA of one slice: the volume reader's checks and conversions
        return image_slices(image, resolve_axis(image, "auto"))
    if suffix in PILLOW_SUFFIXES:
        array = _read_picture(path)
        colour = array.ndim == 3
    else:
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise UserError(f"cannot read {path} as an image ({itk_reason(exc)}); is the file complete?") from None
        array, colour = sitk.GetArrayViewFromImage(image), image.GetNumberOfComponentsPerPixel() > 1
    if colour:
        array = grey_from_channels(array)
    return as_stack(array, str(path))


def read_set_file(path: Path) -> tuple[np.ndarray, Mosaic | None]:
    """The slices [N, H, W] float32 of one file of a set and, for a picture that is a sample grid, its
    layout: then the slices are its samples, row by row."""
    pixels = _file_pixels(path)
    if path.suffix.lower() in PICTURE_SUFFIXES and len(pixels) == 1:
        mosaic = find_mosaic(pixels[0])
        if mosaic is not None:
            return mosaic_samples(pixels[0], mosaic), mosaic
    return pixels, None


def read_slices(path: Path) -> np.ndarray:
    """The slices [N, H, W] float32 of one file of a set, as audited (:func:`read_set_file`)."""
    return read_set_file(path)[0]


def iter_set_files(image_set: ImageSet) -> Iterator[tuple[Path, int, np.ndarray, Mosaic | None]]:
    """(file, slices its header counts, its slices [N, H, W], its sample-grid layout or None) for every
    file of the set, in order; one file is read at a time."""
    for path, count in zip(image_set.files, image_set.counts):
        slices, mosaic = read_set_file(path)
        yield path, count, slices, mosaic
