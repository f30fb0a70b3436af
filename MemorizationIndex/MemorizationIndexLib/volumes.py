"""Reading MRI volumes and cutting them into 2D slices along an axis chosen in patient space.

Every input goes through two stages. :func:`validate_inputs` (or :func:`inspect_input` for one
path) is cheap: it reads headers only and refuses a path that is missing, unreadable, not an
image, of an unsupported pixel type or dimension, a 4D image without a valid ``volume_index``,
or a DICOM folder with several series and no ``series``. :func:`read_image` then reads the
pixels, checks that a NIfTI file is complete (ITK reads a truncated NIfTI silently, padding the
missing voxels), and returns a 3D float32 scalar image. Only one image is held at a time by the
audit, so memory is bounded by the largest single volume, not by the number of inputs.
"""

from __future__ import annotations

import gzip
import itertools
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .arrays import grey_from_channels, nonfinite_as_background
from .errors import UserError, itk_reason

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
_COMPLEX_PIXEL_IDS = {sitk.sitkComplexFloat32, sitk.sitkComplexFloat64}
_GZIP_CHUNK = 1 << 20

sitk.ProcessObject.SetGlobalWarningDisplay(False)


@dataclass(frozen=True)
class InputInfo:
    """What the header of one input says (no pixels read)."""

    path: Path
    size: tuple[int, ...]
    components: int
    pixel_type: str
    series: str | None = None

    @property
    def dimension(self) -> int:
        """Number of image dimensions in the file (2, 3 or 4)."""
        return len(self.size)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def is_volume_file(path: Path) -> bool:
    """True when the file name has a suffix this tool reads."""
    return _suffix(path) in _IMAGE_IO_BY_SUFFIX


def _check_exists(path: Path) -> None:
    try:
        exists = path.exists()
    except OSError as exc:
        raise UserError(f"cannot access {path}: {exc.strerror or exc}") from None
    if not exists:
        raise UserError(f"input not found: {path} (check the path)")
    if not (path.is_file() or path.is_dir()):
        raise UserError(f"{path} is neither a regular file nor a folder; give an image file or a DICOM folder")
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        raise UserError(f"cannot read {path}: permission denied")


def listed_files(folder: Path) -> list[Path]:
    """The files below a folder, sorted, that may be inputs. Not inputs: hidden files (a name starting with "."
    anywhere below the folder: Jupyter's .ipynb_checkpoints copies, macOS's ._ metadata files), and what this tool
    wrote there: an index folder, and an audit's output files (``audit --out samples/audit``), whose arrays are no
    samples."""
    try:
        files = [p for p in folder.rglob("*") if p.is_file()]
        visible = [p for p in files if not any(name.startswith(".") for name in p.relative_to(folder).parts)]
        written = _written_by_this_tool({p.parent for p in visible})
        return sorted(p for p in visible if p not in written and not any(d in written for d in p.parents))
    except OSError as exc:
        raise UserError(f"cannot list folder {folder}: {exc.strerror or exc} ({exc.filename or folder})") from None


def _written_by_this_tool(folders: set[Path]) -> set[Path]:
    """Among ``folders``, the index folders, and the audit output files in audit output folders."""
    from .audit_output import is_audit_folder, written_audit_files
    from .reference_index import is_index_folder

    written: set[Path] = set()
    for folder in folders:
        if is_index_folder(folder):
            written.add(folder)
        elif is_audit_folder(folder):
            written.update(written_audit_files(folder))
    return written


def expand_inputs(paths: list[str] | list[Path]) -> list[Path]:
    """Expand user paths: files stay, folders become their volume files (sorted), or one DICOM series.

    A folder holding image files by suffix yields those files; a folder holding DICOM files
    without such suffixes is itself one input (a DICOM series folder).
    """
    result: list[Path] = []
    for raw in paths:
        path = Path(raw)
        _check_exists(path)
        if path.is_file():
            result.append(path)
            continue
        files = [p for p in listed_files(path) if is_volume_file(p) and _suffix(p) != ".dcm"]
        if files:
            result.extend(files)
        elif _series_ids(path):
            result.append(path)
        else:
            raise UserError(
                f"no readable volumes or 2D images in folder {path} (expected NIfTI/NRRD/MHA files, a DICOM series, "
                "or PNG/JPEG/TIFF/NPY/NPZ files)"
            )
    if not result:
        raise UserError("no input volumes given")
    return result


def _series_ids(folder: Path) -> list[str]:
    try:
        return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    except RuntimeError:
        return []


def dicom_file_series(folder: Path) -> dict[Path, str]:
    """{file: its series UID} of the DICOM files directly in a folder that holds two series or more (empty
    otherwise: one header read per file, where GDCM's file lists rescan the folder once per series)."""
    if len(_series_ids(folder)) < 2:
        return {}
    series = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.SetImageIO("GDCMImageIO")
        try:
            reader.ReadImageInformation()
            series[path] = reader.GetMetaData("0020|000e").strip()
        except RuntimeError:
            continue  # not a DICOM file, or no series UID
    return series


def _choose_series(folder: Path, series: str | None) -> tuple[str, list[str]]:
    series_ids = _series_ids(folder)
    if not series_ids:
        raise UserError(f"no DICOM series found in folder {folder}")
    if series is None and len(series_ids) > 1:
        raise UserError(
            f"folder {folder} holds {len(series_ids)} DICOM series ({', '.join(series_ids)}); pick one with --series"
        )
    chosen = series if series is not None else series_ids[0]
    if chosen not in series_ids:
        raise UserError(f"DICOM series {chosen} is not in {folder}; available: {', '.join(series_ids)}")
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), chosen))
    if not files:
        raise UserError(f"DICOM series {chosen} in {folder} has no readable files")
    return chosen, files


def _read_dicom_folder(folder: Path, series: str | None) -> sitk.Image:
    chosen, files = _choose_series(folder, series)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise UserError(f"cannot read DICOM series {chosen} in {folder}: {itk_reason(exc)}") from None


def _file_reader(path: Path, *, dicom: bool = False) -> sitk.ImageFileReader:
    """A reader of one file by its suffix (``dicom``: a DICOM file whatever its name)."""
    io_name = "GDCMImageIO" if dicom else _IMAGE_IO_BY_SUFFIX.get(_suffix(path))
    if io_name is None:
        raise UserError(
            f"{path} is not a supported image file (use NIfTI, NRRD, MHA/MHD, PNG/TIFF/JPEG or a DICOM folder)"
        )
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO(io_name)
    return reader


def _read_file(path: Path) -> sitk.Image:
    reader = _file_reader(path)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise UserError(
            f"cannot read {path} as an image ({itk_reason(exc)}); is the file complete and of that format?"
        ) from None


def _read_complete_file(path: Path) -> sitk.Image:
    """:func:`_read_file` with the NIfTI completeness check running beside it (ITK's reader
    releases the GIL, so the two decompressions of a .nii.gz overlap)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        check = pool.submit(_check_nifti_complete, path)
        try:
            image = _read_file(path)
        except UserError:
            check.result()  # a truncated file is reported as such first
            raise
        check.result()
    return image


# --- NIfTI completeness (ITK pads a truncated NIfTI with zeros instead of failing) ---------------


def _nifti_header_bytes(head: bytes) -> tuple[int, int] | None:
    """(vox_offset, data bytes) from a NIfTI-1/-2 header, or None when it is not one."""
    for endian in ("<", ">"):
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", head[40:56])
            bitpix = struct.unpack(endian + "h", head[72:74])[0]
            vox_offset = int(struct.unpack(endian + "f", head[108:112])[0])
            break
        if len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            dims = struct.unpack(endian + "8q", head[16:80])
            bitpix = struct.unpack(endian + "h", head[14:16])[0]
            vox_offset = int(struct.unpack(endian + "q", head[168:176])[0])
            break
    else:
        return None
    ndim = dims[0]
    if not 1 <= ndim <= 7 or bitpix <= 0 or any(d < 0 for d in dims[1 : ndim + 1]):
        return None
    n_voxels = int(np.prod([max(int(d), 1) for d in dims[1 : ndim + 1]], dtype=np.int64))
    return vox_offset, n_voxels * bitpix // 8


def _gzip_length(path: Path) -> int:
    """Uncompressed length of a gzip file; UserError when it is truncated or corrupt."""
    total = 0
    try:
        with gzip.open(path, "rb") as handle:
            while chunk := handle.read(_GZIP_CHUNK):
                total += len(chunk)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise UserError(
            f"{path} is truncated or corrupt ({type(exc).__name__}: {str(exc) or 'compressed data ended early'}); "
            "copy the file again"
        ) from None
    return total


def _check_nifti_complete(path: Path) -> None:
    suffix = _suffix(path)
    if suffix not in (".nii", ".nii.gz", ".hdr", ".img"):
        return
    header_path = path.with_suffix(".hdr") if suffix == ".img" else path
    try:
        opener = gzip.open if suffix == ".nii.gz" else open
        with opener(header_path, "rb") as handle:
            head = handle.read(540)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise UserError(
            f"cannot read the NIfTI header of {path} ({type(exc).__name__}); is the file complete and of that format?"
        ) from None
    layout = _nifti_header_bytes(head)
    if layout is None:
        return  # not a NIfTI header: ITK reports the problem when reading
    vox_offset, data_bytes = layout
    if suffix == ".nii.gz":
        available = _gzip_length(path)
    elif suffix == ".nii":
        available = path.stat().st_size
    else:
        data_path = path.with_suffix(".img")
        available = data_path.stat().st_size if data_path.is_file() else 0
        vox_offset = 0 if suffix in (".hdr", ".img") and vox_offset < 0 else vox_offset
    needed = (vox_offset if suffix in (".nii", ".nii.gz") else max(vox_offset, 0)) + data_bytes
    if available < needed:
        raise UserError(
            f"{path} is truncated: its header needs {needed} bytes of image data but the file has {available}; copy "
            "the file again"
        )


# --- header-level validation ------------------------------------------------------------------


def _check_volume_index(path: Path, size: tuple[int, ...], volume_index: int | None) -> None:
    if len(size) == 4 and size[3] > 1:
        if volume_index is None and size[0] == 1:
            raise UserError(
                f"{path} is a 4D image of {size[3]} volumes of 1 x {size[1]} x {size[2]} voxels: a channel-first "
                "array (1 x H x W x D) saved as NIfTI? save it without its channel axis (array[0])"
            )
        if volume_index is None:
            raise UserError(
                f"{path} is a 4D image with {size[3]} volumes; choose one with --volume-index 0..{size[3] - 1}"
            )
        if not 0 <= volume_index < size[3]:
            raise UserError(f"--volume-index {volume_index} is out of range for {path} (0..{size[3] - 1})")
    elif volume_index not in (None, 0):
        raise UserError(
            f"--volume-index {volume_index} was given but {path} holds a single volume; drop --volume-index or use 0"
        )


def _check_header(
    path: Path, size: tuple[int, ...], components: int, pixel_id: int, pixel_type: str, volume_index: int | None
) -> None:
    if len(size) not in (2, 3, 4):
        raise UserError(f"{path} has {len(size)} dimensions; expected a 2D, 3D or 4D image")
    if any(s < 1 for s in size):
        raise UserError(f"{path} is empty (size {'x'.join(map(str, size))})")
    if pixel_id in _COMPLEX_PIXEL_IDS or "complex" in pixel_type.lower():
        raise UserError(f"{path} has complex pixels ({pixel_type}); save the magnitude image instead")
    if components not in (1, 3, 4):
        raise UserError(
            f"{path} has {components} components per pixel; expected grey (1), RGB (3) or RGBA (4) (save one channel "
            "or the magnitude)"
        )
    _check_volume_index(path, size, volume_index)


def inspect_input(
    path: str | Path, *, series: str | None = None, volume_index: int | None = None, dicom: bool = False
) -> InputInfo:
    """Check one input from its header only (cheap); UserError says what is wrong with it. ``dicom``: a
    file is read as DICOM whatever its name (a file of a folder of DICOM samples)."""
    path = Path(path)
    _check_exists(path)
    if path.is_dir():
        chosen, files = _choose_series(path, series)
        reader = sitk.ImageFileReader()
        reader.SetFileName(files[0])
        reader.SetImageIO("GDCMImageIO")
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise UserError(f"cannot read DICOM series {chosen} in {path}: {itk_reason(exc)}") from None
        size = tuple(reader.GetSize()[:2]) + (len(files),)
        components, pixel_id = reader.GetNumberOfComponents(), reader.GetPixelID()
        pixel_type = sitk.GetPixelIDValueAsString(pixel_id)
        _check_header(path, size, components, pixel_id, pixel_type, volume_index)
        return InputInfo(path, size, components, pixel_type, chosen)
    reader = _file_reader(path, dicom=dicom and _suffix(path) not in _IMAGE_IO_BY_SUFFIX)
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise UserError(
            f"cannot read {path} as an image ({itk_reason(exc)}); is the file complete and of that format?"
        ) from None
    size = tuple(int(s) for s in reader.GetSize())
    pixel_id = reader.GetPixelID()
    pixel_type = sitk.GetPixelIDValueAsString(pixel_id)
    _check_header(path, size, reader.GetNumberOfComponents(), pixel_id, pixel_type, volume_index)
    return InputInfo(path, size, reader.GetNumberOfComponents(), pixel_type)


def validate_inputs(
    paths: list[str] | list[Path], *, series: str | None = None, volume_index: int | None = None
) -> list[Path]:
    """Expand user paths and check every input's header before any work; returns the inputs."""
    inputs = expand_inputs(list(paths))
    for path in inputs:
        inspect_input(path, series=series, volume_index=volume_index)
    return inputs


# --- reading pixels ---------------------------------------------------------------------------


def _to_scalar_3d(image: sitk.Image, path: Path, volume_index: int | None) -> sitk.Image:
    if image.GetNumberOfComponentsPerPixel() > 1:  # RGB(A): grey as pictures and arrays make it
        grey = sitk.GetImageFromArray(grey_from_channels(sitk.GetArrayViewFromImage(image)))
        grey.CopyInformation(image)
        image = grey
    dimension = image.GetDimension()
    if dimension == 4:
        size = image.GetSize()
        _check_volume_index(path, tuple(size), volume_index)
        image = sitk.Extract(image, [size[0], size[1], size[2], 0], [0, 0, 0, volume_index or 0])
    elif dimension == 2:
        _check_volume_index(path, tuple(image.GetSize()), volume_index)
        image = sitk.JoinSeries([image])
    elif dimension == 3:
        _check_volume_index(path, tuple(image.GetSize()), volume_index)
    else:
        raise UserError(f"{path} has {dimension} dimensions; expected a 2D, 3D or 4D image")
    return image


def read_image(path: str | Path, *, series: str | None = None, volume_index: int | None = None) -> sitk.Image:
    """Read a NIfTI/NRRD/MHA file or DICOM series folder as a 3D float32 scalar image.

    2D images become one slice; RGB becomes grey (mean of the channels); 4D needs
    ``volume_index``; any pixel type is converted to float32 (values beyond float32's range
    become Inf); NaN/Inf voxels become the volume's finite minimum (background). A truncated
    NIfTI file is refused.
    """
    path = Path(path)
    _check_exists(path)
    if path.is_dir():
        image = _read_dicom_folder(path, series)
    else:
        image = _read_complete_file(path)
    if image.GetPixelID() in _COMPLEX_PIXEL_IDS:
        raise UserError(
            f"{path} has complex pixels ({image.GetPixelIDTypeAsString()}); save the magnitude image instead"
        )
    if image.GetNumberOfComponentsPerPixel() not in (1, 3, 4):
        raise UserError(
            f"{path} has {image.GetNumberOfComponentsPerPixel()} components per pixel; expected grey (1), RGB (3) or "
            "RGBA (4) (save one channel or the magnitude)"
        )
    if any(s < 1 for s in image.GetSize()):
        raise UserError(f"{path} is empty (size {'x'.join(map(str, image.GetSize()))})")
    try:
        image = sitk.Cast(_to_scalar_3d(image, path, volume_index), sitk.sitkFloat32)
    except RuntimeError as exc:
        raise UserError(
            f"cannot convert {path} ({image.GetPixelIDTypeAsString()}) to a float32 scalar volume: {itk_reason(exc)}"
        ) from None
    clean = nonfinite_as_background(sitk.GetArrayViewFromImage(image))
    if clean is not None:
        fixed = sitk.GetImageFromArray(clean)
        fixed.CopyInformation(image)
        image = fixed
    return image


# --- axes ---------------------------------------------------------------------------------------


def _patient_axis_of_index_axes(image: sitk.Image) -> tuple[int, int, int]:
    """Patient axis (0=L-R, 1=A-P, 2=S-I) of each index axis (i, j, k): a one-to-one assignment.

    It maximises the summed |direction cosines|, so even strongly oblique volumes map their three
    index axes to three different planes (a per-axis argmax could give two axes the same plane).
    """
    direction = np.abs(np.asarray(image.GetDirection(), dtype=float).reshape(3, 3))
    best, best_score = (0, 1, 2), -1.0
    for perm in itertools.permutations(range(3)):
        score = sum(direction[perm[i], i] for i in range(3))
        if score > best_score + 1e-9:
            best, best_score = perm, score
    return best


def _index_axis_planes(image: sitk.Image) -> list[str]:
    return [_PLANE_OF_PATIENT_AXIS[p] for p in _patient_axis_of_index_axes(image)]


def has_no_geometry(image: sitk.Image) -> bool:
    """Whether the header carries no geometry: unit spacing, zero origin and axes along the patient's (signs aside),
    as arrays saved without it are written (nibabel with an identity affine, SimpleITK's ``GetImageFromArray``)."""
    direction = np.abs(np.asarray(image.GetDirection(), dtype=float).reshape(3, 3))
    return (
        np.allclose(image.GetSpacing(), 1.0)
        and np.allclose(image.GetOrigin(), 0.0)
        and np.allclose(direction, np.eye(3))
    )


def _thin_axis(image: sitk.Image) -> int | None:
    """The numpy axis along which the image is one voxel thick, when exactly one is (a 2D image)."""
    thin = [i for i, n in enumerate(image.GetSize()) if n == 1]
    return 2 - thin[0] if len(thin) == 1 else None


def audit_cut(image: sitk.Image, axis: str, reference_plane: str, reference_axis: int | None) -> tuple[int, bool]:
    """(numpy axis to cut an audited volume along, whether it was chosen in array space). A plane ``axis`` is cut as
    asked (:func:`resolve_axis`). With ``auto``, a volume whose spacing names one thickest axis is cut along it, as
    the training volumes were; one without (a copy resampled to isotropic voxels) is cut in ``reference_plane``, the
    plane of the index's slices, or, when its header carries no geometry (:func:`has_no_geometry`), along
    ``reference_axis``, the numpy axis they were cut along (its array is all such a volume has)."""
    if axis != "auto" or _thin_axis(image) is not None or len(_thickest_index_axes(image)) == 1:
        return resolve_axis(image, axis), False
    if reference_axis is not None and has_no_geometry(image):
        return reference_axis, True
    return resolve_axis(image, reference_plane), False


def _thickest_index_axes(image: sitk.Image) -> list[int]:
    """The index axes (0=i, 1=j, 2=k) of the largest spacing (within 1%), of more than one voxel."""
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    return [i for i in range(3) if spacing[i] >= spacing.max() * 0.99 and image.GetSize()[i] > 1]


def resolve_axis(image: sitk.Image, axis: str) -> int:
    """Numpy axis (0=k, 1=j, 2=i) of the image array to cut slices along.

    ``axial``/``coronal``/``sagittal`` pick the index axis assigned to that patient direction;
    ``auto`` picks the axis with the largest spacing (the through-plane axis), ties going to the
    axial one, then to k. An image one voxel thick along exactly one axis (e.g. a 2D image) is
    always cut along that axis: it is one slice, whatever ``axis`` says.
    """
    if axis not in AXIS_CHOICES:
        raise UserError(f"unknown axis {axis!r}; use one of {', '.join(AXIS_CHOICES)}")
    thin = _thin_axis(image)
    if thin is not None:
        return thin
    planes = _index_axis_planes(image)
    if axis == "auto":
        candidates = _thickest_index_axes(image)
        if not candidates:
            candidates = [2]
        index_axis = next((i for i in candidates if planes[i] == "axial"), max(candidates))
        return 2 - index_axis
    return 2 - planes.index(axis)


def axis_name(image: sitk.Image, array_axis: int) -> str:
    """Patient plane (axial/coronal/sagittal) of slices cut along ``array_axis``."""
    return _index_axis_planes(image)[2 - array_axis]


def image_slices(image: sitk.Image, array_axis: int) -> np.ndarray:
    """All slices [n, h, w] (float32) of the image cut along ``array_axis`` (NaN/Inf -> background).

    One copy of the voxels: slice k is ``np.moveaxis(array, array_axis, 0)[k]``.
    """
    array = sitk.GetArrayFromImage(image)
    if array.dtype != np.float32:
        array = array.astype(np.float32)
    clean = nonfinite_as_background(array)
    if clean is not None:
        array = clean
    return np.moveaxis(array, array_axis, 0)
