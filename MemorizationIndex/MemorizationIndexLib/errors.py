"""Errors that mean the user gave bad input (shown as one line, exit code 2), and the one-line text of
exceptions that such messages quote."""

from __future__ import annotations

import re


class UserError(Exception):
    """A problem with the user's input: the message says what is wrong and what to do."""


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def itk_reason(exc: BaseException) -> str:
    """The informative line of an ITK error (its last), without ITK's object address prefix."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return re.sub(r"^(ITK ERROR: )?\w+\(0x[0-9a-fA-F]+\): ", "", lines[-1])
