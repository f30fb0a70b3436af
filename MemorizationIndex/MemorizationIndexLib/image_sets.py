"""Sets of 2D images: what 2D generators write (folders of PNG/JPEG/TIFF files, NumPy arrays).

A *set* is audited as one unit: its slices are read, prepared and embedded in batches across
files, and the outputs summarise it as one row (slices.csv still has one row per slice, with the
file as ``volume`` and the slice's index inside the file, 0 for a 2D image). A query input is a set
when it is

- a folder whose image files are all 2D formats (PNG, JPEG, TIFF, NPY, NPZ; searched recursively),
- a glob pattern (quoted, so that the shell leaves it to us), e.g. ``'samples/*.png'``, or
- one ``.npy``/``.npz`` file (an N×H×W stack is a set of N samples).

Anything else (volume files, DICOM folders, folders holding any volume file, a single PNG) stays a
volume input, audited as before. Array axes: see :mod:`arrays` (axis 0 = image rows).
"""

from __future__ import annotations

import glob
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .arrays import ARRAY_SUFFIXES, array_file_slices, as_stack, read_array_file
from .errors import UserError
from .volumes import inspect_input, is_volume_file

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
SET_SUFFIXES = PICTURE_SUFFIXES + ARRAY_SUFFIXES
_GLOB_CHARACTERS = "*?["
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class ImageSet:
    """A set of 2D image files in audit order, with the number of slices of each (from headers)."""

    name: str
    files: tuple[Path, ...]
    counts: tuple[int, ...]

    @property
    def n_slices(self) -> int:
        """Slices in the whole set."""
        return sum(self.counts)


def _is_set_file(path: Path) -> bool:
    return path.suffix.lower() in SET_SUFFIXES


def _folder_files(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.rglob("*") if p.is_file() and (is_volume_file(p) or _is_set_file(p)))
    except OSError as exc:
        raise UserError(f"cannot list folder {folder}: {exc.strerror or exc}") from None


def _is_glob(raw: str) -> bool:
    return any(c in raw for c in _GLOB_CHARACTERS) and not Path(raw).exists()


def is_set_input(raw: str | Path) -> bool:
    """True when a query argument is a set (see the module docstring), from names only."""
    raw = str(raw)
    if _is_glob(raw):
        return True
    path = Path(raw)
    if path.is_file():
        return path.suffix.lower() in ARRAY_SUFFIXES
    if path.is_dir():
        files = _folder_files(path)
        return bool(files) and all(_is_set_file(p) for p in files)
    return False


def _png_header_ok(path: Path) -> bool:
    """True when the file starts like a PNG image with a non-empty IHDR (a 2D image); a cheap check
    for sets of thousands of files (ITK's header reader costs about 1 ms a file)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(24)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(head) < 24 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return False
    width, height = struct.unpack(">II", head[16:24])
    return width > 0 and height > 0


def _slices_in(path: Path) -> int:
    if path.suffix.lower() in ARRAY_SUFFIXES:
        return array_file_slices(path)
    if path.suffix.lower() == ".png" and _png_header_ok(path):
        return 1
    info = inspect_input(path)
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
        files = [path] if path.is_file() else _folder_files(path)
        if not files:
            raise UserError(f"no readable 2D images in folder {path} (expected PNG/JPEG/TIFF/NPY/NPZ files)")
    name = raw.rstrip("/\\") or raw
    return ImageSet(name, tuple(files), tuple(_slices_in(p) for p in files))


def read_slices(path: Path) -> np.ndarray:
    """The 2D slices [N, H, W] float32 of one file of a set: N = 1 for a 2D image, the pages of a
    multi-page TIFF; colour becomes grey (the mean of R, G and B, as for volumes)."""
    if path.suffix.lower() in ARRAY_SUFFIXES:
        return read_array_file(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = " ".join(str(exc).split()[-12:])
        raise UserError(f"cannot read {path} as an image ({reason}); is the file complete?") from None
    array = sitk.GetArrayViewFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = array[..., :3].mean(axis=-1, dtype=np.float32)
    return as_stack(array, str(path))


def iter_set_slices(image_set: ImageSet) -> Iterator[tuple[Path, int, np.ndarray]]:
    """(file, slice index in the file, slice [H, W]) for every slice of the set, in order; one file
    is read at a time."""
    for path in image_set.files:
        for k, slice2d in enumerate(read_slices(path)):
            yield path, k, slice2d
