"""Slice encoders: the offline default (EfficientNet-Lite0) and MRI-CORE (user's checkpoint)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import UserError
from .base import Encoder, file_sha256
from .efficientnet_lite import DEFAULT_BLOCKS as LITE0_BLOCKS
from .efficientnet_lite import EfficientNetLite0Encoder
from .mri_core import DEFAULT_BLOCKS as MRI_CORE_BLOCKS
from .mri_core import MriCoreEncoder

ENCODER_NAMES: tuple[str, ...] = ("default", "mri-core")

__all__ = [
    "ENCODER_NAMES",
    "Encoder",
    "EfficientNetLite0Encoder",
    "MriCoreEncoder",
    "file_sha256",
    "load_encoder",
    "resolve_device",
]


def resolve_device(device: str) -> str:
    """Map ``cpu``/``cuda``/``auto`` to a torch device string (``auto``: cuda when available)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise UserError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu or auto")
        return "cuda"
    raise UserError(f"unknown device '{device}'; use cpu, cuda or auto")


def load_encoder(
    name: str,
    *,
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    blocks: Sequence[str] | None = None,
) -> Encoder:
    """Build the encoder ``name`` (``default`` or ``mri-core``) in eval mode on ``device``."""
    if name not in ENCODER_NAMES:
        raise UserError(f"unknown encoder '{name}'; choose one of: {', '.join(ENCODER_NAMES)}")
    dev = resolve_device(device)
    if name == "default":
        if checkpoint is not None:
            raise UserError("--checkpoint is only used by the mri-core encoder; drop it or use --encoder mri-core")
        return EfficientNetLite0Encoder(blocks=LITE0_BLOCKS if blocks is None else blocks, device=dev)
    if checkpoint is None:
        raise UserError(
            "--checkpoint is required for the mri-core encoder: pass the path of your local "
            "MRI-CORE checkpoint (its weights are not bundled)"
        )
    return MriCoreEncoder(checkpoint, blocks=MRI_CORE_BLOCKS if blocks is None else blocks, device=dev)
