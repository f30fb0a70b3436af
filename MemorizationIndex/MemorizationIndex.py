"""MemorizationIndex: audit generated MRI volumes for copies of training slices, inside 3D Slicer.

The module is a thin panel over ``MemorizationIndexLib``: the MRML work (heatmap, nearest
neighbours, table, chart) lives in ``MemorizationIndexLib.mrml`` and is tested headless; long
work runs in a background process (the library's command line) so Slicer stays responsive.

Console one-liner (blocking)::

    result = slicer.util.getModuleLogic("MemorizationIndex").process(volumeNode, "/path/to/index")
"""

import enum
import logging
import os
import pathlib
import shutil
import sys
import tempfile
import time
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Decimals, SingleStep, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from MemorizationIndexLib.commands import (
    VolumeProgress,
    audit_arguments,
    build_index_arguments,
    child_environment,
    failure_message,
    index_summary,
)
from MemorizationIndexLib.dependencies import ensure_dependencies, torch_installed
from MemorizationIndexLib.layout import LAYOUT_ID, NEIGHBOR_VIEW, PLOT_VIEW_TAG, QUERY_VIEW, layout_xml
from MemorizationIndexLib.process import BackgroundProcess
from MemorizationIndexLib.protocol import INDEX_ATTRIBUTE, INPUT_ATTRIBUTE
from MemorizationIndexLib.results_html import index_null, summary_html

#
# MemorizationIndex
#


class MemorizationIndex(ScriptedLoadableModule):
    """Module description (shown in the Help & Acknowledgement section)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Memorization Index")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = []
        self.parent.contributors = ["MemorizationIndex contributors"]
        self.parent.helpText = _(
            "Audit generated MRI volumes for memorized training data. Each slice of the input volume gets a "
            "calibrated Memorization Index (MI, 0 = novel, 1 = copy), ONI and p-value against a reference index "
            "of the training set; flagged slices are shown as a colour overlay, next to the training slice they "
            "resemble most. Console: <code>slicer.util.getModuleLogic('MemorizationIndex').process(volumeNode, "
            "indexDir)</code>."
        )
        self.parent.acknowledgementText = _(
            "Scores follow the calibrated Memorization Index of Deo et al. (arXiv 2602.13066, 2026), with its ONI. "
            "Default encoder: EfficientNet-Lite0 with ImageNet weights; optional MRI-CORE checkpoints."
        )


#
# Parameter node
#


class EncoderChoice(enum.Enum):
    DEFAULT = "default"
    MRI_CORE = "mri-core"

    @staticmethod
    def label(value) -> str:
        return {"default": _("Default (EfficientNet-Lite0, offline)"), "mri-core": _("MRI-CORE (checkpoint file)")}[
            value.value
        ]


class DeviceChoice(enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    GPU = "cuda"

    @staticmethod
    def label(value) -> str:
        return {"auto": _("Auto (GPU when available)"), "cpu": _("CPU"), "cuda": _("GPU (CUDA)")}[value.value]


class AxisChoice(enum.Enum):
    AUTO = "auto"
    AXIAL = "axial"
    CORONAL = "coronal"
    SAGITTAL = "sagittal"

    @staticmethod
    def label(value) -> str:
        return value.value


@parameterNodeWrapper
class MemorizationIndexParameterNode:
    """Everything the panel shows, saved with the scene."""

    inputVolume: vtkMRMLScalarVolumeNode
    auditAllVolumes: bool = False
    indexDirectory: pathlib.Path
    encoder: EncoderChoice = EncoderChoice.DEFAULT
    checkpointPath: pathlib.Path
    device: DeviceChoice = DeviceChoice.AUTO
    batchSize: Annotated[int, WithinRange(1, 1024)] = 32
    alpha: Annotated[float, WithinRange(1e-6, 0.5), Decimals(6), SingleStep(0.001)] = 0.001
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.6
    runInBackground: bool = True
    trainingPath: pathlib.Path
    holdoutPath: pathlib.Path
    buildAxis: AxisChoice = AxisChoice.AUTO
    buildIndexDirectory: pathlib.Path


def _pathOrNone(value) -> str | None:
    """An unset ctkPathLineEdit reads as Path('') == Path('.'): treat both as 'not given'."""
    if value is None:
        return None
    text = str(value).strip()
    return None if text in ("", ".") else text


#
# Widget
#


class MemorizationIndexWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin panel: binds the parameter node, starts/cancels work, shows the summary."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._lastResult = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MemorizationIndex.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MemorizationIndexLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.buildButton.connect("clicked(bool)", self.onBuildButton)
        self.ui.showLayoutButton.connect("clicked(bool)", self.onShowLayoutButton)
        self.ui.jumpButton.connect("clicked(bool)", self.onJumpButton)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.updateDeviceLabel)
        self.ui.progressBar.hide()
        self.ui.showLayoutButton.enabled = False
        self.ui.jumpButton.enabled = False

        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.logic is not None:
            self.logic.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: MemorizationIndexParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()
            self.updateDeviceLabel()

    def _checkCanApply(self, caller=None, event=None) -> None:
        if self.logic.isRunning:
            return
        p = self._parameterNode
        hasInput = bool(p and (p.inputVolume or p.auditAllVolumes))
        hasIndex = bool(p and _pathOrNone(p.indexDirectory))
        self.ui.applyButton.enabled = hasInput and hasIndex
        self.ui.applyButton.toolTip = (
            _("Audit the input volume against the reference index")
            if hasInput and hasIndex
            else _("Select an input volume and a reference index folder")
        )
        hasTraining = bool(p and _pathOrNone(p.trainingPath) and _pathOrNone(p.buildIndexDirectory))
        self.ui.buildButton.enabled = hasTraining
        self.ui.checkpointPathLineEdit.enabled = bool(p and p.encoder == EncoderChoice.MRI_CORE) or bool(
            p and _pathOrNone(p.checkpointPath)
        )

    def updateDeviceLabel(self, *args) -> None:
        choice = self._parameterNode.device.value if self._parameterNode else "auto"
        self.ui.deviceStatusLabel.text = self.logic.deviceDescription(choice)

    # --- running -----------------------------------------------------------------------------

    def _setRunning(self, running: bool, button) -> None:
        for other in (self.ui.applyButton, self.ui.buildButton):
            if other is not button:
                other.enabled = not running
        if running:
            button.setProperty("idleText", button.text)
            button.text = _("Cancel")
            button.enabled = True
            self.ui.progressBar.value = 0
            self.ui.progressBar.show()
        else:
            idle = button.property("idleText")
            if idle:
                button.text = idle
            self.ui.progressBar.hide()
            self._checkCanApply()

    def _onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * max(0.0, min(1.0, fraction))))
        if message:
            self.ui.statusLabel.text = message

    def onApplyButton(self) -> None:
        if self.logic.isRunning:
            self.logic.cancel()
            return
        p = self._parameterNode
        volumes = self.logic.loadedVolumes() if p.auditAllVolumes else [p.inputVolume]
        volumes = [v for v in volumes if v is not None and not v.GetAttribute(INPUT_ATTRIBUTE)]
        if not volumes:
            slicer.util.errorDisplay(_("No input volume to audit."))
            return
        options = self._auditOptions()
        with slicer.util.tryWithErrorDisplay(_("Failed to audit the volume."), waitCursor=True):
            if not self.logic.ensureDependencies():
                return
            if not p.runInBackground:
                self._setRunning(True, self.ui.applyButton)
                try:
                    results = []
                    for node in volumes:
                        results.append(
                            self.logic.process(
                                node,
                                _pathOrNone(p.indexDirectory),
                                opacity=p.overlayOpacity,
                                **options,
                                progress=lambda done, total: (
                                    self._onProgress(done / max(total, 1), ""),
                                    slicer.app.processEvents(),
                                ),
                            )
                        )
                    self._showSummary(results)
                finally:
                    self._setRunning(False, self.ui.applyButton)
                return
            self.logic.startAudit(
                volumes,
                _pathOrNone(p.indexDirectory),
                options,
                progressCallback=self._onProgress,
                completedCallback=self._onAuditDone,
            )
            self._setRunning(True, self.ui.applyButton)  # once started: a failed start leaves the panel idle
            self.ui.statusLabel.text = _("Auditing {count} volume(s) in the background...").format(count=len(volumes))

    def _auditOptions(self) -> dict:
        p = self._parameterNode
        return {
            "checkpoint": _pathOrNone(p.checkpointPath),
            "device": p.device.value,
            "batch_size": int(p.batchSize),
            "alpha": float(p.alpha),
        }

    def _onAuditDone(self, results, error: str | None) -> None:
        self._setRunning(False, self.ui.applyButton)
        if error:
            self.ui.statusLabel.text = error
            if not self.logic.cancelRequested:
                slicer.util.errorDisplay(error)
            return
        self.logic.showResults(results[-1], opacity=self._parameterNode.overlayOpacity)
        self._showSummary(results)

    def _showSummary(self, results) -> None:
        if not results:
            return
        self._lastResult = results[-1]
        self.ui.resultsLabel.text = "<br><br>".join(self.logic.summaryHtml(r) for r in results)
        self.ui.statusLabel.text = _("Done: {count} volume(s) audited.").format(count=len(results))
        self.ui.showLayoutButton.enabled = True
        self.ui.jumpButton.enabled = True
        self.ui.resultsCollapsibleButton.collapsed = False

    def onShowLayoutButton(self) -> None:
        if self._lastResult is not None:
            self.logic.showResults(self._lastResult, opacity=self._parameterNode.overlayOpacity)

    def onJumpButton(self) -> None:
        if self._lastResult is not None:
            self.logic.jumpToMostSuspicious(self._lastResult)

    def onBuildButton(self) -> None:
        if self.logic.isRunning:
            self.logic.cancel()
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to build the reference index."), waitCursor=True):
            if not self.logic.ensureDependencies():
                return
            self.logic.startBuildIndex(
                [_pathOrNone(p.trainingPath)],
                _pathOrNone(p.buildIndexDirectory),
                holdout=[_pathOrNone(p.holdoutPath)] if _pathOrNone(p.holdoutPath) else None,
                encoder=p.encoder.value,
                checkpoint=_pathOrNone(p.checkpointPath),
                device=p.device.value,
                batchSize=int(p.batchSize),
                axis=p.buildAxis.value,
                progressCallback=self._onProgress,
                completedCallback=self._onBuildDone,
            )
            self._setRunning(True, self.ui.buildButton)
            self.ui.statusLabel.text = _("Building the reference index in the background...")

    def _onBuildDone(self, message: str, error: str | None) -> None:
        self._setRunning(False, self.ui.buildButton)
        if error:
            self.ui.statusLabel.text = error
            if not self.logic.cancelRequested:
                slicer.util.errorDisplay(error)
            return
        self.ui.statusLabel.text = message
        self._parameterNode.indexDirectory = pathlib.Path(_pathOrNone(self._parameterNode.buildIndexDirectory))


#
# Logic
#


class MemorizationIndexLogic(ScriptedLoadableModuleLogic):
    """Audits and index builds, blocking (console, tests) or in a background process (the panel).

    All MRML work goes through ``MemorizationIndexLib.mrml``; the background process, its command
    lines and its output format are in ``MemorizationIndexLib.process``, ``.commands`` and ``.protocol``.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._process: BackgroundProcess | None = None
        self._timer = None
        self.cancelRequested = False

    def getParameterNode(self):
        return MemorizationIndexParameterNode(super().getParameterNode())

    @property
    def isRunning(self) -> bool:
        # Cleared when the completion callback has run (not merely when the process exited).
        return self._process is not None

    # --- dependencies --------------------------------------------------------------------------

    @staticmethod
    def moduleDirectory() -> str:
        return os.path.dirname(os.path.abspath(__file__))

    def requirementsPath(self) -> str:
        return os.path.join(self.moduleDirectory(), "Resources", "requirements.txt")

    def ensureDependencies(self, askConfirmation: bool = True) -> bool:
        """Install PyTorch (PyTorch extension) and the requirements, asking first; False when declined."""
        return ensure_dependencies(self.requirementsPath(), ask_confirmation=askConfirmation)

    @staticmethod
    def deviceDescription(choice: str) -> str:
        """What the device setting means on this computer (without installing anything)."""
        if not torch_installed():
            return _("PyTorch not installed yet (installed on first use)")
        import torch

        hasGpu = torch.cuda.is_available()
        gpuName = torch.cuda.get_device_name(0) if hasGpu else ""
        if choice == "cpu":
            return _("Using the CPU")
        if choice == "cuda":
            return _("Using GPU: {name}").format(name=gpuName) if hasGpu else _("No CUDA GPU found: choose CPU or Auto")
        return _("Using GPU: {name}").format(name=gpuName) if hasGpu else _("Using the CPU (no CUDA GPU found)")

    # --- blocking path (console, tests) --------------------------------------------------------

    def process(
        self,
        volumeNode,
        indexDir,
        *,
        showResults: bool = True,
        opacity: float = 0.6,
        checkpoint=None,
        device: str = "auto",
        batch_size: int = 32,
        alpha: float | None = None,
        progress=None,
        cancel=None,
        **options,
    ):
        """Audit ``volumeNode`` against the index in ``indexDir`` and show the result (blocking).

        Returns a ``MemorizationIndexLib.mrml.MrmlAuditResult`` (``heatmap_node``,
        ``neighbor_node``, ``table_node``, ``plot_chart_node``, ``audit``).
        """
        if volumeNode is None:
            raise ValueError("volumeNode is required")
        if not indexDir:
            raise ValueError("indexDir (a reference index folder) is required")
        from MemorizationIndexLib.mrml import audit_volume_node

        start = time.time()
        result = audit_volume_node(
            slicer.mrmlScene,
            volumeNode,
            indexDir,
            checkpoint=checkpoint,
            device=device,
            batch_size=batch_size,
            alpha=alpha,
            progress=progress,
            cancel=cancel,
            **options,
        )
        logging.info(
            f"MemorizationIndex: audited {volumeNode.GetName()} in {time.time() - start:.1f} s: "
            f"{result.audit.flagged} of {len(result.audit.scores)} slices flagged"
        )
        if showResults:
            self.showResults(result, opacity=opacity)
        return result

    # --- background path (the panel) ----------------------------------------------------------

    @staticmethod
    def pythonExecutable() -> str:
        return shutil.which("PythonSlicer") or sys.executable

    def _start(self, args: list, progressCallback, onFinished, nVolumes: int = 1, workDir: str | None = None) -> None:
        """Run ``args`` in a BackgroundProcess polled by a QTimer; ``onFinished(returnCode, log)``."""
        self.cancelRequested = False
        volumeProgress = VolumeProgress(nVolumes)

        def onProgress(done: int, total: int) -> None:
            if progressCallback:
                progressCallback(
                    volumeProgress.update(done, total), _("{done}/{total} slices").format(done=done, total=total)
                )

        def onCompleted(returnCode: int) -> None:
            process, self._process = self._process, None
            self._timer.stop()
            onFinished(returnCode, process.log)

        logging.info("MemorizationIndex: running " + " ".join(args))
        environment = child_environment(self.moduleDirectory(), slicer.util.startupEnvironment())
        self._process = BackgroundProcess(
            args,
            env=environment,
            on_line=logging.info,
            on_progress=onProgress,
            on_finished=onCompleted,
            work_dir=workDir,
        )
        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.timeout.connect(self._process.poll)
        self._timer.start()

    def _errorText(self, returnCode: int, log: list) -> str:
        return _("Cancelled.") if self.cancelRequested else failure_message(log, returnCode)

    def startAudit(self, volumeNodes, indexDir, options: dict, progressCallback=None, completedCallback=None) -> None:
        """Audit volumes in a background process running the library's command line.

        The volumes are written to a temporary folder (in their own voxel order, so slice
        numbers match the nodes), audited with ``python -m MemorizationIndexLib.cli audit``, and
        the results are turned into nodes when it finishes: ``completedCallback(results, error)``.
        The temporary folder is removed when the process has finished, failed or been cancelled.
        """
        if self.isRunning:
            raise RuntimeError(_("Another audit or index build is still running."))
        workDir = tempfile.mkdtemp(prefix="MemorizationIndex-")
        try:
            paths = []
            for i, node in enumerate(volumeNodes):
                paths.append(os.path.join(workDir, f"volume_{i}.nrrd"))
                slicer.util.exportNode(node, paths[-1])
            outDir = os.path.join(workDir, "audit")
            args = audit_arguments(
                self.pythonExecutable(),
                indexDir,
                paths,
                outDir,
                device=options.get("device", "auto"),
                batch_size=options.get("batch_size", 32),
                alpha=options.get("alpha"),
                checkpoint=options.get("checkpoint"),
            )

            def onFinished(returnCode: int, log: list) -> None:
                if returnCode != 0:
                    completedCallback([], self._errorText(returnCode, log))
                    return
                try:
                    results = self.loadAuditResults(volumeNodes, paths, outDir, indexDir)
                except Exception as exc:
                    logging.exception("MemorizationIndex: could not load the audit results")
                    completedCallback([], str(exc))
                    return
                completedCallback(results, None)

            self._start(args, progressCallback, onFinished, nVolumes=len(paths), workDir=workDir)
        except BaseException:
            shutil.rmtree(workDir, ignore_errors=True)
            raise

    def loadAuditResults(self, volumeNodes, paths, outDir, indexDir):
        """Turn a command-line audit's outputs into result nodes for the volumes it audited."""
        from MemorizationIndexLib.mrml import add_audit_nodes, read_audit_outputs
        from MemorizationIndexLib.reference_index import ReferenceIndex

        folder = read_audit_outputs(outDir)
        index = ReferenceIndex.load(indexDir)
        results = []
        for node, path in zip(volumeNodes, paths):
            key = path if path in folder.audits else str(pathlib.Path(path))
            audit = folder.audits.get(key)
            if audit is None:
                raise RuntimeError(f"the audit output has no entry for {node.GetName()}")
            audit.volume = node.GetName()
            results.append(
                add_audit_nodes(
                    slicer.mrmlScene,
                    node,
                    audit,
                    index,
                    copy_masks=folder.copy_masks.get(key),
                    status=folder.status.get(key),
                )
            )
        return results

    def startBuildIndex(
        self,
        trainingPaths,
        outDir,
        *,
        holdout=None,
        encoder="default",
        checkpoint=None,
        device="auto",
        batchSize=32,
        axis="auto",
        progressCallback=None,
        completedCallback=None,
    ) -> None:
        """Build a reference index in a background process (``python -m MemorizationIndexLib.cli build-index``)."""
        if self.isRunning:
            raise RuntimeError(_("Another audit or index build is still running."))
        args = build_index_arguments(
            self.pythonExecutable(),
            trainingPaths,
            outDir,
            holdout=holdout or (),
            encoder=encoder,
            checkpoint=checkpoint,
            device=device,
            batch_size=batchSize,
            axis=axis,
        )

        def onFinished(returnCode: int, log: list) -> None:
            if returnCode != 0:
                completedCallback("", self._errorText(returnCode, log))
            else:
                completedCallback(index_summary(log) or _("Index written to {path}").format(path=outDir), None)

        self._start(args, progressCallback, onFinished)

    def cancel(self) -> None:
        """Stop the running background work (the process and its children are killed)."""
        if self._process is not None:
            self.cancelRequested = True
            self._process.cancel()

    # --- showing results ----------------------------------------------------------------------

    @staticmethod
    def loadedVolumes() -> list:
        return [
            n
            for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            if n.GetImageData() is not None and n.GetAttribute(INPUT_ATTRIBUTE) is None
        ]

    def showResults(self, result, opacity: float = 0.6) -> None:
        """Side-by-side layout (query + heatmap | nearest neighbour, chart below), linked views."""
        from MemorizationIndexLib.mrml_views import show_result_in_slice_views

        if not hasattr(slicer, "app") or slicer.app is None:
            return
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            return
        layoutNode = layoutManager.layoutLogic().GetLayoutNode()
        if not layoutNode.IsLayoutDescription(LAYOUT_ID):
            layoutNode.AddLayoutDescription(LAYOUT_ID, layout_xml())
        layoutManager.setLayout(LAYOUT_ID)
        show_result_in_slice_views(
            slicer.mrmlScene,
            result,
            opacity=opacity,
            query_view_names=(QUERY_VIEW,),
            neighbor_view_names=(NEIGHBOR_VIEW,),
        )
        for view in (QUERY_VIEW, NEIGHBOR_VIEW):
            widget = layoutManager.sliceWidget(view)
            if widget is not None:
                widget.sliceLogic().FitSliceToAll()
        plotView = slicer.mrmlScene.GetSingletonNode(PLOT_VIEW_TAG, "vtkMRMLPlotViewNode")
        if plotView is not None:
            plotView.SetPlotChartNodeID(result.plot_chart_node.GetID())
        self.jumpToMostSuspicious(result)

    @staticmethod
    def jumpToMostSuspicious(result) -> None:
        from MemorizationIndexLib.audit_output import evidence_order
        from MemorizationIndexLib.mrml_views import jump_to_slice

        if not result.audit.scores:
            return
        worst = min(result.audit.scores, key=lambda s: evidence_order(result.audit.volume, s))
        for view in (QUERY_VIEW, NEIGHBOR_VIEW):
            sliceNode = slicer.mrmlScene.GetSingletonNode(view, "vtkMRMLSliceNode")
            if sliceNode is not None:
                jump_to_slice(sliceNode, result.input_node, result.audit.array_axis, worst.slice)

    @staticmethod
    def summaryHtml(result) -> str:
        """The results panel text for one audited volume."""
        return summary_html(result.summary(), index_null(result.heatmap_node.GetAttribute(INDEX_ATTRIBUTE)))


#
# Self-test
#


class MemorizationIndexTest(ScriptedLoadableModuleTest):
    """In-Slicer self-test: a small index from a sample MRI, an audit of a volume with planted copies."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_MemorizationIndex1()

    def test_MemorizationIndex1(self):
        import numpy as np

        self.delayDisplay("Starting the Memorization Index self-test")
        logic = MemorizationIndexLogic()
        if not logic.ensureDependencies(askConfirmation=False):
            self.skipTest("dependencies are not installed")
        from MemorizationIndexLib import mrml, mrml_views

        self.delayDisplay("Building a small reference index")
        queryNode, indexDir = makeSelfTestScenario(pathlib.Path(tempfile.mkdtemp(prefix="MemorizationIndexTest-")))
        result = logic.process(queryNode, str(indexDir), device="cpu", alpha=0.05)

        self.delayDisplay("Checking the result nodes")
        expected = mrml.ijk_to_ras_matrix(queryNode)
        for node in (result.heatmap_node, result.neighbor_node):
            self.assertTrue(np.array_equal(mrml.ijk_to_ras_matrix(node), expected))
            self.assertEqual(node.GetImageData().GetDimensions(), queryNode.GetImageData().GetDimensions())
        self.assertEqual(result.table_node.GetTable().GetNumberOfRows(), len(result.audit.scores))
        heat = mrml.slice_view(slicer.util.arrayFromVolume(result.heatmap_node), result.audit.array_axis)
        for score in result.audit.scores:
            expected = mrml.copy_map_slice(score, None, result.audit.threshold.mi, heat.shape[1:])
            self.assertTrue(np.allclose(heat[score.slice], expected, atol=1e-6))
        flagged = [s for s in result.audit.scores if s.flagged]
        self.assertTrue(flagged, "copied slices must be flagged")
        self.assertEqual(result.missing_neighbors, [])
        rgba = mrml_views.composite_slice_rgba(
            slicer.mrmlScene,
            queryNode,
            result.heatmap_node,
            axis_name=result.audit.axis_name,
            array_axis=result.audit.array_axis,
            slice_index=flagged[0].slice,
        )
        self.assertTrue(mrml_views.overlay_mask(rgba).any(), "the flagged slice must show the colour overlay")
        self.delayDisplay("Test passed")


def makeSelfTestScenario(work: pathlib.Path):
    """A small index and query from Slicer's MRHead sample: returns (query volume node, index folder).

    The head is split into two "subjects" (the two halves along the slowest axis) that form the
    index; the query holds every 8th slice of the first half, i.e. copies of training slices.
    """
    import SampleData
    import SimpleITK as sitk
    import sitkUtils

    from MemorizationIndexLib.index_build import BuildOptions, build_index

    source = SampleData.downloadSample("MRHead")
    image = sitkUtils.PullVolumeFromSlicer(source)
    array = sitk.GetArrayFromImage(image)
    half = array.shape[0] // 2
    for name, part in (("a", array[:half]), ("b", array[half:])):
        piece = sitk.GetImageFromArray(part)
        piece.SetSpacing(image.GetSpacing())
        piece.SetDirection(image.GetDirection())
        piece.SetOrigin(image.GetOrigin())
        sitk.WriteImage(piece, str(work / f"{name}.nrrd"))
    indexDir = work / "index"
    build_index([work / "a.nrrd", work / "b.nrrd"], indexDir, BuildOptions(reference_copies=False, overwrite=True))
    query = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "a.nrrd")))
    queryNode = slicer.util.addVolumeFromArray(query[::8].copy(), name="query")
    queryNode.SetSpacing(source.GetSpacing()[0], source.GetSpacing()[1], source.GetSpacing()[2] * 8)
    directions = vtk.vtkMatrix4x4()
    source.GetIJKToRASDirectionMatrix(directions)
    queryNode.SetIJKToRASDirectionMatrix(directions)
    slicer.mrmlScene.RemoveNode(source)
    return queryNode, indexDir
