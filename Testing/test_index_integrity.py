"""Broken or foreign indexes are refused with a reason; builds are atomic, also when killed."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from reliability_helpers import (
    REPO,
    assert_clean_error,
    rewrite_manifest,
    run_cli,
    spine,
    tree_snapshot,
)

from MemorizationIndexLib import index_build
from MemorizationIndexLib.audit import audit_image
from MemorizationIndexLib.encoders import load_encoder
from MemorizationIndexLib.errors import UserError
from MemorizationIndexLib.index_build import build_index_from_features
from MemorizationIndexLib.preprocess import PreprocessSettings
from MemorizationIndexLib.reference_index import EncoderInfo, Provenance, ReferenceIndex
from MemorizationIndexLib.volumes import read_image


def _damaged_copy(index_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy)
    return copy


# --- 2. indexes: refused with the reason ----------------------------------------------------------


def _damage(path: Path, damage: str) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    config = json.loads((path / "config.json").read_text())
    faiss_file = sorted(path.glob("index_*.faiss"))[0]
    if damage == "format-version":
        manifest["format_version"] = 99
        (path / "manifest.json").write_text(json.dumps(manifest))
    elif damage == "checksum":
        (path / "provenance.csv").write_text((path / "provenance.csv").read_text().replace("train1", "trainX"))
    elif damage == "missing-file":
        (path / "whitener.npz").unlink()
    elif damage == "truncated-faiss":
        faiss_file.write_bytes(faiss_file.read_bytes()[:200])
        rewrite_manifest(path)
    elif damage == "other-weights":
        config["encoder"]["weights_sha256"] = "0" * 64
        (path / "config.json").write_text(json.dumps(config))
        rewrite_manifest(path)
    elif damage == "other-encoder":
        config["encoder"]["encoder_id"] = "default:224:stage1"
        (path / "config.json").write_text(json.dumps(config))
        rewrite_manifest(path)
    elif damage == "unknown-preprocessing":
        config["preprocessing"]["bias_field_correction"] = True
        (path / "config.json").write_text(json.dumps(config))
        rewrite_manifest(path)
    elif damage == "manifest-not-json":
        (path / "manifest.json").write_text("{not json")
    elif damage == "manifest-drops-config":
        del manifest["files"]["config.json"]
        (path / "manifest.json").write_text(json.dumps(manifest))
    elif damage == "manifest-path-escape":
        manifest["files"]["../outside.txt"] = "0" * 64
        (path / "manifest.json").write_text(json.dumps(manifest))
    elif damage == "bad-whitener-zip":
        (path / "whitener.npz").write_bytes(b"PK\x03\x04 not a zip")
        rewrite_manifest(path)
    else:  # pragma: no cover
        raise AssertionError(damage)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("format-version", "format version 99"),
        ("checksum", "checksum of provenance.csv"),
        ("missing-file", "missing whitener.npz"),
        ("truncated-faiss", "cannot be read"),
        ("other-weights", "other default weights"),
        ("other-encoder", "was built with encoder default:224:stage1"),
        ("unknown-preprocessing", "bias_field_correction"),
        ("manifest-not-json", "not valid json"),
        ("manifest-drops-config", "does not cover config.json"),
        ("manifest-path-escape", "invalid entry"),
        ("bad-whitener-zip", "damaged"),
    ],
)
def test_bad_index_is_refused_with_reason(
    index_dir: Path, data: dict[str, Path], tmp_path: Path, capsys, damage: str, reason: str
) -> None:
    broken = _damaged_copy(index_dir, tmp_path)
    _damage(broken, damage)
    out = tmp_path / "audit-out"
    code, _, err = run_cli(capsys, "audit", broken, data["query"], "--out", out, "--no-report")
    assert_clean_error(code, err, reason)
    assert not out.exists()


def test_index_refuses_query_with_other_encoder_or_preprocessing(index_dir: Path, data: dict[str, Path]) -> None:
    index = ReferenceIndex.load(index_dir)
    image = read_image(data["query"])
    other = load_encoder("default", blocks=("stage5",))
    with pytest.raises(UserError, match="was built with encoder"):
        audit_image(index, image, "q", encoder=other)
    with pytest.raises(UserError, match="other preprocessing"):
        audit_image(
            index,
            image,
            "q",
            preprocessing=dataclasses.replace(
                index.preprocessing, smoothing_sigma=index.preprocessing.smoothing_sigma + 0.7
            ),
        )
    assert index.preprocessing == PreprocessSettings.from_dict(
        json.loads((index_dir / "config.json").read_text())["preprocessing"]
    )


# --- 2. atomic builds ----------------------------------------------------------------------------


def _features_index(out: Path, **options) -> ReferenceIndex:
    rng = np.random.default_rng(0)
    provenance = Provenance()
    for row in range(12):
        provenance.append(f"/data/s{row // 6}.nii.gz", row % 6, "axial", 0, "none", row, f"s{row // 6}")
    info = EncoderInfo("default", "default:224:b", "0" * 64, 224, ("b",))
    features = {"b": rng.normal(size=(12, 8)).astype(np.float32)}
    holdout = {"b": rng.normal(size=(6, 8)).astype(np.float32)}
    return build_index_from_features(features, provenance, out, encoder_info=info, holdout_features=holdout, **options)


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


@pytest.mark.parametrize("failure", ["disk-full", "interrupt"])
def test_failed_build_leaves_no_partial_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    original = index_build.faiss.write_index

    def failing_write(index, path):
        original(index, path)
        with open(path, "r+b") as handle:  # a half-written file, as a full disk leaves it
            handle.truncate(10)
        if failure == "disk-full":
            raise OSError(errno.ENOSPC, "No space left on device", path)
        raise KeyboardInterrupt

    out = tmp_path / "nested" / "index"
    monkeypatch.setattr(index_build.faiss, "write_index", failing_write)
    if failure == "disk-full":
        with pytest.raises(UserError, match="No space left on device"):
            _features_index(out)
    else:
        with pytest.raises(KeyboardInterrupt):
            _features_index(out)
    assert not out.exists() and not (tmp_path / "nested").exists()
    assert _leftovers(tmp_path) == []


def test_failed_overwrite_keeps_the_old_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "index"
    first = _features_index(out)
    before = tree_snapshot(out)

    def full_disk(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(index_build.np, "savez", full_disk)
    with pytest.raises(UserError, match="No space left"):
        _features_index(out, overwrite=True, seed=1)
    monkeypatch.undo()
    assert tree_snapshot(out) == before and ReferenceIndex.load(out).index_id == first.index_id
    assert _leftovers(tmp_path) == []


def test_overwrite_never_replaces_a_folder_that_is_not_an_index(tmp_path: Path) -> None:
    precious = tmp_path / "results"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(UserError, match="not a reference index"):
        _features_index(precious, overwrite=True)
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_ctrl_c_during_build_leaves_no_index(tmp_path: Path, shared_data: Path) -> None:
    out = tmp_path / "index"
    env = {**os.environ, "MEMORIZATION_INDEX_PROGRESS": "1", "PYTHONPATH": str(REPO / "MemorizationIndex")}
    cmd = [
        sys.executable,
        "-m",
        "MemorizationIndexLib.cli",
        "build-index",
        str(spine(shared_data, 1)),
        str(spine(shared_data, 2)),
        "--out",
        str(out),
        "--batch-size",
        "1",
    ]
    # Ctrl-C reaches the child even when this test runs in a background job (where SIGINT is ignored).
    proc = subprocess.Popen(
        cmd,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=env,
        cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        for line in proc.stderr:  # wait until embedding is under way
            if line.startswith("progress: 2/"):
                proc.send_signal(signal.SIGINT)
                break
        rest = proc.stderr.read()
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 130, rest
    assert "error: interrupted" in rest and "Traceback" not in rest
    assert not out.exists() and _leftovers(tmp_path) == []


def test_next_build_removes_what_a_killed_build_left(tmp_path: Path) -> None:
    out = tmp_path / "index"
    killed = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from MemorizationIndexLib.atomic_write import write_folder
        def write(folder):
            (folder / "half-written").write_bytes(b"x")
            os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer or a power cut would
        write_folder(Path({str(out)!r}), write)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO / "MemorizationIndex")}
    assert subprocess.run([sys.executable, "-c", killed], env=env).returncode == -signal.SIGKILL
    assert len(_leftovers(tmp_path)) == 1  # SIGKILL gives no chance to clean up
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # a build still running (its process is alive) is left alone
        running = tmp_path / f".index.tmp-{socket.gethostname()}-{sleeper.pid}-0123abcd"
        running.mkdir()
        _features_index(out)
        assert _leftovers(tmp_path) == [running.name]
    finally:
        sleeper.kill()
    assert ReferenceIndex.load(out).n_reference_slices == 12


# --- 2. concurrent audits --------------------------------------------------------------------------
