"""What the command line and the Slicer module agree on: progress and error lines, node attributes.

The module runs the command line in a background process with :data:`PROGRESS_ENV` set to
``"1"``; the child then writes ``progress: <done>/<total> <label>`` lines, and a failure ends
with one ``error: <message>`` line. Both sides use the functions here, so the format is written
once.
"""

from __future__ import annotations

import re

PROGRESS_ENV = "MEMORIZATION_INDEX_PROGRESS"
PROGRESS_PREFIX = "progress:"
ERROR_PREFIX = "error:"

# MRML node attributes on every result node: the audited volume's node ID and the index folder.
INPUT_ATTRIBUTE = "MemorizationIndex.Input"
INDEX_ATTRIBUTE = "MemorizationIndex.Index"

_PROGRESS = re.compile(rf"^{re.escape(PROGRESS_PREFIX)}\s*(\d+)\s*/\s*(\d+)")


def format_progress(done: int, total: int, label: str = "") -> str:
    """The progress line for ``done`` of ``total`` items."""
    return f"{PROGRESS_PREFIX} {done}/{total} {label}".rstrip()


def parse_progress(line: str) -> tuple[int, int] | None:
    """``(done, total)`` from a progress line, None for any other line."""
    match = _PROGRESS.match(line.strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


def format_error(message: str) -> str:
    """The one error line for ``message`` (whitespace, newlines included, collapsed)."""
    return f"{ERROR_PREFIX} {' '.join(message.split())}"


def parse_error(line: str) -> str | None:
    """The message of an error line, None for any other line."""
    text = line.strip()
    return text[len(ERROR_PREFIX) :].strip() if text.startswith(ERROR_PREFIX) else None
