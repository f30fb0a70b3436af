"""Audits under stress: concurrency, hostile checkpoints, determinism, no network, bounded memory."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from reliability_helpers import (
    PACKAGE,
    REPO,
    assert_clean_error,
    build_small_index,
    run_cli,
    tree_snapshot,
)

from MemorizationIndexLib import audit as audit_mod
from MemorizationIndexLib.audit import audit_paths
from MemorizationIndexLib.reference_index import ReferenceIndex


def test_concurrent_audits_of_one_index_agree(index_dir: Path, data: dict[str, Path], tmp_path: Path) -> None:
    before = tree_snapshot(index_dir)
    results: dict[int, object] = {}

    def work(i: int) -> None:
        try:
            audit_paths(index_dir, [data["query"], data["train2"]], tmp_path / f"out{i}")
            results[i] = (tmp_path / f"out{i}" / "slices.csv").read_bytes()
        except BaseException as exc:  # noqa: BLE001 - reported below
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, bytes) for r in results.values()), results
    assert results[0] == results[1] == results[2]
    assert tree_snapshot(index_dir) == before  # reading never modifies the index


# --- 3. checkpoints --------------------------------------------------------------------------------


def test_malicious_checkpoint_refused_through_cli(tmp_path: Path, data: dict[str, Path], capsys) -> None:
    marker = tmp_path / "pwned.txt"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pt"
    torch.save({"teacher": {"backbone.cls_token": Exploit()}}, evil)
    out = tmp_path / "index"
    code, _, err = run_cli(
        capsys,
        "build-index",
        data["train1"],
        data["train2"],
        "--encoder",
        "mri-core",
        "--checkpoint",
        evil,
        "--out",
        out,
    )
    assert_clean_error(code, err, "refused")
    assert not marker.exists() and not out.exists()


def test_checkpoint_with_wrong_keys_lists_them_through_cli(tmp_path: Path, data: dict[str, Path], capsys) -> None:
    wrong = tmp_path / "wrong.pth"
    torch.save(
        {"model": {"backbone.cls_token": torch.zeros(1, 1, 768), "backbone.head.weight": torch.zeros(3, 768)}}, wrong
    )
    out = tmp_path / "index"
    code, _, err = run_cli(
        capsys,
        "build-index",
        data["train1"],
        data["train2"],
        "--encoder",
        "mri-core",
        "--checkpoint",
        wrong,
        "--out",
        out,
    )
    assert_clean_error(code, err, "missing keys", "patch_embed.proj.weight", "unexpected keys", "head.weight")
    assert not out.exists()


def test_every_torch_load_is_weights_only() -> None:
    calls = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"torch\.load\(", text):
            depth, end = 0, match.end() - 1
            for end in range(match.end() - 1, len(text)):
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            calls.append((path.name, text[match.start() : end + 1]))
    assert calls, "expected at least the MRI-CORE checkpoint loader"
    for name, call in calls:
        assert "weights_only=True" in call, (name, call)


# --- 4. determinism ----------------------------------------------------------------------------------


def test_same_inputs_give_byte_identical_outputs(tmp_path: Path, data: dict[str, Path], encoder) -> None:
    index_path = tmp_path / "index"
    outputs = []
    manifests = []
    for build in range(2):
        build_small_index(data, index_path, encoder=encoder, overwrite=build > 0, seed=3)
        manifests.append((index_path / "manifest.json").read_bytes())
        for run in range(2 if build == 0 else 1):
            out = tmp_path / f"audit-{build}-{run}"
            audit_paths(index_path, [data["query"]], out)
            outputs.append(
                {name: (out / name).read_bytes() for name in ("slices.csv", "summary.json", "neighbors.csv")}
            )
    assert manifests[0] == manifests[1]
    assert outputs[0] == outputs[1] == outputs[2]


# --- 5. no network -------------------------------------------------------------------------------------


def test_cli_works_with_sockets_disabled(tmp_path: Path, data: dict[str, Path]) -> None:
    site = tmp_path / "nonet"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        textwrap.dedent("""
        import socket

        class _NoNetwork(socket.socket):
            def __init__(self, *args, **kwargs):
                raise OSError("network access is disabled in this test")

        socket.socket = _NoNetwork
        socket.create_connection = lambda *a, **k: (_ for _ in ()).throw(OSError("network access is disabled"))
    """)
    )
    driver = tmp_path / "drive.py"
    driver.write_text(
        textwrap.dedent(f"""
        import socket, sys
        try:
            socket.socket()
        except OSError:
            pass
        else:
            sys.exit("sitecustomize did not disable sockets")
        from MemorizationIndexLib.cli import main
        index, out = {str(tmp_path / "index")!r}, {str(tmp_path / "out")!r}
        for argv in (["build-index", {str(data["train1"])!r}, {str(data["train2"])!r},
                      "--holdout", {str(data["holdout"])!r}, "--no-copies", "--out", index],
                     ["audit", index, {str(data["query"])!r}, "--out", out],
                     ["report", out]):
            code = main(argv)
            if code != 0:
                sys.exit(f"{{argv[0]}} exited {{code}}")
    """)
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO / "MemorizationIndex")])}
    done = subprocess.run(
        [sys.executable, str(driver)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "report.html").is_file() and (tmp_path / "out" / "slices.csv").is_file()


# --- 1. bounded memory ----------------------------------------------------------------------------------


def _peak_numpy_bytes(run) -> int:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_audit_memory_is_bounded_by_one_volume(
    tmp_path: Path, index_dir: Path, data: dict[str, Path], encoder, monkeypatch
) -> None:
    """A large, mostly empty volume: peak traced memory is a few times that one volume,
    and auditing it three times over does not hold three volumes at once."""
    real = sitk.GetArrayFromImage(sitk.ReadImage(str(data["query"])))  # [4, 224, 224]
    big = np.zeros((160, 224, 224), dtype=np.float32)  # 32 MB of float32
    big[40:42] = real[:2]
    image = sitk.GetImageFromArray(big)
    image.SetSpacing((1.0, 1.0, 4.0))
    path = tmp_path / "big.mha"
    sitk.WriteImage(image, str(path))
    monkeypatch.setattr(ReferenceIndex, "load_encoder", lambda self, **_: encoder)
    one = _peak_numpy_bytes(lambda: audit_paths(index_dir, [path], tmp_path / "one"))
    three = _peak_numpy_bytes(lambda: audit_paths(index_dir, [path] * 3, tmp_path / "three"))
    assert one < 5 * big.nbytes, (one, big.nbytes)
    assert three < one * 1.3, (one, three)
    summary = json.loads((tmp_path / "three" / "summary.json").read_text())
    assert [v["slices_scored"] for v in summary["volumes"]] == [2, 2, 2]


def test_bad_input_is_found_before_any_volume_is_read(
    tmp_path: Path, index_dir: Path, data: dict[str, Path], monkeypatch, capsys
) -> None:
    reads = []
    original = audit_mod.read_image
    monkeypatch.setattr(audit_mod, "read_image", lambda *a, **k: reads.append(a) or original(*a, **k))
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "audit", index_dir, data["query"], tmp_path / "missing.nii.gz", "--out", out)
    assert_clean_error(code, err, "input not found")
    assert reads == [] and not out.exists()
