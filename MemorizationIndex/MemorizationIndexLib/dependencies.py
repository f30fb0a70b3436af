"""Installing what the Slicer module needs, when it first needs it (never at import or startup).

PyTorch comes from the PyTorch extension (``PyTorchUtils``), never from a plain pip install; the
other packages are listed in the module's ``Resources/requirements.txt`` and installed with
``slicer.packaging.pip_ensure`` (Slicer >= 5.12), which asks first. Only usable inside Slicer.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

TORCH_REQUIREMENT = ">=2.2"
REQUESTER = "MemorizationIndex"

log = logging.getLogger(__name__)


def torch_installed() -> bool:
    """True when ``import torch`` would work (nothing is imported)."""
    return importlib.util.find_spec("torch") is not None


def torch_version_ok(version: str, requirement: str = TORCH_REQUIREMENT) -> bool:
    """True when a torch version such as ``2.5.1+cu121`` meets ``requirement``."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    return SpecifierSet(requirement).contains(Version(version).public, prereleases=True)


def ensure_torch(ask_confirmation: bool = True) -> bool:
    """Install PyTorch through the PyTorch extension when it is missing; False when the user declined.

    Raises a one-line ``RuntimeError`` when the PyTorch extension is absent or torch is too old.
    """
    try:
        import PyTorchUtils
    except ModuleNotFoundError:
        raise RuntimeError(
            "This module needs PyTorch: install the 'PyTorch' extension from the Extensions Manager and restart Slicer."
        ) from None
    torch_logic = PyTorchUtils.PyTorchUtilsLogic()
    if not torch_logic.torchInstalled():
        log.info("Installing PyTorch (this may take several minutes)")
        return (
            torch_logic.installTorch(askConfirmation=ask_confirmation, torchVersionRequirement=TORCH_REQUIREMENT)
            is not None
        )
    version = torch_logic.torch.__version__
    if not torch_version_ok(version):
        raise RuntimeError(
            f"PyTorch {version} is too old for this module: use the PyTorch Utils module to install "
            f"torch{TORCH_REQUIREMENT}."
        )
    return True


def ensure_requirements(requirements_path: str | Path, ask_confirmation: bool = True) -> bool:
    """Install the missing packages of a requirements file (asking first); False when declined or not installed."""
    try:
        from slicer import packaging
    except ImportError:
        raise RuntimeError("This module needs Slicer 5.12 or later (slicer.packaging).") from None
    requirements = packaging.load_requirements(requirements_path)
    try:
        packaging.pip_ensure(requirements, prompt_install=ask_confirmation, requester=REQUESTER)
    except RuntimeError:  # the user declined
        return False
    return packaging.pip_check(requirements)


def ensure_dependencies(requirements_path: str | Path, ask_confirmation: bool = True) -> bool:
    """PyTorch first (the requirements must not pull another torch from PyPI), then the requirements file."""
    return ensure_torch(ask_confirmation) and ensure_requirements(requirements_path, ask_confirmation)
