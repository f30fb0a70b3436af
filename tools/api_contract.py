"""Write docs/api-contract.md from the code: every public module, class and function of
MemorizationIndexLib with its signature and the first line of its docstring.

    python tools/api_contract.py            # rewrite docs/api-contract.md
    python tools/api_contract.py --check    # exit 1 when the file differs from the code

Testing/test_api_contract.py runs the check, so the page cannot drift from the code.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MemorizationIndex"))

import MemorizationIndexLib

CONTRACT = REPO / "docs" / "api-contract.md"
INTRO = """# Library API (generated)

Package `MemorizationIndexLib` (under `MemorizationIndex/`). Generated from the code by
`python tools/api_contract.py`; `make test` fails when this page and the code disagree.
The one-page overview of how the modules fit together is [architecture.md](architecture.md).
"""


def _first_line(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _signature(obj: object) -> str:
    try:
        text = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"
    return re.sub(r" at 0x[0-9a-f]+>", ">", text)  # default callables print their address


def _own_public(module) -> list[tuple[str, object]]:
    """Public classes and functions defined in ``module`` itself, in source order."""
    members = [
        (name, obj)
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and getattr(obj, "__module__", None) == module.__name__
    ]
    return sorted(members, key=lambda item: inspect.getsourcelines(item[1])[1])


def _class_lines(cls: type) -> list[str]:
    lines = []
    for name, member in vars(cls).items():
        if name.startswith("_") and name != "__call__":
            continue
        target = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
        if isinstance(member, property):
            lines.append(f"  - `.{name}` (property) — {_first_line(member)}")
        elif inspect.isfunction(target):
            lines.append(f"  - `.{name}{_signature(target)}` — {_first_line(target)}")
    return lines


def _folder_format() -> list[str]:
    """The audit folder's files as ``audit_output.FOLDER_FORMAT`` describes them."""
    from MemorizationIndexLib.audit_output import FOLDER_FORMAT

    lines = ["## Audit folder format (`audit_output.FOLDER_FORMAT`)\n"]
    lines += [f"- `{name}` — {text}" for name, text in FOLDER_FORMAT]
    return lines + [""]


def render() -> str:
    """The whole page as markdown."""
    parts = [INTRO, *_folder_format()]
    names = sorted(m.name for m in pkgutil.walk_packages(MemorizationIndexLib.__path__, "MemorizationIndexLib."))
    for name in names:
        module = importlib.import_module(name)
        members = _own_public(module)
        parts.append(f"## `{name.removeprefix('MemorizationIndexLib.')}`\n\n{_first_line(module)}\n")
        for member_name, obj in members:
            kind = "class " if inspect.isclass(obj) else ""
            parts.append(f"- {kind}`{member_name}{_signature(obj)}` — {_first_line(obj)}")
            if inspect.isclass(obj):
                parts.extend(_class_lines(obj))
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/api-contract.md differs from the code")
    args = parser.parse_args()
    text = render()
    if args.check:
        if CONTRACT.read_text(encoding="utf-8") != text:
            print(f"{CONTRACT} is out of date; run: python tools/api_contract.py", file=sys.stderr)
            return 1
        return 0
    CONTRACT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
