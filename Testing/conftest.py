"""Shared pytest fixtures: where the shared real-MRI data lives."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "MemorizationIndex"))

from MemorizationIndexLib.allocator import keep_freed_memory
from MemorizationIndexLib.encoders import load_encoder

keep_freed_memory()  # the tests run the encoder in this process, as the CLI does

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The ../shared/data folder; tests that need it skip with a reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real MRI data folder {SHARED_DATA} is absent (it sits beside the repo in CI)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def brain_subjects(shared_data: Path) -> list[Path]:
    """The 24 brain T1w volumes, sorted by subject."""
    return sorted((shared_data / "brain" / "ds002748").glob("sub-*_T1w.nii.gz"))


@pytest.fixture(scope="session")
def chromium() -> str:
    """A headless Chromium binary (`make test` installs Debian's chromium when it can); skips when absent."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("chromium is not installed (make test installs Debian's chromium when run as root with apt-get)")


@pytest.fixture(scope="module")
def spine(shared_data: Path) -> dict[str, Path]:
    folder = shared_data / "spine" / "myosegmentum"
    paths = {n: folder / f"{n}.nii.gz" for n in ("01", "02", "03", "04", "05", "06")}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    assert not missing, f"shared spine data incomplete: {missing}"
    return paths


@pytest.fixture(scope="module")
def encoder():
    """The default encoder, loaded once per module."""
    return load_encoder("default")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict[str, Path]:
    """Small real data (spine crops: two training files, a holdout, a query) for one test module."""
    from reliability_helpers import small_dataset

    return small_dataset(tmp_path_factory.mktemp("data"), shared_data)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory, data: dict[str, Path], encoder) -> Path:
    """An index of ``data`` (no copies, holdout null) for one test module."""
    from reliability_helpers import build_small_index

    out = tmp_path_factory.mktemp("index") / "index"
    build_small_index(data, out, encoder=encoder)
    return out


@pytest.fixture(scope="module")
def brain_query_and_reference(shared_data: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Brain slices of one person as queries (two of them replaced by copies of another person's slices:
    query 2 = reference 4 turned by 20°, query 5 = reference 9 transposed) and that other person's
    slices as the reference (every second coronal slice)."""
    from MemorizationIndexLib.transforms import rotate
    from MemorizationIndexLib.volumes import image_slices, read_image

    query = list(image_slices(read_image(shared_data / "brain/ds002748/sub-01_T1w.nii.gz"), 1)[60:90:3])
    reference = list(image_slices(read_image(shared_data / "brain/ds002748/sub-02_T1w.nii.gz"), 1)[60:90:2])
    query[2], query[5] = rotate(reference[4], 20.0), np.ascontiguousarray(reference[9].T)
    return query, reference
