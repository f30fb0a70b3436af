"""docs/api-contract.md is generated from the code and must match it."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO_ROOT


def test_api_contract_page_matches_the_code():
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "api_contract.py"), "--check"],
        capture_output=True,
        text=True,
        encoding="utf-8",
    )
    assert done.returncode == 0, done.stderr
