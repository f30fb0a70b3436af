"""A child process run in the background, with cancel; no Qt needed.

A reader thread queues the child's output lines; :meth:`BackgroundProcess.poll`, called from the
caller's thread (in Slicer by a ``qt.QTimer``), hands them to the callbacks there: progress lines
(:mod:`.protocol`) to ``on_progress(done, total)``, the others to ``on_line(line)`` and to
:attr:`BackgroundProcess.log`, and at the end the exit code to ``on_finished(code)``. A work
folder given to the process is removed once ``on_finished`` has run, whatever the outcome.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from .protocol import parse_progress

_DONE = object()


class BackgroundProcess:
    """Run ``args``; stdout and stderr are read together, line by line."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        on_line: Callable[[str], None] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        on_finished: Callable[[int], None] | None = None,
        work_dir: str | os.PathLike | None = None,
    ) -> None:
        self.log: list[str] = []
        self.cancelled = False
        self.return_code: int | None = None
        self._on_line, self._on_progress, self._on_finished = on_line, on_progress, on_finished
        self._work_dir = work_dir
        self._events: queue.Queue = queue.Queue()
        try:
            self._proc = subprocess.Popen(
                list(args),
                env=dict(env) if env is not None else None,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                **_own_process_group(),
            )
        except BaseException:
            self._remove_work_dir()
            raise
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def running(self) -> bool:
        """True until :meth:`poll` has handed over the exit code."""
        return self.return_code is None

    def poll(self) -> bool:
        """Hand the queued output to the callbacks on this thread; returns :attr:`running`."""
        while self.running:
            try:
                item = self._events.get_nowait()
            except queue.Empty:
                break
            if item is _DONE:
                self._finish()
            else:
                self._dispatch(item)
        return self.running

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> int | None:
        """Poll until the process has finished (or ``timeout`` seconds passed); the exit code or None."""
        end = None if timeout is None else time.monotonic() + timeout
        while self.poll():
            if end is not None and time.monotonic() >= end:
                return None
            time.sleep(interval)
        return self.return_code

    def cancel(self) -> None:
        """Kill the process and everything it started; :meth:`poll` then reports the end."""
        if self._proc.poll() is not None:
            return
        self.cancelled = True
        if os.name == "nt":
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self._proc.pid)], capture_output=True, check=False)
        else:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._events.put(line.rstrip("\r\n"))
        self._proc.wait()
        self._events.put(_DONE)

    def _dispatch(self, line: str) -> None:
        progress = parse_progress(line)
        if progress is not None:
            if self._on_progress:
                self._on_progress(*progress)
            return
        self.log.append(line)
        if self._on_line:
            self._on_line(line)

    def _finish(self) -> None:
        self.return_code = self._proc.returncode
        try:
            if self._on_finished:
                self._on_finished(self.return_code)
        finally:
            self._remove_work_dir()

    def _remove_work_dir(self) -> None:
        if self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)


def _own_process_group() -> dict:
    """Popen options that let :meth:`BackgroundProcess.cancel` stop the child's own children too."""
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}
    return {"start_new_session": True}
