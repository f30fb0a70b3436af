"""NumPy arrays as stacks of 2D slices: in-memory batches and ``.npy``/``.npz`` files.

Axis convention for a 2D slice ``a[r, c]``: axis 0 is the image row (top to bottom), axis 1 the
column (left to right), as ``SimpleITK.GetArrayFromImage`` or PIL give a PNG. A slice taken from a
NIfTI with nibabel (``get_fdata()[:, :, k]``, axes i, j) is the transpose of what SimpleITK shows
for the same slice: transpose it (``a.T``) before saving if the two must match. A stack holds
slices along its first axis: N×H×W, N×1×H×W or N×H×W×1 (channel axis of length 1), or colour
N×H×W×3/4 (channels last, as guided-diffusion's ``samples_*.npz`` hold uint8 RGB) or N×3×H×W
(channels first, as a PyTorch batch); colour becomes grey, as in pictures and volumes. Four channels whose
fourth holds negative values are refused: no alpha channel is negative, and latents (decode them first) often are.

Files are read with ``allow_pickle=False``; any real dtype (bool, integer, float) is accepted and
converted to float32; NaN/Inf values become the array's finite minimum (background), as in volumes.
An ``.npz`` holds one array of images, alone or beside one-dimensional arrays (class labels).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError, one_line

ARRAY_SUFFIXES = (".npy", ".npz")
_REAL_KINDS = "biuf"  # bool, signed, unsigned, floating
COLOUR_CHANNELS = (3, 4)  # RGB, RGBA


@dataclass(frozen=True)
class StackLayout:
    """How an array holds its slices: N, H, W and the axis of its colour channels (None: grey)."""

    n: int
    h: int
    w: int
    channel_axis: int | None = None


def grey_from_channels(array: np.ndarray) -> np.ndarray:
    """Pixels with channels on the last axis as grey float32: the mean of R, G and B when there are at
    least three (alpha dropped), else the first channel (grey and alpha)."""
    if array.shape[-1] >= 3:
        return array[..., :3].mean(axis=-1, dtype=np.float32)
    return np.asarray(array[..., 0], dtype=np.float32)


def nonfinite_as_background(array: np.ndarray) -> np.ndarray | None:
    """A float32 copy with NaN/Inf replaced by the finite minimum (the background; 0 when no value is finite),
    or None when every value is finite."""
    finite = np.isfinite(array)
    if finite.all():
        return None
    fill = float(array[finite].min()) if finite.any() else 0.0
    clean = np.array(array, dtype=np.float32, copy=True)
    clean[~finite] = fill
    return clean


def _is_colour_image(shape: tuple[int, ...]) -> bool:
    """H×W×3 or H×W×4 with both sides longer than a channel axis (a slice 3 or 4 pixels wide is no image)."""
    return len(shape) == 3 and shape[2] in COLOUR_CHANNELS and min(shape[:2]) > max(COLOUR_CHANNELS)


def stack_layout(shape: tuple[int, ...], dtype: np.dtype, what: str, *, allow_2d: bool) -> StackLayout:
    """The layout of an array of this shape and dtype read as slices; UserError names what is wrong.

    Accepted: H×W and one colour image H×W×3/4 (when ``allow_2d``), N×H×W, N×1×H×W, N×H×W×1, and colour
    stacks N×H×W×3/4 (channels last, as image libraries and guided-diffusion's sample files hold them) or
    N×3×H×W (channels first, as PyTorch holds them), of a real dtype.
    """
    if dtype.hasobject:
        raise UserError(f"{what} holds Python objects (dtype {dtype}); save a numeric array (e.g. float32)")
    if dtype.kind == "c":
        raise UserError(f"{what} is complex ({dtype}); save the magnitude (np.abs) instead")
    if dtype.kind not in _REAL_KINDS or dtype.fields is not None:
        raise UserError(f"{what} has dtype {dtype}; expected a real numeric array (bool, integer or float)")
    dims = "x".join(map(str, shape)) or "scalar"
    expected = ("HxW, " if allow_2d else "") + "NxHxW, Nx1xHxW, NxHxWx1, or colour NxHxWx3/4 or Nx3xHxW"
    if len(shape) == 2 and allow_2d:
        layout = StackLayout(1, *shape)
    elif allow_2d and _is_colour_image(shape):
        layout = StackLayout(1, shape[0], shape[1], channel_axis=2)
    elif len(shape) == 3:
        layout = StackLayout(*shape)
    elif len(shape) == 4 and shape[1] == 1:
        layout = StackLayout(shape[0], shape[2], shape[3])
    elif len(shape) == 4 and shape[3] == 1:
        layout = StackLayout(*shape[:3])
    elif len(shape) == 4 and shape[3] in COLOUR_CHANNELS:
        layout = StackLayout(*shape[:3], channel_axis=3)
    elif len(shape) == 4 and shape[1] == 3:
        layout = StackLayout(shape[0], shape[2], shape[3], channel_axis=1)
    elif len(shape) == 4:
        raise UserError(
            f"{what} has shape {dims}: {shape[1]} channels first is not an image (latents? decode them first); "
            f"expected {expected}"
        )
    else:
        raise UserError(f"{what} has shape {dims}; expected {expected}")
    if min(layout.n, layout.h, layout.w) < 1:
        raise UserError(f"{what} is empty (shape {dims})")
    return layout


def as_stack(array: np.ndarray, what: str, *, allow_2d: bool = True) -> np.ndarray:
    """A real array as float32 slices [N, H, W] (colour -> grey, :func:`grey_from_channels`; NaN/Inf ->
    finite minimum); UserError when it is not one (see :func:`stack_layout`) or has no finite value."""
    layout = stack_layout(tuple(array.shape), array.dtype, what, allow_2d=allow_2d)
    if layout.channel_axis is not None:
        channels_last = np.moveaxis(np.asarray(array), layout.channel_axis, -1)
        if channels_last.shape[-1] == 4 and channels_last[..., 3].min() < 0:
            raise UserError(
                f"{what} has 4 channels whose fourth holds negative values, so it is no alpha channel "
                "(latents? decode them first); expected RGB or RGBA images"
            )
        array = grey_from_channels(channels_last)
    stack = np.asarray(array, dtype=np.float32).reshape(layout.n, layout.h, layout.w)
    clean = nonfinite_as_background(stack)
    if clean is not None:
        if not np.isfinite(stack).any():
            raise UserError(f"{what} has no finite value (all NaN or Inf)")
        stack = clean
    return stack


def _npy_header(handle, what: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from the header of an open .npy stream."""
    try:
        version = np.lib.format.read_magic(handle)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(handle)
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise UserError(f"{what} is not a readable .npy array ({one_line(exc)})") from None
    return tuple(int(s) for s in shape), np.dtype(dtype)


def _npz_images(archive: zipfile.ZipFile, path: Path) -> tuple[str, tuple[int, ...], np.dtype]:
    """(key, shape, dtype) of the array of an .npz archive that holds the images: its only array, or its
    only array of two or more dimensions beside one-dimensional ones (class labels, as guided-diffusion's
    class-conditional sample files hold beside the images)."""
    members = [m for m in archive.namelist() if m.endswith(".npy")]
    headers = {}
    for member in members:
        with archive.open(member) as handle:
            headers[member] = _npy_header(handle, f"{path} ({member[:-4]})")
    images = [m for m in members if len(headers[m][0]) >= 2] if len(members) > 1 else members
    if len(images) != 1:
        names = ", ".join(m[:-4] for m in images or members) or "none"
        raise UserError(
            f"{path} holds {len(images)} arrays of images ({names}); save one per .npz file "
            "(one-dimensional arrays such as class labels may stay beside it)"
        )
    return images[0][:-4], *headers[images[0]]


def _header(path: Path) -> tuple[str | None, tuple[int, ...], np.dtype]:
    """(.npz key or None, shape, dtype) of the images of a .npy/.npz file, from its headers only."""
    try:
        if path.suffix.lower() == ".npz":
            with zipfile.ZipFile(path) as archive:
                return _npz_images(archive, path)
        with open(path, "rb") as handle:
            return None, *_npy_header(handle, str(path))
    except zipfile.BadZipFile:
        raise UserError(f"{path} is not a readable .npz archive (is the file complete?)") from None


def array_file_slices(path: Path) -> int:
    """Number of slices in a .npy/.npz file, from its header only; UserError when it is not a stack."""
    _, shape, dtype = _header(path)
    return stack_layout(shape, dtype, str(path), allow_2d=True).n


def read_array_file(path: Path) -> np.ndarray:
    """The slices [N, H, W] float32 of a .npy/.npz file (``allow_pickle=False``); UserError otherwise."""
    key, shape, dtype = _header(path)
    stack_layout(shape, dtype, str(path), allow_2d=True)  # a clear message for object arrays before reading
    try:
        if key is not None:
            with np.load(path, allow_pickle=False) as archive:
                array = archive[key]
        else:
            array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"cannot read {path} as a NumPy array ({one_line(exc)})") from None
    return as_stack(array, str(path))
