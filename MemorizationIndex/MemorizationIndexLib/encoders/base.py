"""The interface every slice encoder implements."""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .tiles import COARSE_TILES, FINE_QUERY_TILES, PIXEL_KEY, fine_key, pixel_tiles, pool_tiles


def file_sha256(path: str | Path) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def full_float32() -> Iterator[None]:
    """Run CUDA convolutions and matrix products in full float32, not TF32, restoring the settings after.

    cuDNN convolutions use TF32 by default: on an H200 the default encoder's features then differed from the CPU's
    by up to 2e-3 of their largest value, against 8e-7 in full float32 at about 15% less throughput
    (docs/performance.md). An index built on one device and audited on another must compare the same features.
    No effect on CPU."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class Encoder(abc.ABC):
    """Embeds batches of preprocessed slices into one feature vector per exposed block.

    Input batches are grayscale float32 arrays [N, 1, S, S] with values in [0, 1],
    S = ``input_size``. Networks trained on RGB read them through :func:`grayscale_first_layer`,
    so model-specific normalisation and the three equal channels cost nothing per batch.
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
        """Return {block name: float32 [N, D_block]} for a batch [N, 1, S, S] in [0, 1]."""

    def feature_maps(self, batch: np.ndarray) -> dict[str, torch.Tensor]:
        """{block: [N, D_block, H, W]} spatial maps whose means are :meth:`embed`'s features; encoders
        without them do not override this, and their indexes have no region search (:attr:`has_tiles`)."""
        raise NotImplementedError(f"encoder {self.name} has no spatial feature maps")

    @property
    def has_tiles(self) -> bool:
        """Whether the encoder gives tile features (:meth:`embed_with_tiles`)."""
        return type(self).feature_maps is not Encoder.feature_maps

    @property
    def region_block(self) -> str:
        """The block whose fine tiles the region search also compares: the shallowest exposed one, whose
        features see the least of a tile's surroundings (``blocks`` lists them shallow to deep unless an
        encoder says otherwise)."""
        return self.blocks[0]

    @property
    def tile_keys(self) -> tuple[str, ...]:
        """The keys of :meth:`embed_with_tiles`'s tile features: every block's coarse tiles, the fine tiles of
        :attr:`region_block`, then the small image of the slice in its whole field of view (``tiles.PIXEL_KEY``)."""
        return self.blocks + (fine_key(self.region_block), PIXEL_KEY)

    def region_maps(self, batch: np.ndarray) -> torch.Tensor:
        """[N, C, H, W] maps of :attr:`region_block` (call under ``torch.inference_mode``); encoders that can
        stop their forward pass there override this."""
        return self.feature_maps(batch)[self.region_block]

    def fine_tiles(self, framed: np.ndarray) -> torch.Tensor:
        """[M, tiles, C] ``tiles.FINE_QUERY_TILES`` of :attr:`region_block` for slices in their whole field of view
        ``framed`` [M, ...] (``preprocess.framed``; call under ``torch.inference_mode``)."""
        return pool_tiles(self.region_maps(framed), FINE_QUERY_TILES)

    def embed_with_tiles(
        self, batch: np.ndarray, framed: np.ndarray
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """:meth:`embed`'s features of ``batch`` [N, ...] and the tile features {key: float32 [rows, tiles, D]} of
        :attr:`tile_keys`: ``tiles.COARSE_TILES`` of every block from the same forward pass (N rows), and
        ``tiles.FINE_QUERY_TILES`` of :attr:`region_block` from ``framed`` [M, ...], slices of the batch in their whole
        field of view (``preprocess.framed``), by a pass that stops at that block (M rows), and ``framed``'s small
        images (``tiles.pixel_tiles``, M rows)."""
        with torch.inference_mode():
            maps = self.feature_maps(batch)
            pooled = {b: m.mean(dim=(2, 3)).float().cpu().numpy() for b, m in maps.items()}
            tiles = {b: pool_tiles(m, COARSE_TILES) for b, m in maps.items()}
            tiles[fine_key(self.region_block)] = self.fine_tiles(framed)
            out = {key: t.float().cpu().numpy() for key, t in tiles.items()}
            return pooled, out | {PIXEL_KEY: pixel_tiles(framed)}

    def input_tensor(self, batch: np.ndarray) -> torch.Tensor:
        """Check a batch is [N, 1, S, S] and move it to the encoder's device as float32."""
        s = self.input_size
        if batch.ndim != 4 or batch.shape[1:] != (1, s, s):
            raise ValueError(f"expected a grayscale batch [N, 1, {s}, {s}], got {list(batch.shape)}")
        return torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)


def grayscale_first_layer(conv: nn.Conv2d, scale: float = 1.0, shift: float = 0.0) -> nn.Conv2d:
    """A copy of a network's first convolution that reads a grayscale x directly: it gives what
    ``conv`` gives on the normalised input ``scale * x + shift`` repeated over its channels.

    Exact where the kernel lies inside the image; a convolution that pads must pad x with
    ``-shift / scale`` (the value that normalises to the original zero padding).
    """
    folded = type(conv)(
        1,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=True,
    )
    with torch.no_grad():
        folded.weight.copy_(scale * conv.weight.sum(dim=1, keepdim=True))
        bias = shift * conv.weight.sum(dim=(1, 2, 3))
        folded.bias.copy_(bias if conv.bias is None else bias + conv.bias)
    return folded.to(conv.weight.device)
