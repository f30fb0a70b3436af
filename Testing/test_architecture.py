"""docs/architecture.md names every module of the library, the core does not import presentation, and the CLI starts
without the libraries only verification uses."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

from conftest import REPO_ROOT

LIB = REPO_ROOT / "MemorizationIndex" / "MemorizationIndexLib"
PRESENTATION = {"report", "report_plots", "report_sets", "audit_status", "mrml", "layout", "results_html"}


def _imported_lib_modules(path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            if node.module:
                names.add(node.module.split(".")[0])
            else:
                names.update(alias.name for alias in node.names)
    return names


def test_architecture_page_lists_every_module():
    page = (REPO_ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"`([a-z_]+)\.py`", page))
    modules = {p.stem for p in LIB.glob("*.py") if p.stem != "__init__"}
    assert modules <= listed, f"modules missing from docs/architecture.md: {sorted(modules - listed)}"
    assert (
        listed
        - {
            "MemorizationIndex",
            "bench_perf",
            "heldout_check",
            "api_contract",
            "base",
            "efficientnet_lite",
            "mri_core",
            "tiles",
            "conftest",
            "__init__",
        }
        <= modules
    ), "docs/architecture.md names a module that is gone"


def test_audit_imports_nothing_from_presentation():
    assert not _imported_lib_modules(LIB / "audit.py") & PRESENTATION


def test_the_cli_starts_without_scipy_signal():
    """skimage.filters loads scipy.signal (~0.7 s of every command's start-up): verification imports it on first use,
    so a command that never verifies does not pay for it (docs/performance.md). Building the parser of every command
    does not load the benchmark's own modules either (``benchmark_cli`` imports the run on use)."""
    heavy = ("scipy.signal", "skimage.filters", "MemorizationIndexLib.benchmark")
    code = (
        "import sys, MemorizationIndexLib.cli as cli; cli.build_parser(); "
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "MemorizationIndex")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]"
