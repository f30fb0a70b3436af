"""MRI-CORE encoder: a ViT-B/16 in plain torch loading DINOv2-format MRI-CORE checkpoints.

This is the standard global-attention ViT-B/16 (every block attends over all tokens, as in timm
and as DINOv2 trained it), not SAM's windowed ViT with a conv neck that the authors' own
wrapper uses. Embedding 768, depth 12, 12 heads, MLP ratio 4, qkv bias, LayerNorm eps 1e-6,
exact GELU, a cls token, and LayerScale (``ls1.gamma``/``ls2.gamma``) when the checkpoint has it.

Checkpoints are loaded with ``torch.load(..., weights_only=True)`` only; anything needing
arbitrary unpickling is refused. ``mask_token`` (used only for masked-token training) is
accepted and ignored; ``dino_head.*`` and ``ibot_head.*`` (training heads) are ignored.
"""

from __future__ import annotations

import math
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .base import Encoder, file_sha256, full_float32, grayscale_first_layer

EMBED_DIM = 768
DEPTH = 12
NUM_HEADS = 12
MLP_RATIO = 4
PATCH_SIZE = 16
LN_EPS = 1e-6
DEFAULT_BLOCKS: tuple[str, ...] = ("block3", "block7", "block11")

_WRAPPER_KEYS = ("teacher", "model", "student")
_IGNORED_PREFIXES = ("dino_head.", "ibot_head.")
_IGNORED_KEYS = ("mask_token",)
_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.(.+)$")


class LayerScale(nn.Module):
    """Per-channel learned scale (DINOv2 ``ls1``/``ls2``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Attention(nn.Module):
    """Global multi-head self-attention with a fused qkv projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """Two-layer MLP with exact GELU."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block, optionally with LayerScale."""

    def __init__(self, dim: int, heads: int, layerscale: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim) if layerscale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, dim * MLP_RATIO)
        self.ls2 = LayerScale(dim) if layerscale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping 16x16 patches projected to the embedding (``patch_embed.proj``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, PATCH_SIZE, stride=PATCH_SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)

    def read_grayscale(self) -> None:
        """Make the projection read one grayscale channel, with the RGB result on it repeated (exact)."""
        self.proj = grayscale_first_layer(self.proj)


class VisionTransformer(nn.Module):
    """ViT-B/16 with a cls token and a positional embedding sized for one input grid."""

    def __init__(self, grid: int, layerscale: bool) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(EMBED_DIM)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, EMBED_DIM))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, EMBED_DIM))
        self.blocks = nn.ModuleList(Block(EMBED_DIM, NUM_HEADS, layerscale) for _ in range(DEPTH))
        self.norm = nn.LayerNorm(EMBED_DIM, eps=LN_EPS)

    @full_float32()
    def forward(self, x: torch.Tensor, block_ids: Sequence[int], maps: bool = False) -> dict[int, torch.Tensor]:
        """Return {block index: [N, C] mean over patch tokens} ([N, C, grid, grid] token maps with ``maps``),
        stopping after the deepest one."""
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        out: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks[: max(block_ids) + 1]):
            x = block(x)
            if i in block_ids:
                tokens = x[:, 1:]
                side = math.isqrt(tokens.shape[1])
                grid = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)
                out[i] = grid if maps else grid.mean(dim=(2, 3))
        return out


def interpolate_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """Resize the patch part of ``pos_embed`` [1, 1+M*M, C] bicubically to ``grid``; keep the cls part."""
    n_patches = pos_embed.shape[1] - 1
    side = int(round(n_patches**0.5))
    if side * side != n_patches:
        raise UserError(
            f"the checkpoint's pos_embed has {n_patches} patch positions, not a square grid; "
            "use an MRI-CORE ViT-B/16 checkpoint"
        )
    if side == grid:
        return pos_embed
    cls_part, patch_part = pos_embed[:, :1], pos_embed[:, 1:]
    patch_part = patch_part.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    patch_part = F.interpolate(patch_part, size=(grid, grid), mode="bicubic", align_corners=False)
    patch_part = patch_part.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos_embed.dtype)
    return torch.cat([cls_part, patch_part], dim=1)


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Load an MRI-CORE checkpoint (weights only) and return the backbone state dict.

    Accepts a dict holding ``teacher``/``model``/``student`` or a bare state dict; strips
    ``backbone.``, drops training heads and ``mask_token``, and maps DINOv2 chunked block
    keys ``blocks.<chunk>.<i>.*`` to ``blocks.<i>.*``.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"MRI-CORE checkpoint {path} does not exist; pass the path of the local .pth file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(
            f"{path} is not a plain weights checkpoint (it needs arbitrary unpickling) and was "
            "refused; use a checkpoint that holds only tensors"
        ) from exc
    except Exception as exc:  # a damaged or foreign file fails in many ways inside the unpickler
        raise UserError(
            f"{path} could not be read as a PyTorch checkpoint ({type(exc).__name__}: {exc}); check the file"
        ) from exc
    if not isinstance(obj, Mapping):
        raise UserError(f"{path} does not hold a state dict; use an MRI-CORE (DINOv2) checkpoint")
    for key in _WRAPPER_KEYS:
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    has_backbone = any(str(k).startswith("backbone.") for k in obj)
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        key = str(key)
        if has_backbone:
            if key.startswith(_IGNORED_PREFIXES):
                continue
            key = key.removeprefix("backbone.")
        if key in _IGNORED_KEYS:
            continue
        match = _CHUNKED_BLOCK.match(key)
        if match:
            key = f"blocks.{match.group(1)}.{match.group(2)}"
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{path}: entry '{key}' is not a tensor; use an MRI-CORE (DINOv2) checkpoint")
        state[key] = value
    return state


def _key_list(keys: Sequence[str], limit: int = 5) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


class MriCoreEncoder(Encoder):
    """MRI-CORE ViT-B/16 encoder; blocks ``block0``..``block11`` mean-pooled over patch tokens.

    Inputs are used as given ([0, 1] min-max, the grayscale slice on all 3 channels): no further
    normalisation. The patch projection reads the grayscale channel directly.
    """

    name = "mri-core"

    def __init__(
        self,
        checkpoint: str | Path,
        blocks: Sequence[str] = DEFAULT_BLOCKS,
        device: str = "cpu",
        input_size: int = 224,
    ) -> None:
        valid = tuple(f"block{i}" for i in range(DEPTH))
        unknown = [b for b in blocks if b not in valid]
        if unknown or not blocks:
            raise UserError(
                f"unknown or empty block list {list(blocks)} for mri-core; choose from block0..block{DEPTH - 1}"
            )
        if input_size <= 0 or input_size % PATCH_SIZE:
            raise UserError(f"input size {input_size} must be a positive multiple of {PATCH_SIZE} for mri-core")
        self.blocks = tuple(blocks)
        self.block_ids = tuple(valid.index(b) for b in self.blocks)
        self.input_size = int(input_size)
        self.device = device
        state = read_checkpoint(checkpoint)
        grid = input_size // PATCH_SIZE
        if "pos_embed" in state:
            state["pos_embed"] = interpolate_pos_embed(state["pos_embed"], grid)
        layerscale = any(k.endswith(".ls1.gamma") for k in state)
        model = VisionTransformer(grid, layerscale)
        expected = model.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing keys: {_key_list(missing)}")
            if unexpected:
                parts.append(f"unexpected keys: {_key_list(unexpected)}")
            raise UserError(
                f"{checkpoint} is not an MRI-CORE ViT-B/16 checkpoint ({'; '.join(parts)}); "
                "use the MRI-CORE teacher checkpoint"
            )
        wrong = [k for k, v in expected.items() if v.shape != state[k].shape]
        if wrong:
            k = wrong[0]
            raise UserError(
                f"{checkpoint}: shape mismatch for {_key_list(wrong)} (e.g. {k}: "
                f"{tuple(state[k].shape)} vs ViT-B/16 {tuple(expected[k].shape)}); use an MRI-CORE ViT-B/16 checkpoint"
            )
        model.load_state_dict(state, strict=True)
        model.patch_embed.read_grayscale()
        self.model = model.eval().to(device)
        self.weights_sha256 = file_sha256(checkpoint)

    def embed(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Return {block: float32 [N, 768]} for a grayscale batch [N, 1, S, S] in [0, 1]."""
        with torch.inference_mode():
            x = self.input_tensor(batch)
            feats = self.model(x, self.block_ids)
            return {b: feats[i].float().cpu().numpy() for b, i in zip(self.blocks, self.block_ids)}

    @property
    def region_block(self) -> str:
        """The shallowest of the exposed blocks (the region search's fine tiles)."""
        return self.blocks[self.block_ids.index(min(self.block_ids))]

    def feature_maps(self, batch: np.ndarray) -> dict[str, torch.Tensor]:
        """{block: [N, 768, grid, grid]} patch-token maps (call under ``torch.inference_mode``)."""
        maps = self.model(self.input_tensor(batch), self.block_ids, maps=True)
        return {b: maps[i] for b, i in zip(self.blocks, self.block_ids)}

    def region_maps(self, batch: np.ndarray) -> torch.Tensor:
        """[N, 768, grid, grid] token maps of :attr:`region_block`, the forward pass stopped there."""
        block = min(self.block_ids)
        return self.model(self.input_tensor(batch), (block,), maps=True)[block]
