"""The "vit" encoder on timm's VisionTransformer: forward/backward and timm-layout weights
(.pth, .safetensors, file:// URIs, other grids and patch sizes, refusals that leave the
model unchanged). Every checkpoint is built locally with ``pretrained=False``."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed, resample_patch_embed

from emoray.errors import ConfigError
from emoray.models import create_encoder

CONTRACT = dict(n_frames=3, size=64)
#: timm keyword arguments of the tiny preset's backbone (dim 32, depth 2, patch 32)
TINY = dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, patch_size=32, img_size=64)


#: tiny tensors: one thread (two OpenMP threads on a busy 2-core box stall)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _encoder(seed: int = 0, **over):
    torch.manual_seed(seed)
    return create_encoder("vit", "tiny", **{**CONTRACT, **over}).eval()


def _timm(seed: int = 7, **over) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False,
                             **{**TINY, **over}).eval()


def _frames(b: int = 2, n: int = 3, size: int = 64) -> torch.Tensor:
    return torch.randn(b, n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _snapshot(enc) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in enc.state_dict().items()}


def _assert_unchanged(enc, before: dict[str, torch.Tensor]) -> None:
    for k, v in enc.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed by a failed load"


def _save(state: dict[str, torch.Tensor], path):
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def test_tiny_forward_backward():
    enc = _encoder().train()
    out = enc(_frames())
    assert out.tokens.shape == (2, 3, enc.dim) and out.pooled.shape == (2, enc.dim)
    g = torch.Generator().manual_seed(5)
    (out.pooled * torch.randn(out.pooled.shape, generator=g)).sum().backward()
    assert enc.patch_embed is enc.backbone.patch_embed
    assert enc.patch_embed.proj.weight.grad.abs().sum() > 0
    assert enc.time_pos.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="size is 64"):
        enc(torch.randn(1, 3, 3, 32, 32))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_checkpoint_loads_into_the_backbone(suffix, tmp_path):
    ref = _timm()
    path = _save(ref.state_dict(), tmp_path / f"vit{suffix}")
    enc = _encoder()
    x = _frames()
    temporal = {k: v.clone() for k, v in enc.temporal.state_dict().items()}
    with torch.no_grad():
        before = enc(x).pooled
        enc.load_weights(path)
        after = enc(x).pooled
        for k, v in enc.backbone.state_dict().items():
            assert torch.equal(v, ref.state_dict()[k]), k
        # per frame, our backbone is timm's model up to its (ignored) classifier
        flat = x.flatten(0, 1)
        expected = ref.forward_head(ref.forward_features(flat), pre_logits=True)
        torch.testing.assert_close(enc.backbone(flat), expected)
    assert not torch.allclose(before, after)
    for k, v in enc.temporal.state_dict().items():           # ours, not in the file
        assert torch.equal(v, temporal[k]), k


def test_timm_checkpoint_of_another_grid_or_patch_is_resampled(tmp_path):
    bigger = _timm(img_size=96).state_dict()                  # 3x3 grid vs our 2x2
    enc = _encoder().load_weights(_save(bigger, tmp_path / "grid.pth"))
    want = resample_abs_pos_embed(bigger["pos_embed"], new_size=[2, 2], old_size=[3, 3])
    torch.testing.assert_close(enc.backbone.pos_embed, want)
    torch.testing.assert_close(enc.backbone.blocks[1].mlp.fc2.weight,
                               bigger["blocks.1.mlp.fc2.weight"])
    fine = _timm(patch_size=16).state_dict()                  # 16 px kernel, 4x4 grid
    enc = _encoder().load_weights(_save(fine, tmp_path / "patch.safetensors"))
    kernel = resample_patch_embed(fine["patch_embed.proj.weight"], new_size=[32, 32])
    torch.testing.assert_close(enc.patch_embed.proj.weight, kernel)
    assert enc.backbone.pos_embed.shape == (1, 5, 32)
    with torch.no_grad():
        assert torch.isfinite(enc(_frames()).pooled).all()


def test_published_vit_tiny_layout_loads_into_small_at_depth_12(tmp_path):
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    path = _save(ref.state_dict(), tmp_path / "vit_tiny_patch16_224.pth")
    enc = create_encoder("vit", "small", n_frames=2, size=224, depth=12).load_weights(path)
    assert torch.equal(enc.backbone.blocks[11].attn.qkv.weight,
                       ref.state_dict()["blocks.11.attn.qkv.weight"])
    with pytest.raises(ConfigError, match=r"unexpected \['blocks\.4\."):
        create_encoder("vit", "small", n_frames=2, size=224).load_weights(path)


def _drop(state, key):
    return {k: v for k, v in state.items() if k != key}


@pytest.mark.parametrize("corrupt,message", [
    (lambda s: _drop(s, "blocks.1.attn.qkv.weight"), r"missing \['blocks\.1\.attn\.qkv"),
    (lambda s: {**s, "blocks.1.ls1.gamma": torch.ones(32)}, r"unexpected \['blocks\.1\.ls1"),
    (lambda s: _timm(mlp_ratio=4.0).state_dict(), r"wrong shape \['blocks\.0\.mlp\.fc1"),
    (lambda s: _timm(embed_dim=48).state_dict(), r"wrong shape \['cls_token"),
])
def test_bad_timm_checkpoint_raises_and_leaves_weights_untouched(corrupt, message, tmp_path):
    path = _save(corrupt(_timm().state_dict()), tmp_path / "bad.pth")
    enc = _encoder()
    before = _snapshot(enc)
    with pytest.raises(ConfigError, match=message) as info:
        enc.load_weights(path)
    assert "bad.pth" in str(info.value) and "unchanged" in str(info.value)
    _assert_unchanged(enc, before)


def test_non_strict_load_keeps_what_the_file_lacks(tmp_path):
    state = _drop(_timm().state_dict(), "norm.weight")
    enc = _encoder()
    norm = enc.backbone.norm.weight.detach().clone()
    enc.load_weights(_save(state, tmp_path / "partial.pth"), strict=False)
    assert torch.equal(enc.backbone.norm.weight, norm)
    assert torch.equal(enc.backbone.cls_token, state["cls_token"])


def test_own_format_round_trips_and_a_bad_own_file_changes_nothing(tmp_path):
    enc = _encoder(seed=0)
    path = enc.save_weights(tmp_path / "own.pt")
    other = _encoder(seed=1).load_weights(path.as_uri())       # file:// URI
    x = _frames()
    with torch.no_grad():
        torch.testing.assert_close(other(x).pooled, enc(x).pooled, rtol=0, atol=0)
    blob = torch.load(path, weights_only=True)
    del blob["state_dict"]["time_pos.weight"]
    torch.save(blob, tmp_path / "lacking.pt")
    third = _encoder(seed=2)
    before = _snapshot(third)
    with pytest.raises(ConfigError, match=r"lacking\.pt.*missing \['time_pos\.weight'\]"):
        third.load_weights(tmp_path / "lacking.pt")
    _assert_unchanged(third, before)
    legacy = create_encoder("vit-v0", "tiny", **CONTRACT).save_weights(tmp_path / "v0.pt")
    with pytest.raises(ConfigError, match="holds encoder 'vit-v0'"):
        third.load_weights(legacy)


def test_file_uri_and_missing_or_remote_paths(tmp_path):
    path = _save(_timm().state_dict(), tmp_path / "timm.safetensors")
    enc = _encoder().load_weights(path.as_uri())
    assert torch.equal(enc.backbone.cls_token, _timm().state_dict()["cls_token"])
    with pytest.raises(ConfigError, match="nowhere.pth not found"):
        enc.load_weights(tmp_path / "nowhere.pth")
    with pytest.raises(ConfigError, match="nowhere.pth not found"):
        enc.load_weights((tmp_path / "nowhere.pth").as_uri())
    with pytest.raises(ConfigError, match="nothing is downloaded"):
        enc.load_weights("https://example.org/vit.pth")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="junk.pth is not a checkpoint"):
        enc.load_weights(tmp_path / "junk.pth")
