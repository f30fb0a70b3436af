"""Reliability: broken or foreign indexes, atomic builds, concurrency, checkpoints, determinism, no network, memory.

Small real data: 4-slice crops of the spine volumes (224x224 sagittal slices), indexes built
without flips and with a holdout null, so that every test stays a few seconds on 2 cores.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MemorizationIndexLib import audit as audit_mod
from MemorizationIndexLib import index_build
from MemorizationIndexLib.audit import audit_image, audit_paths
from MemorizationIndexLib.cli import main
from MemorizationIndexLib.encoders import load_encoder
from MemorizationIndexLib.errors import UserError
from MemorizationIndexLib.preprocess import PreprocessSettings
from MemorizationIndexLib.index_build import BuildOptions, build_index, build_index_from_features
from MemorizationIndexLib.reference_index import EncoderInfo, Provenance, ReferenceIndex
from MemorizationIndexLib.volumes import read_image

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
    manifest["files"] = {name: hashlib.sha256((index_dir / name).read_bytes()).hexdigest() for name in manifest["files"]}
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

@pytest.fixture(scope="module")
def encoder():
    return load_encoder("default")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict[str, Path]:
    return small_dataset(tmp_path_factory.mktemp("reliability-data"), shared_data)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory, data: dict[str, Path], encoder) -> Path:
    out = tmp_path_factory.mktemp("reliability-index") / "index"
    build_small_index(data, out, encoder=encoder)
    return out


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
def test_bad_index_is_refused_with_reason(index_dir: Path, data: dict[str, Path], tmp_path: Path, capsys, damage: str, reason: str) -> None:
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
        audit_image(index, image, "q", preprocessing=dataclasses.replace(index.preprocessing, smoothing_sigma=index.preprocessing.smoothing_sigma + 0.7))
    assert index.preprocessing == PreprocessSettings.from_dict(json.loads((index_dir / "config.json").read_text())["preprocessing"])


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
    cmd = [sys.executable, "-m", "MemorizationIndexLib.cli", "build-index", str(spine(shared_data, 1)), str(spine(shared_data, 2)),
           "--out", str(out), "--batch-size", "1"]
    # Ctrl-C reaches the child even when this test runs in a background job (where SIGINT is ignored).
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, encoding="utf-8", errors="replace", env=env, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
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
    code, _, err = run_cli(capsys, "build-index", data["train1"], data["train2"], "--encoder", "mri-core", "--checkpoint", evil, "--out", out)
    assert_clean_error(code, err, "refused")
    assert not marker.exists() and not out.exists()


def test_checkpoint_with_wrong_keys_lists_them_through_cli(tmp_path: Path, data: dict[str, Path], capsys) -> None:
    wrong = tmp_path / "wrong.pth"
    torch.save({"model": {"backbone.cls_token": torch.zeros(1, 1, 768), "backbone.head.weight": torch.zeros(3, 768)}}, wrong)
    out = tmp_path / "index"
    code, _, err = run_cli(capsys, "build-index", data["train1"], data["train2"], "--encoder", "mri-core", "--checkpoint", wrong, "--out", out)
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
            outputs.append({name: (out / name).read_bytes() for name in ("slices.csv", "summary.json", "neighbors.csv")})
    assert manifests[0] == manifests[1]
    assert outputs[0] == outputs[1] == outputs[2]


# --- 5. no network -------------------------------------------------------------------------------------

def test_cli_works_with_sockets_disabled(tmp_path: Path, data: dict[str, Path]) -> None:
    site = tmp_path / "nonet"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent("""
        import socket

        class _NoNetwork(socket.socket):
            def __init__(self, *args, **kwargs):
                raise OSError("network access is disabled in this test")

        socket.socket = _NoNetwork
        socket.create_connection = lambda *a, **k: (_ for _ in ()).throw(OSError("network access is disabled in this test"))
    """))
    driver = tmp_path / "drive.py"
    driver.write_text(textwrap.dedent(f"""
        import socket, sys
        try:
            socket.socket()
        except OSError:
            pass
        else:
            sys.exit("sitecustomize did not disable sockets")
        from MemorizationIndexLib.cli import main
        index, out = {str(tmp_path / 'index')!r}, {str(tmp_path / 'out')!r}
        for argv in (["build-index", {str(data['train1'])!r}, {str(data['train2'])!r}, "--holdout", {str(data['holdout'])!r},
                      "--no-copies", "--out", index],
                     ["audit", index, {str(data['query'])!r}, "--out", out],
                     ["report", out]):
            code = main(argv)
            if code != 0:
                sys.exit(f"{{argv[0]}} exited {{code}}")
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO / "MemorizationIndex")])}
    done = subprocess.run([sys.executable, str(driver)], capture_output=True, text=True, encoding="utf-8", errors="replace", env=env, cwd=tmp_path, timeout=300)
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


def test_audit_memory_is_bounded_by_one_volume(tmp_path: Path, index_dir: Path, data: dict[str, Path], encoder, monkeypatch) -> None:
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


def test_bad_input_is_found_before_any_volume_is_read(tmp_path: Path, index_dir: Path, data: dict[str, Path], monkeypatch, capsys) -> None:
    reads = []
    original = audit_mod.read_image
    monkeypatch.setattr(audit_mod, "read_image", lambda *a, **k: reads.append(a) or original(*a, **k))
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "audit", index_dir, data["query"], tmp_path / "missing.nii.gz", "--out", out)
    assert_clean_error(code, err, "input not found")
    assert reads == [] and not out.exists()
