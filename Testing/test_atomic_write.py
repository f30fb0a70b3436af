"""atomic_write: a folder or a group of files is written completely or not at all."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from MemorizationIndexLib.atomic_write import write_files, write_folder
from MemorizationIndexLib.errors import UserError


def _text(content: str):
    return lambda path: path.write_text(content, encoding="utf-8")


def _disk_full(path: Path) -> None:
    path.write_bytes(b"half")  # a half-written temporary file, as a full disk leaves it
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


def _interrupt(path: Path) -> None:
    path.write_bytes(b"half")
    raise KeyboardInterrupt


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_files_writes_every_file_and_replaces_older_ones(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b"
    assert write_files(out, {"one.txt": _text("1"), "two.txt": _text("2")}) == out
    assert _names(out) == ["one.txt", "two.txt"]
    write_files(out, {"one.txt": _text("new")})
    assert (out / "one.txt").read_text() == "new" and (out / "two.txt").read_text() == "2"
    assert _names(out) == ["one.txt", "two.txt"]  # no temporary file left


@pytest.mark.parametrize("failure", [_disk_full, _interrupt])
def test_failed_write_files_keeps_the_older_files(tmp_path: Path, failure) -> None:
    out = tmp_path / "out"
    write_files(out, {"one.txt": _text("old"), "keep.txt": _text("other")})
    writers = {"one.txt": _text("new"), "two.txt": failure}
    if failure is _disk_full:
        with pytest.raises(UserError, match=rf"^cannot write {out}: No space left on device$"):
            write_files(out, writers)
    else:
        with pytest.raises(KeyboardInterrupt):
            write_files(out, writers)
    assert _names(out) == ["keep.txt", "one.txt"] and (out / "one.txt").read_text() == "old"


def test_failed_write_files_removes_the_folders_it_created(tmp_path: Path) -> None:
    (tmp_path / "existing").mkdir()
    out = tmp_path / "existing" / "new" / "deeper"
    with pytest.raises(UserError, match="the outputs"):
        write_files(out, {"one.txt": _text("1"), "two.txt": _disk_full}, what="the outputs")
    assert _names(tmp_path) == ["existing"] and _names(tmp_path / "existing") == []


def test_write_files_message_names_the_single_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=rf"^cannot write {tmp_path / 'report.html'}: No space left on device$"):
        write_files(tmp_path, {"report.html": _disk_full})
    assert _names(tmp_path) == []


def test_write_files_into_a_file_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot write"):
        write_files(tmp_path / "file", {"one.txt": _text("1")})
    assert (tmp_path / "file").read_text() == "x"


def test_write_folder_writes_and_replaces_a_folder(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "index"
    write_folder(out, lambda folder: (folder / "a").write_text("1"))
    write_folder(out, lambda folder: (folder / "b").write_text("2"))
    assert _names(out) == ["b"] and _names(tmp_path / "nested") == ["index"]


@pytest.mark.parametrize("failure", [_disk_full, _interrupt])
def test_failed_write_folder_keeps_the_old_folder(tmp_path: Path, failure) -> None:
    out = tmp_path / "index"
    write_folder(out, lambda folder: (folder / "a").write_text("old"))

    def write(folder: Path) -> None:
        (folder / "a").write_text("new")
        failure(folder / "b")

    if failure is _disk_full:
        with pytest.raises(UserError, match=rf"^cannot write {out}: No space left on device$"):
            write_folder(out, write)
    else:
        with pytest.raises(KeyboardInterrupt):
            write_folder(out, write)
    assert _names(tmp_path) == ["index"] and (out / "a").read_text() == "old"


def test_failed_write_folder_removes_the_parents_it_created(tmp_path: Path) -> None:
    with pytest.raises(UserError):
        write_folder(tmp_path / "a" / "b" / "index", lambda folder: _disk_full(folder / "x"))
    assert _names(tmp_path) == []


def test_write_folder_removes_only_abandoned_temporary_folders(tmp_path: Path) -> None:
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    host = socket.gethostname()
    dead = tmp_path / f".index.tmp-{host}-{int(finished.stdout)}-0123abcd"  # its process has ended
    live = tmp_path / f".index.old-{host}-{os.getpid()}-0123abcd"  # this process runs
    other = tmp_path / f".other.tmp-{host}-{int(finished.stdout)}-0123abcd"  # another folder's
    for folder in (dead, live, other):
        folder.mkdir()
    write_folder(tmp_path / "index", lambda folder: (folder / "a").write_text("1"))
    assert _names(tmp_path) == sorted([live.name, other.name, "index"])
