"""The command lines the Slicer module runs in the background, and what their output means."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .protocol import PROGRESS_ENV, parse_error

CLI_MODULE = "MemorizationIndexLib.cli"
PathLike = str | os.PathLike


def _cli(python: str, command: str) -> list[str]:
    return [python, "-m", CLI_MODULE, command]


def audit_arguments(
    python: str,
    index_dir: PathLike,
    volumes: Sequence[PathLike],
    out_dir: PathLike,
    *,
    device: str = "auto",
    batch_size: int = 32,
    alpha: float | None = None,
    checkpoint: PathLike | None = None,
) -> list[str]:
    """``python -m MemorizationIndexLib.cli audit ...`` for the module (no HTML report)."""
    args = _cli(python, "audit") + [
        str(index_dir),
        *map(str, volumes),
        "--out",
        str(out_dir),
        "--no-report",
        "--device",
        device,
        "--batch-size",
        str(int(batch_size)),
    ]
    if alpha is not None:
        args += ["--alpha", repr(float(alpha))]
    if checkpoint:
        args += ["--checkpoint", str(checkpoint)]
    return args


def build_index_arguments(
    python: str,
    training: Sequence[PathLike],
    out_dir: PathLike,
    *,
    holdout: Sequence[PathLike] = (),
    encoder: str = "default",
    checkpoint: PathLike | None = None,
    device: str = "auto",
    batch_size: int = 32,
    axis: str = "auto",
) -> list[str]:
    """``python -m MemorizationIndexLib.cli build-index ...``; the checkpoint is passed for MRI-CORE only."""
    args = _cli(python, "build-index") + [
        *map(str, training),
        "--out",
        str(out_dir),
        "--encoder",
        encoder,
        "--device",
        device,
        "--batch-size",
        str(int(batch_size)),
        "--axis",
        axis,
    ]
    if checkpoint and encoder == "mri-core":
        args += ["--checkpoint", str(checkpoint)]
    if holdout:
        args += ["--holdout", *map(str, holdout)]
    return args


def child_environment(library_parent: PathLike, base: Mapping[str, str]) -> dict[str, str]:
    """``base`` plus what the child needs: the library on its path, progress lines, unbuffered output."""
    python_path = os.pathsep.join(p for p in (str(Path(library_parent)), base.get("PYTHONPATH", "")) if p)
    return {**base, "PYTHONPATH": python_path, PROGRESS_ENV: "1", "PYTHONUNBUFFERED": "1"}


def failure_message(log: Sequence[str], return_code: int) -> str:
    """The child's last error message, or its exit code and last lines when it wrote none."""
    errors = [message for message in map(parse_error, log) if message is not None]
    if errors:
        return errors[-1]
    tail = "\n".join(log[-5:])
    return f"the background process failed (exit code {return_code})" + (f": {tail}" if tail else "")


def index_summary(log: Sequence[str]) -> str | None:
    """The ``index <id> written to ...`` line of a finished build-index, if it wrote one."""
    lines = [line for line in log if line.startswith("index ")]
    return lines[-1] if lines else None


class VolumeProgress:
    """Overall fraction done of an audit of ``n_volumes`` volumes from its per-volume progress lines.

    Each volume counts from 0 again, so a count lower than the last one means the next volume.
    """

    def __init__(self, n_volumes: int) -> None:
        self.n_volumes = max(1, n_volumes)
        self.volume = 0
        self._last_done = -1

    def update(self, done: int, total: int) -> float:
        """The fraction (0..1) done after a ``done/total`` line."""
        if done < self._last_done:
            self.volume = min(self.n_volumes - 1, self.volume + 1)
        self._last_done = done
        return (self.volume + min(done, total) / max(1, total)) / self.n_volumes
