"""Headless tests of the Slicer module's library parts: protocol, command lines, background process,
out-of-memory retry, dependency handling, layout and results text."""

from __future__ import annotations

import os
import sys
import tempfile
import textwrap
import time
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from MemorizationIndexLib import cli, commands, dependencies, layout, protocol, results_html
from MemorizationIndexLib.audit_status import audit_status
from MemorizationIndexLib.out_of_memory import halving_batch_on_out_of_memory, is_out_of_memory
from MemorizationIndexLib.process import BackgroundProcess

LIBRARY_PARENT = Path(__file__).resolve().parents[1] / "MemorizationIndex"


# --- protocol ---------------------------------------------------------------------------------


def test_progress_and_error_lines_round_trip():
    for done, total, label in ((0, 10, "auditing"), (7, 7, "embedding"), (3, 12, "")):
        assert protocol.parse_progress(protocol.format_progress(done, total, label)) == (done, total)
    assert protocol.parse_progress("index abc written: progress: 1/2") is None
    assert protocol.parse_progress("error: out of memory") is None
    line = protocol.format_error("no such\nfile:  x.nii")
    assert line == "error: no such file: x.nii" and "\n" not in line
    assert protocol.parse_error(line) == "no such file: x.nii"
    assert protocol.parse_error(protocol.format_progress(1, 2)) is None


def test_cli_writes_the_protocol(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(protocol.PROGRESS_ENV, "1")
    cli.make_progress("auditing")(4, 9)
    assert protocol.parse_progress(capsys.readouterr().err) == (4, 9)
    assert cli.main(["audit", "/no/such/index", "/no/such/volume.nii.gz", "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and protocol.parse_error(error[0])


# --- command lines ----------------------------------------------------------------------------


def test_audit_arguments():
    args = commands.audit_arguments(
        "py", "idx", ["a.nrrd", Path("b.nrrd")], "out", device="cpu", batch_size=8, alpha=0.01, checkpoint="/w/core.pth"
    )
    assert args == [
        "py",
        "-m",
        "MemorizationIndexLib.cli",
        "audit",
        "idx",
        "a.nrrd",
        "b.nrrd",
        "--out",
        "out",
        "--no-report",
        "--device",
        "cpu",
        "--batch-size",
        "8",
        "--alpha",
        "0.01",
        "--checkpoint",
        "/w/core.pth",
    ]
    plain = commands.audit_arguments("py", "idx", ["a.nrrd"], "out")
    assert "--alpha" not in plain and "--checkpoint" not in plain
    parsed = cli.build_parser().parse_args(args[3:])
    assert (parsed.device, parsed.batch_size, parsed.alpha, parsed.no_report) == ("cpu", 8, 0.01, True)


def test_build_index_arguments():
    args = commands.build_index_arguments(
        "py",
        ["train"],
        "out",
        holdout=["held"],
        encoder="mri-core",
        checkpoint="c.pth",
        device="cuda",
        batch_size=4,
        axis="axial",
    )
    parsed = cli.build_parser().parse_args(args[3:])
    assert args[:4] == ["py", "-m", "MemorizationIndexLib.cli", "build-index"]
    assert (parsed.encoder, parsed.checkpoint, parsed.device, parsed.batch_size, parsed.axis) == (
        "mri-core",
        "c.pth",
        "cuda",
        4,
        "axial",
    )
    assert [str(p) for p in parsed.holdout] == ["held"]
    default = commands.build_index_arguments("py", ["train"], "out", checkpoint="c.pth")
    assert "--checkpoint" not in default and "--holdout" not in default, "the checkpoint is for MRI-CORE only"


def test_child_environment_and_output_interpretation():
    env = commands.child_environment("/lib", {"PYTHONPATH": "/other", "HOME": "/h"})
    assert env["PYTHONPATH"] == os.pathsep.join(["/lib", "/other"]) and env["HOME"] == "/h"
    assert env[protocol.PROGRESS_ENV] == "1" and env["PYTHONUNBUFFERED"] == "1"
    log = ["warning: few subjects", "error: first", "error: index folder missing"]
    assert commands.failure_message(log, 2) == "index folder missing"
    assert "exit code 1" in commands.failure_message(["Traceback", "boom"], 1)
    assert commands.index_summary(["x", "index ab12 written to /i: 3 slices"]) == "index ab12 written to /i: 3 slices"
    assert commands.index_summary(["x"]) is None


def test_volume_progress_over_several_volumes():
    progress = commands.VolumeProgress(2)
    assert progress.update(5, 10) == pytest.approx(0.25)
    assert progress.update(10, 10) == pytest.approx(0.5)
    assert progress.update(1, 4) == pytest.approx(0.625), "a lower count starts the next volume"
    assert progress.update(4, 4) == pytest.approx(1.0)


# --- background process (a real child) --------------------------------------------------------


def _child(script: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(script)]


def _env() -> dict:
    return commands.child_environment(LIBRARY_PARENT, os.environ)


def _work_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="MemorizationIndexTest-"))
    (path / "volume_0.nrrd").write_bytes(b"x")
    return path


def test_background_process_parses_progress_and_removes_the_work_dir():
    work = _work_dir()
    progress, lines, finished = [], [], []
    script = """
        import sys
        from MemorizationIndexLib.protocol import format_progress
        for done in range(4):
            print(format_progress(done, 3, "auditing"), file=sys.stderr)
        print("volume scored")
    """

    def on_finished(code: int) -> None:
        assert work.is_dir(), "the results are read before the folder goes"
        finished.append(code)

    process = BackgroundProcess(
        _child(script),
        env=_env(),
        on_line=lines.append,
        on_progress=lambda d, t: progress.append((d, t)),
        on_finished=on_finished,
        work_dir=work,
    )
    assert process.wait(timeout=60) == 0
    assert progress == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert lines == ["volume scored"] == process.log
    assert finished == [0] and not process.running and not process.cancelled
    assert not work.exists()


def test_background_process_failure_reports_the_error_and_removes_the_work_dir():
    work = _work_dir()
    script = """
        import sys
        from MemorizationIndexLib.protocol import format_error
        print(format_error("index folder missing"), file=sys.stderr)
        sys.exit(2)
    """
    process = BackgroundProcess(_child(script), env=_env(), work_dir=work)
    assert process.wait(timeout=60) == 2
    assert commands.failure_message(process.log, 2) == "index folder missing"
    assert not work.exists()


def test_work_dir_is_removed_even_when_the_completion_callback_fails():
    work = _work_dir()

    def on_finished(code: int) -> None:
        raise RuntimeError("could not load the results")

    process = BackgroundProcess(_child("pass"), env=_env(), on_finished=on_finished, work_dir=work)
    with pytest.raises(RuntimeError):
        process.wait(timeout=60)
    assert not work.exists()


def test_work_dir_is_removed_when_the_process_cannot_start():
    work = _work_dir()
    with pytest.raises(OSError):
        BackgroundProcess([str(work / "no-such-program")], work_dir=work)
    assert not work.exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child of an exited parent may linger as a zombie until reaped by init.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(os.name == "nt", reason="checks POSIX process groups")
def test_cancel_kills_the_process_and_its_children_and_removes_the_work_dir(tmp_path):
    work = _work_dir()
    pid_file = tmp_path / "grandchild.pid"
    script = f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        print("started", flush=True)
        time.sleep(120)
    """
    finished = []
    process = BackgroundProcess(_child(script), env=_env(), on_finished=finished.append, work_dir=work)
    deadline = time.monotonic() + 60
    while "started" not in process.log:
        assert process.poll() and time.monotonic() < deadline
        time.sleep(0.02)
    start = time.monotonic()
    process.cancel()
    code = process.wait(timeout=30)
    assert code is not None and code != 0 and time.monotonic() - start < 10
    assert process.cancelled and finished == [code]
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild), "cancel must stop the child's own children too"
    assert not work.exists()
    process.cancel()  # after the end: nothing to do


# --- out-of-memory retry ----------------------------------------------------------------------


def test_out_of_memory_is_retried_with_half_the_batch():
    tried = []

    def run(batch: int) -> int:
        tried.append(batch)
        if batch > 8:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return batch

    assert halving_batch_on_out_of_memory(run, 32) == 8 and tried == [32, 16, 8]
    with pytest.raises(MemoryError):
        halving_batch_on_out_of_memory(lambda batch: (_ for _ in ()).throw(MemoryError()), 4)
    with pytest.raises(RuntimeError, match="shape"):
        halving_batch_on_out_of_memory(lambda batch: (_ for _ in ()).throw(RuntimeError("bad shape")), 4)
    assert is_out_of_memory(MemoryError()) and not is_out_of_memory(ValueError("x"))


# --- dependencies (Slicer's packaging and PyTorchUtils replaced by fakes) -----------------------


class _FakeTorchLogic:
    installed = False
    version = "2.5.1+cu121"
    install_calls: list = []

    def torchInstalled(self) -> bool:
        return self.installed

    @property
    def torch(self):
        return types.SimpleNamespace(__version__=self.version)

    def installTorch(self, askConfirmation: bool, torchVersionRequirement: str):
        self.install_calls.append((askConfirmation, torchVersionRequirement))
        return None if askConfirmation else object()


@pytest.fixture
def fake_slicer(monkeypatch):
    calls = {"pip_ensure": []}
    state = {"declined": False, "satisfied": True}

    def pip_ensure(requirements, **kwargs):
        calls["pip_ensure"].append((requirements, kwargs))
        if state["declined"]:
            raise RuntimeError("User declined package installation")

    packaging = types.SimpleNamespace(
        load_requirements=lambda path: ["faiss-cpu>=1.8"],
        pip_ensure=pip_ensure,
        pip_check=lambda requirements: state["satisfied"],
    )
    slicer_module = types.ModuleType("slicer")
    slicer_module.packaging = packaging
    monkeypatch.setitem(sys.modules, "slicer", slicer_module)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=_FakeTorchLogic))
    _FakeTorchLogic.installed, _FakeTorchLogic.version, _FakeTorchLogic.install_calls = True, "2.5.1+cu121", []
    return calls, state


def test_dependencies_use_pip_ensure_with_the_prompt(fake_slicer):
    calls, state = fake_slicer
    assert dependencies.ensure_dependencies("requirements.txt", ask_confirmation=False)
    ((requirements, kwargs),) = calls["pip_ensure"]
    assert requirements == ["faiss-cpu>=1.8"]
    assert kwargs == {"prompt_install": False, "requester": "MemorizationIndex"}
    state["declined"] = True
    assert not dependencies.ensure_dependencies("requirements.txt")
    state["declined"], state["satisfied"] = False, False
    assert not dependencies.ensure_dependencies("requirements.txt"), "not installed (e.g. testing mode) is not ready"


def test_torch_is_installed_through_the_pytorch_extension(fake_slicer):
    calls, _ = fake_slicer
    _FakeTorchLogic.installed = False
    assert not dependencies.ensure_dependencies("requirements.txt", ask_confirmation=True), "declined"
    assert not calls["pip_ensure"], "no requirement is installed before torch"
    assert dependencies.ensure_torch(ask_confirmation=False)
    requirement = dependencies.TORCH_REQUIREMENT
    assert _FakeTorchLogic.install_calls == [(True, requirement), (False, requirement)]


def test_too_old_or_missing_torch_is_one_line_error(fake_slicer, monkeypatch):
    _FakeTorchLogic.version = "1.13.1"
    with pytest.raises(RuntimeError, match="too old") as error:
        dependencies.ensure_torch()
    assert "\n" not in str(error.value)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    with pytest.raises(RuntimeError, match="PyTorch' extension"):
        dependencies.ensure_torch()
    assert dependencies.torch_version_ok("2.2.0+cpu") and not dependencies.torch_version_ok("2.1.2")


# --- layout and results text ------------------------------------------------------------------


def test_layout_xml_has_the_two_slice_views_and_the_plot_view():
    root = ET.fromstring(layout.layout_xml())
    views = {v.get("singletontag"): v.get("class") for v in root.iter("view")}
    assert views == {
        layout.QUERY_VIEW: "vtkMRMLSliceNode",
        layout.NEIGHBOR_VIEW: "vtkMRMLSliceNode",
        layout.PLOT_VIEW_TAG: "vtkMRMLPlotViewNode",
    }
    assert layout.LAYOUT_ID >= 100


def _summary(**changes) -> dict:
    summary = {
        "volume": "gen <1>",
        "axis": "axial",
        "slices_total": 40,
        "slices_scored": 35,
        "slices_skipped_empty": 5,
        "mean_mi": 0.51234,
        "mean_oni": -0.02,
        "flagged": 2,
        "flagged_slices": [3, 9],
        "flagged_fraction": 2 / 35,
        "threshold": {"alpha": 0.001, "mi": 0.97, "z": 2.9, "oni": -0.94, "similarity": 0.8},
    }
    return {**summary, **changes}


def test_summary_html(tmp_path):
    text = results_html.summary_html(_summary(), {"type": "holdout", "n": 120})
    assert "<b>gen &lt;1&gt;</b>" in text and "35 of 40 slices scored" in text and "5 empty skipped" in text
    assert "flagged: 2 slices (5.7%)</b>: 3, 9" in text and "p &lt; 0.001" in text and "null: holdout (n=120)" in text
    unreachable = {"alpha": 0.001, "mi": 1.0, "z": float("inf"), "oni": -1.0, "similarity": float("inf")}
    text = results_html.summary_html(_summary(threshold=unreachable), {"type": "holdout", "n": 40})
    assert "<b>threshold: alpha 0.001 is out of reach of this index&#x27;s null (40 scores" in text
    assert "inf" not in text
    many = results_html.summary_html(_summary(flagged=40, flagged_slices=list(range(40))))
    listed = many.split("</b>: ")[1].split(" ...")[0]
    assert listed.split(", ") == [str(k) for k in range(results_html.MAX_LISTED_SLICES)] and "null:" not in many
    (tmp_path / "config.json").write_text('{"null": {"type": "train-split", "n": 80}}')
    assert results_html.index_null(tmp_path) == {"type": "train-split", "n": 80}
    assert results_html.index_null(tmp_path / "missing") is None and results_html.index_null(None) is None
    unverified = audit_status(
        {"threshold": {"alpha": 0.001}, "verification": {"used": False, "reason": "no thumbnails <here>"}}
    )
    text = results_html.summary_html(_summary(status=unverified))
    assert "<b>Verification could not run: no thumbnails &lt;here&gt;.</b>" in text
    assert "<b>Flags rest on the global score alone" in text and "calibration" not in text
    bands = [{"roughness_from": None, "roughness_to": 0.15, "n": 120, "threshold": 0.41}]
    bands.append({"roughness_from": 0.15, "roughness_to": None, "n": 120, "threshold": 0.32})
    two_parts = audit_status(
        {
            "threshold": {"alpha": 0.001},
            "verification": {
                "used": True,
                "threshold": 0.41,
                "bands": [
                    b | {"reproduced_threshold": 0.2, "bent_threshold": 0.5 + i / 10} for i, b in enumerate(bands)
                ],
                "min_copy_score": 0.25,
                "min_bent_score": 0.45,
            },
        }
    )
    assert (two_parts.reproduced_threshold, two_parts.bent_threshold) == (0.2, 0.6)
    text = results_html.summary_html(_summary(status=two_parts))
    assert "region reproduced near-exactly scores above 0.2 by itself" in text
    floors = "if its score before the bend is at least 0.25 or its bent score at least 0.45."
    assert f"scores above 0.6 (verified_bent), {floors}" in text
    banded = audit_status(
        {"threshold": {"alpha": 0.001}, "verification": {"used": True, "k": 6, "threshold": 0.41, "bands": bands}}
    )
    assert (banded.verified_threshold, banded.sharpest_threshold) == (0.41, 0.32)
    text = results_html.summary_html(_summary(status=banded))
    assert "A verified score above 0.41 is a copy" in text and "the sharpest need only 0.32" in text
    few = audit_status(
        {"threshold": {"alpha": 0.001}, "calibration": {"holds": True, "reason": "", "few_training_subjects": True}}
    )
    text = results_html.summary_html(_summary(status=few))
    assert "nulls come from held-out splits of few training subjects" in text and "--holdout" in text
    one_band = audit_status({"threshold": {"alpha": 0.001}, "verification": {"used": True, "threshold": 0.41}})
    assert one_band.sharpest_threshold is None
    assert "sharpest" not in results_html.summary_html(_summary(status=one_band))
    assert banded.reproduced_threshold is None and "near-exactly" not in text
    assert banded.bent_threshold is None and "bent" not in text
