"""The interface every slice encoder implements."""

from __future__ import annotations

import abc
import hashlib
from pathlib import Path

import numpy as np
import torch


def file_sha256(path: str | Path) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Encoder(abc.ABC):
    """Embeds batches of preprocessed slices into one feature vector per exposed block.

    Input batches are float32 arrays [N, 3, S, S] with values in [0, 1], S = ``input_size``;
    any model-specific normalisation happens inside :meth:`embed`.
    """

    name: str
    device: str
    input_size: int
    blocks: tuple[str, ...]
    weights_sha256: str

    @property
    def encoder_id(self) -> str:
        """Stable identifier: name, blocks and input size (weights are identified by sha256)."""
        return f"{self.name}:{self.input_size}:{','.join(self.blocks)}"

    @abc.abstractmethod
    def embed(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Return {block name: float32 [N, D_block]} for a batch [N, 3, S, S] in [0, 1]."""

    def input_tensor(self, batch: np.ndarray) -> torch.Tensor:
        """Check a batch is [N, 3, S, S] and move it to the encoder's device as float32."""
        s = self.input_size
        if batch.ndim != 4 or batch.shape[1:] != (3, s, s):
            raise ValueError(f"expected a batch [N, 3, {s}, {s}], got {list(batch.shape)}")
        return torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
