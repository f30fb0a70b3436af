"""All-or-nothing writes: a whole folder (an index) or a group of files in a folder (audit outputs, a report).

Nothing half-written survives a failure: temporary names are written first and renamed into place,
and on failure the temporaries and the folders this call created are removed. A failure to write
(``OSError``: disk full, permission denied) becomes a :class:`UserError` with a one-line message;
anything else (``KeyboardInterrupt``, a bug) is re-raised after the clean-up.

A process killed outright (SIGKILL, power loss) cannot clean up: its temporary folder carries the
host name and process id, and the next :func:`write_folder` of the same folder removes it once that
process no longer runs.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

from .errors import UserError

Writer = Callable[[Path], None]  # writes one file (or a folder's content) at the path it is given


def write_folder(out_dir: str | Path, write: Writer) -> Path:
    """Fill a temporary sibling folder with ``write(folder)``, then rename it to ``out_dir``.

    An existing ``out_dir`` is replaced only once the new one is complete (the caller decides
    whether it may be replaced). Returns ``out_dir`` as a Path.
    """
    out_dir = Path(out_dir)
    created = _missing_folders(out_dir.parent)
    _remove_abandoned_builds(out_dir)
    owner = f"{socket.gethostname()}-{os.getpid()}"  # in the temporary names: whose build it is
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{owner}-{uuid.uuid4().hex[:8]}"
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        write(tmp)
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{owner}-{uuid.uuid4().hex[:8]}"
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_folders(created)
        if isinstance(exc, OSError):
            raise UserError(f"cannot write {out_dir}: {exc.strerror or exc}") from None
        raise
    return out_dir


def text_file(text: str) -> Writer:
    """A writer of ``text`` as UTF-8 (for :func:`write_files`)."""
    return lambda path: path.write_text(text, encoding="utf-8")


def write_files(folder: str | Path, writers: Mapping[str, Writer], *, what: str | None = None) -> Path:
    """Write every file of ``writers`` ({file name: writer}) into ``folder``, all or none of them.

    Each writer writes its file at the temporary path it is given (``.<name>.tmp`` in ``folder``);
    once all are written they are renamed to their names, replacing older files. ``folder`` and its
    missing parents are created. The error message reads ``cannot write <what>: <reason>``;
    ``what`` defaults to the file's path when there is one file, else to the folder.
    Returns ``folder`` as a Path.
    """
    folder = Path(folder)
    if what is None:
        what = str(folder / next(iter(writers))) if len(writers) == 1 else str(folder)
    created = _missing_folders(folder)
    written: list[tuple[Path, Path]] = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, write in writers.items():
            written.append((folder / f".{name}.tmp", folder / name))
            write(written[-1][0])
        for tmp, target in written:
            os.replace(tmp, target)
    except BaseException as exc:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)
        _remove_folders(created)
        if isinstance(exc, OSError):
            raise UserError(f"cannot write {what}: {exc.strerror or exc}") from None
        raise
    return folder


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its parents that do not exist yet, deepest first."""
    return [d for d in (folder, *folder.parents) if not d.exists()]


def _remove_folders(created: list[Path]) -> None:
    """Remove the (empty) folders a failed write created, deepest first."""
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            break


def _remove_abandoned_builds(out_dir: Path) -> None:
    """Remove the temporary folders that writes of ``out_dir`` on this host left when they were
    killed (SIGKILL, power loss): their process id no longer runs."""
    host = re.escape(socket.gethostname())
    pattern = re.compile(rf"^\.{re.escape(out_dir.name)}\.(tmp|old)-{host}-(\d+)-[0-9a-f]{{8}}$")
    if not out_dir.parent.is_dir():
        return
    for entry in out_dir.parent.iterdir():
        match = pattern.match(entry.name)
        if match and entry.is_dir() and not _process_runs(int(match.group(2))):
            shutil.rmtree(entry, ignore_errors=True)


def _process_runs(pid: int) -> bool:
    """Whether a process with this id runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
