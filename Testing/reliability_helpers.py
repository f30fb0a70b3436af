"""Small real data and helpers shared by the reliability tests, test_cli_errors.py and test_properties.py.

Small real data: 4-slice crops of the spine volumes (224x224 sagittal slices), indexes built
without flips and with a holdout null, so that every test stays a few seconds on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import SimpleITK as sitk

from MemorizationIndexLib.cli import main
from MemorizationIndexLib.index_build import BuildOptions, build_index
from MemorizationIndexLib.reference_index import ReferenceIndex

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "MemorizationIndex" / "MemorizationIndexLib"


# --- helpers shared with test_cli_errors.py and test_properties.py --------------------------------


def spine(shared_data: Path, subject: int) -> Path:
    """A real lumbar-spine volume (20 sagittal slices of 224x224, uint8)."""
    return shared_data / "spine" / "myosegmentum" / f"{subject:02d}.nii.gz"


def write_crop(source: Path, target: Path, first: int = 8, count: int = 4) -> Path:
    """Save ``count`` consecutive slices (along k) of a real volume, geometry kept."""
    image = sitk.ReadImage(str(source))
    sitk.WriteImage(image[:, :, first : first + count], str(target))
    return target


def small_dataset(folder: Path, shared_data: Path) -> dict[str, Path]:
    """Two training crops, a holdout crop and a query crop (the query is training subject 1)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "train1": write_crop(spine(shared_data, 1), folder / "train1.nii.gz"),
        "train2": write_crop(spine(shared_data, 2), folder / "train2.nii.gz"),
        "holdout": write_crop(spine(shared_data, 3), folder / "holdout.nii.gz"),
    }
    data["query"] = data["train1"]
    return data


def build_small_index(data: dict[str, Path], out: Path, encoder=None, **options) -> ReferenceIndex:
    """The small test index (no flips, holdout null): fast to build."""
    options = BuildOptions(holdout_paths=[data["holdout"]], reference_copies=False, **options)
    return build_index([data["train1"], data["train2"]], out, options, encoder=encoder)


def rewrite_manifest(index_dir: Path) -> None:
    """Recompute the manifest checksums (to damage an index past the checksum check)."""
    manifest = json.loads((index_dir / "manifest.json").read_text())
    manifest["files"] = {
        name: hashlib.sha256((index_dir / name).read_bytes()).hexdigest() for name in manifest["files"]
    }
    (index_dir / "manifest.json").write_text(json.dumps(manifest))


def tree_snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_clean_error(code: int, err: str, *needles: str) -> None:
    """Exit code 2 and exactly one ``error:`` line naming the reason."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("progress:")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])


# --- fixtures ----------------------------------------------------------------------------------
