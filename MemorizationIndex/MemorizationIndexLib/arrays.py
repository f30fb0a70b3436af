"""NumPy arrays as stacks of 2D slices: in-memory batches and ``.npy``/``.npz`` files.

Axis convention for a 2D slice ``a[r, c]``: axis 0 is the image row (top to bottom), axis 1 the
column (left to right), as ``SimpleITK.GetArrayFromImage`` or PIL give a PNG. A slice taken from a
NIfTI with nibabel (``get_fdata()[:, :, k]``, axes i, j) is the transpose of what SimpleITK shows
for the same slice: transpose it (``a.T``) before saving if the two must match. A stack holds
slices along its first axis: N×H×W, N×1×H×W or N×H×W×1 (channel axis of length 1).

Files are read with ``allow_pickle=False``; any real dtype (bool, integer, float) is accepted and
converted to float32; NaN/Inf values become the array's finite minimum (background), as in volumes.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .errors import UserError

ARRAY_SUFFIXES = (".npy", ".npz")
_REAL_KINDS = "biuf"  # bool, signed, unsigned, floating


def stack_shape(shape: tuple[int, ...], dtype: np.dtype, what: str, *, allow_2d: bool) -> tuple[int, int, int]:
    """(N, H, W) of an array of this shape and dtype read as slices; UserError names what is wrong.

    Accepted: H×W (when ``allow_2d``), N×H×W, N×1×H×W, N×H×W×1, of a real dtype.
    """
    if dtype.hasobject:
        raise UserError(f"{what} holds Python objects (dtype {dtype}); save a numeric array (e.g. float32)")
    if dtype.kind == "c":
        raise UserError(f"{what} is complex ({dtype}); save the magnitude (np.abs) instead")
    if dtype.kind not in _REAL_KINDS or dtype.fields is not None:
        raise UserError(f"{what} has dtype {dtype}; expected a real numeric array (bool, integer or float)")
    dims = "x".join(map(str, shape)) or "scalar"
    expected = ("HxW, " if allow_2d else "") + "NxHxW, Nx1xHxW or NxHxWx1"
    if len(shape) == 2 and allow_2d:
        n, h, w = 1, *shape
    elif len(shape) == 3:
        n, h, w = shape
    elif len(shape) == 4 and shape[1] == 1:
        n, h, w = shape[0], shape[2], shape[3]
    elif len(shape) == 4 and shape[3] == 1:
        n, h, w = shape[:3]
    elif len(shape) == 4 and shape[3] in (3, 4):
        raise UserError(f"{what} has shape {dims}: colour images are not read; save one grey channel ({expected})")
    else:
        raise UserError(f"{what} has shape {dims}; expected {expected}")
    if min(n, h, w) < 1:
        raise UserError(f"{what} is empty (shape {dims})")
    return n, h, w


def as_stack(array: np.ndarray, what: str, *, allow_2d: bool = True) -> np.ndarray:
    """A real array as float32 slices [N, H, W] (NaN/Inf -> finite minimum); UserError when it is
    not one (see :func:`stack_shape`) or has no finite value."""
    n, h, w = stack_shape(tuple(array.shape), array.dtype, what, allow_2d=allow_2d)
    stack = np.asarray(array, dtype=np.float32).reshape(n, h, w)
    finite = np.isfinite(stack)
    if not finite.all():
        if not finite.any():
            raise UserError(f"{what} has no finite value (all NaN or Inf)")
        stack = np.where(finite, stack, stack[finite].min())
    return stack


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _npy_header(handle, what: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from the header of an open .npy stream."""
    try:
        version = np.lib.format.read_magic(handle)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(handle)
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise UserError(f"{what} is not a readable .npy array ({_one_line(exc)})") from None
    return tuple(int(s) for s in shape), np.dtype(dtype)


def _npz_member(archive: zipfile.ZipFile, path: Path) -> str:
    members = [m for m in archive.namelist() if m.endswith(".npy")]
    if len(members) != 1:
        names = ", ".join(m[:-4] for m in members) or "none"
        raise UserError(f"{path} holds {len(members)} arrays ({names}); save exactly one array per .npz file")
    return members[0]


def array_file_slices(path: Path) -> int:
    """Number of slices in a .npy/.npz file, from its header only; UserError when it is not a stack."""
    try:
        if path.suffix.lower() == ".npz":
            with zipfile.ZipFile(path) as archive, archive.open(_npz_member(archive, path)) as handle:
                shape, dtype = _npy_header(handle, str(path))
        else:
            with open(path, "rb") as handle:
                shape, dtype = _npy_header(handle, str(path))
    except zipfile.BadZipFile:
        raise UserError(f"{path} is not a readable .npz archive (is the file complete?)") from None
    return stack_shape(shape, dtype, str(path), allow_2d=True)[0]


def read_array_file(path: Path) -> np.ndarray:
    """The slices [N, H, W] float32 of a .npy/.npz file (``allow_pickle=False``); UserError otherwise."""
    array_file_slices(path)  # the header's dtype and shape first: a clear message for object arrays
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                array = archive[archive.files[0]]
        else:
            array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"cannot read {path} as a NumPy array ({_one_line(exc)})") from None
    return as_stack(array, str(path))
