"""Encoders: the default EfficientNet-Lite0 and the MRI-CORE ViT-B/16 checkpoint loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from MemorizationIndexLib.encoders import load_encoder, resolve_device
from MemorizationIndexLib.encoders.efficientnet_lite import (
    ALL_BLOCKS,
    BLOCK_CHANNELS,
    DEFAULT_BLOCKS,
    EfficientNetLite0,
    EfficientNetLite0Encoder,
    load_lite0_state,
    weights_path,
)
from MemorizationIndexLib.encoders.mri_core import (
    DEPTH,
    EMBED_DIM,
    MriCoreEncoder,
    VisionTransformer,
    interpolate_pos_embed,
)
from MemorizationIndexLib.encoders.tiles import COARSE_TILES, FINE_QUERY_TILES, fine_key
from MemorizationIndexLib.errors import UserError

SIZE = 224
CKPT_GRID = 16  # the checkpoints' pos_embed grid; 224/16 = 14, so interpolation is exercised


def _batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, SIZE, SIZE), dtype=np.float32)


# ---------------------------------------------------------------- default encoder


@pytest.fixture(scope="module")
def lite_all() -> EfficientNetLite0Encoder:
    return EfficientNetLite0Encoder(blocks=ALL_BLOCKS)


def test_default_encoder_shapes_and_determinism(lite_all: EfficientNetLite0Encoder) -> None:
    batch = _batch(3)
    first = lite_all.embed(batch)
    assert tuple(first) == ALL_BLOCKS
    for block, feats in first.items():
        assert feats.shape == (3, BLOCK_CHANNELS[block])
        assert feats.dtype == np.float32
        assert np.isfinite(feats).all()
        assert feats.std() > 0
    again = lite_all.embed(batch)
    for block in ALL_BLOCKS:
        np.testing.assert_array_equal(first[block], again[block])
    assert not lite_all.model.training


def test_default_encoder_block_subset_matches_full(lite_all: EfficientNetLite0Encoder) -> None:
    batch = _batch(2, seed=1)
    subset = load_encoder("default", blocks=["stage2", "stage5"])
    out = subset.embed(batch)
    full = lite_all.embed(batch)
    assert set(out) == {"stage2", "stage5"}
    for block in out:
        np.testing.assert_allclose(out[block], full[block], rtol=1e-5, atol=1e-5)
    assert subset.encoder_id == "default:224:stage2,stage5"


def test_default_encoder_reads_grayscale_like_the_published_rgb_network(lite_all: EfficientNetLite0Encoder) -> None:
    # The published network reads (255 x - 127) / 128 on 3 channels; ours folds that into its stem.
    batch = _batch(2, seed=2)
    batch[0, 0, :40] = 0.0  # a dark band at the border, where SAME padding meets the image
    published = EfficientNetLite0()
    published.load_state_dict(load_lite0_state(weights_path()))
    with torch.inference_mode():
        rgb = (torch.from_numpy(batch).expand(-1, 3, -1, -1) * 255.0 - 127.0) / 128.0
        expected = published.eval()(rgb, ALL_BLOCKS)
    out = lite_all.embed(batch)
    for block in ALL_BLOCKS:
        np.testing.assert_allclose(out[block], expected[block].numpy(), rtol=1e-5, atol=1e-4)  # features reach ~20
    with pytest.raises(ValueError, match="grayscale batch"):
        lite_all.embed(np.zeros((1, 3, SIZE, SIZE), np.float32))


def test_default_encoder_identity(lite_all: EfficientNetLite0Encoder) -> None:
    enc = load_encoder("default")
    assert enc.name == "default"
    assert enc.blocks == DEFAULT_BLOCKS
    assert len(enc.weights_sha256) == 64
    assert enc.weights_sha256 == lite_all.weights_sha256
    # Every BatchNorm is folded into its convolution; the comparison with the published network
    # above checks that the checkpoint's statistics went into the folded weights.
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in enc.model.modules())
    assert enc.model._conv_stem.bias is not None


def test_default_encoder_rejects_unknown_block() -> None:
    with pytest.raises(UserError, match="stage9"):
        EfficientNetLite0Encoder(blocks=["stage9"])


# ---------------------------------------------------------------- MRI-CORE


def _random_backbone(seed: int, layerscale: bool = False) -> dict[str, torch.Tensor]:
    """Random ViT-B/16 weights in the checkpoint's key layout (without the ``backbone.`` prefix)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {k: v.shape for k, v in VisionTransformer(CKPT_GRID, layerscale).state_dict().items()}
    state = {k: torch.randn(s, generator=gen) * 0.02 for k, s in shapes.items()}
    state["mask_token"] = torch.randn(1, EMBED_DIM, generator=gen)
    return state


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    backbone = _random_backbone(seed=0)
    teacher = {f"backbone.{k}": v for k, v in backbone.items()}
    teacher["dino_head.mlp.0.weight"] = torch.randn(16, EMBED_DIM)
    teacher["dino_head.last_layer.weight_g"] = torch.randn(16, 1)
    path = tmp_path_factory.mktemp("mricore") / "teacher_checkpoint.pth"
    torch.save({"teacher": teacher, "iteration": 10}, path)
    return path, backbone


@pytest.fixture(scope="module")
def mri_core(teacher_ckpt: tuple[Path, dict[str, torch.Tensor]]) -> MriCoreEncoder:
    return MriCoreEncoder(teacher_ckpt[0])


def _assert_loaded(enc: MriCoreEncoder, backbone: dict[str, torch.Tensor]) -> None:
    expected_pos = interpolate_pos_embed(backbone["pos_embed"], SIZE // 16)
    assert expected_pos.shape == (1, 1 + 14 * 14, EMBED_DIM)
    params = enc.model.state_dict()
    assert set(params) == set(backbone) - {"mask_token"}
    for key, value in params.items():
        want = expected_pos if key == "pos_embed" else backbone[key]
        if key == "patch_embed.proj.weight":  # the RGB projection folded to read one grayscale channel
            want = want.sum(dim=1, keepdim=True)
        torch.testing.assert_close(value, want, rtol=0, atol=0, msg=key)
    assert params["pos_embed"].abs().sum() > 0


def test_mri_core_loads_every_parameter(
    mri_core: MriCoreEncoder, teacher_ckpt: tuple[Path, dict[str, torch.Tensor]]
) -> None:
    _assert_loaded(mri_core, teacher_ckpt[1])
    assert mri_core.name == "mri-core"
    assert mri_core.blocks == ("block3", "block7", "block11")
    assert len(mri_core.weights_sha256) == 64
    assert not mri_core.model.training


def test_mri_core_chunked_bare_state_dict_with_layerscale(tmp_path: Path) -> None:
    backbone = _random_backbone(seed=1, layerscale=True)
    chunk_size = 4
    chunked = {}
    for key, value in backbone.items():
        if key.startswith("blocks."):
            _, idx, rest = key.split(".", 2)
            key = f"blocks.{int(idx) // chunk_size}.{idx}.{rest}"
        chunked[f"backbone.{key}"] = value
    path = tmp_path / "chunked.pth"
    torch.save(chunked, path)
    enc = MriCoreEncoder(path, blocks=["block0", "block1"])
    _assert_loaded(enc, backbone)
    assert isinstance(enc.model.blocks[5].ls1.gamma, torch.nn.Parameter)
    out = enc.embed(_batch(1))
    assert set(out) == {"block0", "block1"} and out["block1"].shape == (1, EMBED_DIM)


def test_mri_core_pools_patch_tokens(mri_core: MriCoreEncoder) -> None:
    captured: dict[int, torch.Tensor] = {}
    hooks = [
        mri_core.model.blocks[i].register_forward_hook(lambda _m, _inp, out, i=i: captured.__setitem__(i, out.clone()))
        for i in (3, 7, 11)
    ]
    try:
        out = mri_core.embed(_batch(2))
    finally:
        for hook in hooks:
            hook.remove()
    for i in (3, 7, 11):
        tokens = captured[i]
        assert tokens.shape == (2, 1 + 14 * 14, EMBED_DIM)
        feats = out[f"block{i}"]
        assert feats.shape == (2, EMBED_DIM) and feats.dtype == np.float32
        np.testing.assert_allclose(feats, tokens[:, 1:].mean(dim=1).numpy(), rtol=1e-5, atol=1e-6)
        assert not np.allclose(feats, tokens.mean(dim=1).numpy(), atol=1e-7)


def test_mri_core_tiles_are_patch_token_windows_of_their_passes(mri_core: MriCoreEncoder) -> None:
    batch, whole = _batch(2), _batch(2, seed=1)  # whole: other slices, standing for the batch's whole fields of view
    pooled, tiles = mri_core.embed_with_tiles(batch, whole)
    alone = mri_core.embed(batch)
    assert all(np.array_equal(pooled[b], alone[b]) for b in mri_core.blocks)
    maps = mri_core.model(mri_core.input_tensor(batch), mri_core.block_ids, maps=True)
    for block, i in zip(mri_core.blocks, mri_core.block_ids):
        assert tiles[block].shape == (2, len(COARSE_TILES), EMBED_DIM)
        np.testing.assert_allclose(
            tiles[block][:, 0], maps[i][:, :, :7, :7].mean(dim=(2, 3)).detach().numpy(), rtol=1e-5
        )
    shallowest = mri_core.block_ids.index(min(mri_core.block_ids))
    assert mri_core.region_block == mri_core.blocks[shallowest]
    fine = tiles[fine_key(mri_core.region_block)]
    assert fine.shape == (2, len(FINE_QUERY_TILES), EMBED_DIM)
    whole_maps = mri_core.model(mri_core.input_tensor(whole), mri_core.block_ids, maps=True)
    corner = whole_maps[mri_core.block_ids[shallowest]][:, :, 10:, 10:].mean(dim=(2, 3))  # from the other slices
    np.testing.assert_allclose(fine[:, -1], corner.detach().numpy(), rtol=1e-5)


def test_mri_core_reads_grayscale_like_the_rgb_network(
    mri_core: MriCoreEncoder, teacher_ckpt: tuple[Path, dict[str, torch.Tensor]]
) -> None:
    backbone = dict(teacher_ckpt[1])
    backbone["pos_embed"] = interpolate_pos_embed(backbone["pos_embed"], SIZE // 16)
    rgb_model = VisionTransformer(SIZE // 16, layerscale=False)
    rgb_model.load_state_dict({k: v for k, v in backbone.items() if k != "mask_token"})
    batch = _batch(2, seed=3)
    with torch.inference_mode():
        expected = rgb_model.eval()(torch.from_numpy(batch).expand(-1, 3, -1, -1), mri_core.block_ids)
    out = mri_core.embed(batch)
    for block, i in zip(mri_core.blocks, mri_core.block_ids):
        np.testing.assert_allclose(out[block], expected[i].numpy(), rtol=1e-4, atol=1e-4)


def test_mri_core_wrong_keys_named(tmp_path: Path) -> None:
    path = tmp_path / "wrong.pth"
    backbone = {
        "backbone.cls_token": torch.zeros(1, 1, EMBED_DIM),
        "backbone.pos_embed": torch.zeros(1, 1 + 14 * 14, EMBED_DIM),
        "backbone.head.weight": torch.zeros(10, EMBED_DIM),
    }
    torch.save({"model": backbone}, path)
    with pytest.raises(UserError) as info:
        MriCoreEncoder(path)
    message = str(info.value)
    assert "head.weight" in message and "unexpected" in message
    assert "patch_embed.proj.weight" in message and "missing" in message
    assert "\n" not in message


def test_mri_core_refuses_malicious_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "pwned.txt"

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str, str]]:
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    torch.save({"teacher": Exploit()}, path)
    with pytest.raises(UserError, match="refused"):
        MriCoreEncoder(path)
    assert not marker.exists()


def test_mri_core_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_encoder("mri-core", checkpoint=tmp_path / "nope.pth")
    with pytest.raises(UserError, match="--checkpoint is required"):
        load_encoder("mri-core")


def test_mri_core_rejects_bad_block_and_size(teacher_ckpt: tuple[Path, dict[str, torch.Tensor]]) -> None:
    with pytest.raises(UserError, match="block12"):
        MriCoreEncoder(teacher_ckpt[0], blocks=[f"block{DEPTH}"])
    with pytest.raises(UserError, match="multiple of 16"):
        MriCoreEncoder(teacher_ckpt[0], input_size=200)


# ---------------------------------------------------------------- registry and devices


def test_unknown_encoder_name() -> None:
    with pytest.raises(UserError, match="unknown encoder 'resnet'"):
        load_encoder("resnet")


def test_resolve_device() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="cuda"):
            resolve_device("cuda")


# ---------------------------------------------------------------- precision on CUDA


@pytest.mark.parametrize("name", ["default", "mri-core"])
def test_forward_passes_run_without_tf32_and_restore_the_settings(
    name: str, lite_all: EfficientNetLite0Encoder, mri_core: MriCoreEncoder
) -> None:
    """TF32 would make CUDA features differ from CPU ones by ~1e-3; the user's own settings come back after."""
    encoder = lite_all if name == "default" else mri_core
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    seen: list[tuple[bool, bool]] = []
    first = next(m for m in encoder.model.modules() if isinstance(m, torch.nn.Conv2d))
    hook = first.register_forward_pre_hook(
        lambda *_: seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
    )
    try:
        encoder.embed_with_tiles(_batch(1), _batch(1, seed=1))
        after = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    finally:
        hook.remove()
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    assert seen and all(flags == (False, False) for flags in seen)
    assert after == (True, True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_features_equal_cpu_features(teacher_ckpt: tuple[Path, dict[str, torch.Tensor]]) -> None:
    """An index built on a GPU is audited on a CPU (and back): both must give the same features and tiles."""
    batch, framed = _batch(4), _batch(4, seed=1)
    for name, checkpoint in (("default", None), ("mri-core", teacher_ckpt[0])):
        on = {
            d: load_encoder(name, checkpoint=checkpoint, device=d).embed_with_tiles(batch, framed)
            for d in ("cpu", "cuda")
        }
        for cpu, cuda in zip(on["cpu"], on["cuda"]):
            for key in cpu:
                scale = float(np.abs(cpu[key]).max())
                np.testing.assert_allclose(cuda[key], cpu[key], rtol=0, atol=2e-5 * scale, err_msg=f"{name} {key}")
