"""In-Slicer tests of the MemorizationIndex module (run by ctest inside the Slicer application).

The headless tests (Testing/test_mrml.py, pytest + slicer-core) cover the MRML nodes in depth;
these cover what only the application has: the blocking console path, the background process
(command line + QTimer polling, results loaded as nodes afterwards) and cancelling it.
"""

import pathlib
import tempfile
import time
import unittest

import numpy as np
import qt
import slicer

from MemorizationIndex import MemorizationIndexLogic, makeSelfTestScenario
from MemorizationIndexLib.protocol import INPUT_ATTRIBUTE


def waitUntil(condition, timeoutSeconds=600.0):
    start = time.time()
    while not condition():
        if time.time() - start > timeoutSeconds:
            raise AssertionError("timed out waiting for the background process")
        slicer.app.processEvents(qt.QEventLoop.AllEvents, 100)
        time.sleep(0.05)


class MemorizationIndexModuleTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        slicer.mrmlScene.Clear()
        cls.logic = MemorizationIndexLogic()
        if not cls.logic.ensureDependencies(askConfirmation=False):
            raise unittest.SkipTest("the module's Python dependencies are not installed")
        cls.queryNode, cls.indexDir = makeSelfTestScenario(
            pathlib.Path(tempfile.mkdtemp(prefix="MemorizationIndexModuleTest-"))
        )

    def test_blocking_and_background_paths_agree(self):
        from MemorizationIndexLib import mrml

        blocking = self.logic.process(self.queryNode, str(self.indexDir), device="cpu", alpha=0.05, showResults=False)
        outcome = {}
        progress = []
        self.logic.startAudit(
            [self.queryNode],
            str(self.indexDir),
            {"device": "cpu", "batch_size": 16, "alpha": 0.05},
            progressCallback=lambda fraction, message: progress.append(fraction),
            completedCallback=lambda results, error: outcome.update(results=results, error=error),
        )
        waitUntil(lambda: "error" in outcome)
        self.assertIsNone(outcome["error"])
        self.assertTrue(progress and progress[-1] == 1.0, "progress lines from the command line must reach the bar")
        background = outcome["results"][0]
        np.testing.assert_array_equal(
            mrml.ijk_to_ras_matrix(background.heatmap_node), mrml.ijk_to_ras_matrix(self.queryNode)
        )
        self.assertEqual([s.slice for s in background.audit.scores], [s.slice for s in blocking.audit.scores])
        np.testing.assert_allclose(
            slicer.util.arrayFromVolume(background.heatmap_node),
            slicer.util.arrayFromVolume(blocking.heatmap_node),
            rtol=1e-4,
            atol=1e-5,
        )
        np.testing.assert_allclose(
            slicer.util.arrayFromVolume(background.neighbor_node),
            slicer.util.arrayFromVolume(blocking.neighbor_node),
            rtol=1e-5,
            atol=1e-4,
        )

    def test_cancel_stops_the_background_process(self):
        def resultVolumes():
            return [
                n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode") if n.GetAttribute(INPUT_ATTRIBUTE)
            ]

        before = len(resultVolumes())
        outcome = {}
        self.logic.startAudit(
            [self.queryNode],
            str(self.indexDir),
            {"device": "cpu", "batch_size": 1},
            completedCallback=lambda results, error: outcome.update(results=results, error=error),
        )
        self.assertTrue(self.logic.isRunning)
        self.logic.cancel()
        waitUntil(lambda: "error" in outcome, timeoutSeconds=60)
        self.assertFalse(self.logic.isRunning)
        self.assertEqual(outcome["results"], [])
        self.assertIn("Cancel", outcome["error"])
        self.assertEqual(len(resultVolumes()), before, "a cancelled audit creates no result nodes")


def runTest():
    suite = unittest.TestLoader().loadTestsFromTestCase(MemorizationIndexModuleTest)
    unittest.TextTestRunner(verbosity=2).run(suite)
