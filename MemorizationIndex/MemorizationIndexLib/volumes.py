"""Reading MRI volumes and cutting them into 2D slices along an axis chosen in patient space."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import UserError

AXIS_CHOICES = ("auto", "axial", "coronal", "sagittal")
# Dominant patient (LPS) direction of an index axis -> the plane the slices lie in.
_PLANE_OF_PATIENT_AXIS = {0: "sagittal", 1: "coronal", 2: "axial"}
_IMAGE_IO_BY_SUFFIX = {
    ".nii": "NiftiImageIO",
    ".nii.gz": "NiftiImageIO",
    ".hdr": "NiftiImageIO",
    ".img": "NiftiImageIO",
    ".nrrd": "NrrdImageIO",
    ".nhdr": "NrrdImageIO",
    ".mha": "MetaImageIO",
    ".mhd": "MetaImageIO",
    ".dcm": "GDCMImageIO",
    ".png": "PNGImageIO",
    ".jpg": "JPEGImageIO",
    ".jpeg": "JPEGImageIO",
    ".tif": "TIFFImageIO",
    ".tiff": "TIFFImageIO",
}
VOLUME_SUFFIXES = tuple(_IMAGE_IO_BY_SUFFIX)

sitk.ProcessObject.SetGlobalWarningDisplay(False)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def is_volume_file(path: Path) -> bool:
    """True when the file name has a suffix this tool reads."""
    return _suffix(path) in _IMAGE_IO_BY_SUFFIX


def expand_inputs(paths: list[str] | list[Path]) -> list[Path]:
    """Expand user paths: files stay, folders become their volume files (sorted), or one DICOM series.

    A folder holding image files by suffix yields those files; a folder holding DICOM files
    without such suffixes is itself one input (a DICOM series folder).
    """
    result: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise UserError(f"input not found: {path} (check the path)")
        if path.is_file():
            result.append(path)
            continue
        files = sorted(p for p in path.rglob("*") if p.is_file() and is_volume_file(p) and _suffix(p) != ".dcm")
        if files:
            result.extend(files)
        elif sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)):
            result.append(path)
        else:
            raise UserError(f"no readable volumes in folder {path} (expected NIfTI/NRRD/MHA files or a DICOM series)")
    return result


def _read_dicom_folder(folder: Path, series: str | None) -> sitk.Image:
    series_ids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    if not series_ids:
        raise UserError(f"no DICOM series found in folder {folder}")
    if series is None and len(series_ids) > 1:
        raise UserError(f"folder {folder} holds {len(series_ids)} DICOM series ({', '.join(series_ids)}); pick one with --series")
    chosen = series if series is not None else series_ids[0]
    if chosen not in series_ids:
        raise UserError(f"DICOM series {chosen} is not in {folder}; available: {', '.join(series_ids)}")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), chosen))
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise UserError(f"cannot read DICOM series {chosen} in {folder}: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _read_file(path: Path) -> sitk.Image:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    io_name = _IMAGE_IO_BY_SUFFIX.get(_suffix(path))
    if io_name is None:
        raise UserError(f"{path} is not a supported image file (use NIfTI, NRRD, MHA/MHD or a DICOM folder)")
    reader.SetImageIO(io_name)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise UserError(f"cannot read {path} as an image ({_first_line(exc)}); is the file complete and of that format?") from None


def _to_scalar_3d(image: sitk.Image, path: Path, volume_index: int | None) -> sitk.Image:
    if image.GetNumberOfComponentsPerPixel() > 1:
        # RGB(A) or vector pixels: use the mean of the first three components as intensity.
        channels = [sitk.VectorIndexSelectionCast(image, c, sitk.sitkFloat32) for c in range(min(3, image.GetNumberOfComponentsPerPixel()))]
        image = sum(channels[1:], channels[0]) / float(len(channels))
    dimension = image.GetDimension()
    if dimension == 4:
        size = image.GetSize()
        if size[3] == 1:
            volume_index = 0
        if volume_index is None:
            raise UserError(f"{path} is a 4D image with {size[3]} volumes; choose one with --volume-index 0..{size[3] - 1}")
        if not 0 <= volume_index < size[3]:
            raise UserError(f"--volume-index {volume_index} is out of range for {path} (0..{size[3] - 1})")
        image = sitk.Extract(image, [size[0], size[1], size[2], 0], [0, 0, 0, volume_index])
    elif dimension == 2:
        image = sitk.JoinSeries([image])
    elif dimension != 3:
        raise UserError(f"{path} has {dimension} dimensions; expected a 2D, 3D or 4D image")
    return image


def read_image(path: str | Path, *, series: str | None = None, volume_index: int | None = None) -> sitk.Image:
    """Read a NIfTI/NRRD/MHA file or DICOM series folder as a 3D float32 scalar image.

    2D images become one slice; RGB becomes grey; 4D needs ``volume_index``; NaN/Inf voxels
    become 0.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"input not found: {path} (check the path)")
    image = _read_dicom_folder(path, series) if path.is_dir() else _read_file(path)
    image = sitk.Cast(_to_scalar_3d(image, path, volume_index), sitk.sitkFloat32)
    array = sitk.GetArrayViewFromImage(image)
    if not np.isfinite(array).all():
        clean = np.nan_to_num(sitk.GetArrayFromImage(image), nan=0.0, posinf=0.0, neginf=0.0)
        fixed = sitk.GetImageFromArray(clean)
        fixed.CopyInformation(image)
        image = fixed
    return image


def _index_axis_planes(image: sitk.Image) -> list[str]:
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    return [_PLANE_OF_PATIENT_AXIS[int(np.argmax(np.abs(direction[:, i])))] for i in range(3)]


def resolve_axis(image: sitk.Image, axis: str) -> int:
    """Numpy axis (0=k, 1=j, 2=i) of the image array to cut slices along.

    ``axial``/``coronal``/``sagittal`` pick the index axis closest to that patient direction;
    ``auto`` picks the axis with the largest spacing (the through-plane axis), ties going to the
    axial one, then to k.
    """
    if axis not in AXIS_CHOICES:
        raise UserError(f"unknown axis {axis!r}; use one of {', '.join(AXIS_CHOICES)}")
    planes = _index_axis_planes(image)
    if axis == "auto":
        spacing = np.asarray(image.GetSpacing(), dtype=float)
        candidates = [i for i in range(3) if spacing[i] >= spacing.max() * 0.99 and image.GetSize()[i] > 1]
        if not candidates:
            candidates = [2]
        index_axis = next((i for i in candidates if planes[i] == "axial"), max(candidates))
        if image.GetSize()[2] == 1:
            index_axis = 2
        return 2 - index_axis
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    patient_axis = {"sagittal": 0, "coronal": 1, "axial": 2}[axis]
    index_axis = int(np.argmax(np.abs(direction[patient_axis, :])))
    return 2 - index_axis


def axis_name(image: sitk.Image, array_axis: int) -> str:
    """Patient plane (axial/coronal/sagittal) of slices cut along ``array_axis``."""
    return _index_axis_planes(image)[2 - array_axis]


def image_slices(image: sitk.Image, array_axis: int) -> np.ndarray:
    """All slices [n, h, w] (float32) of the image cut along ``array_axis``."""
    return np.ascontiguousarray(np.moveaxis(sitk.GetArrayFromImage(image).astype(np.float32, copy=False), array_axis, 0))
