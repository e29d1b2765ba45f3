"""The published AST (Gong, Chung & Glass 2021): overlapping patch grid, [CLS] +
distillation pooling, timm blocks, and weight files in our own, the reference code's
(``module.v.*``) and timm's DeiT layouts."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models.vision_transformer import Block

from emoray.errors import ConfigError
from emoray.models import create_encoder
from emoray.models.ast import patch_grid

CONTRACT = dict(n_mels=64, n_frames=96)         # tiny: 16 x 16 patches, stride 12 -> 5 x 7


#: tiny tensors: one thread (two OpenMP threads on a busy 2-core box stall)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny(seed: int = 0, **contract):
    torch.manual_seed(seed)
    return create_encoder("ast", "tiny", **{**CONTRACT, **contract}).eval()


def _snapshot(enc) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in enc.state_dict().items()}


def _assert_unchanged(enc, before: dict[str, torch.Tensor]) -> None:
    after = enc.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def _reference_state(enc) -> dict[str, torch.Tensor]:
    """``enc``'s weights as the reference code's DataParallel checkpoint names them,
    with its classifier heads (which an encoder ignores)."""
    d = enc.dim
    state = {"module.v." + k.replace("patch_embed.", "patch_embed.proj."): v.clone()
             for k, v in enc.state_dict().items()}
    state.update({"module.v.head.weight": torch.zeros(1000, d),
                  "module.v.head.bias": torch.zeros(1000),
                  "module.v.head_dist.weight": torch.zeros(1000, d),
                  "module.v.head_dist.bias": torch.zeros(1000),
                  "module.mlp_head.0.weight": torch.ones(d),
                  "module.mlp_head.0.bias": torch.zeros(d),
                  "module.mlp_head.1.weight": torch.zeros(5, d),
                  "module.mlp_head.1.bias": torch.zeros(5)})
    return state


def _deit_state(dim: int = 48, depth: int = 2, heads: int = 2) -> dict[str, torch.Tensor]:
    """An ImageNet DeiT (distilled, 224 px, 16 px patches: a 14 x 14 grid) state dict
    in timm's layout, at the tiny preset's width (random weights, nothing downloaded)."""
    torch.manual_seed(7)
    deit = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False,
                             embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=2.0)
    return {k: v.detach().clone().contiguous() for k, v in deit.state_dict().items()}


def _save(state: dict[str, torch.Tensor], path):
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def test_overlapping_patch_grid():
    assert patch_grid(128, 100, patch=16, fstride=10, tstride=10) == (12, 9)
    assert patch_grid(128, 501, 16, 10, 10) == (12, 49)
    assert patch_grid(64, 501, 16, 10, 10) == (5, 49)
    assert patch_grid(128, 1024, 16, 10, 10) == (12, 101)     # the paper's AudioSet input
    torch.manual_seed(0)
    enc = create_encoder("ast", "small", n_mels=128, n_frames=100).eval()
    assert enc.patch_embed.kernel_size == (16, 16) and enc.patch_embed.stride == (10, 10)
    assert enc.pos_embed.shape == (1, 2 + 12 * 9, 192)
    with torch.no_grad():
        out = enc(torch.randn(1, 128, 100))
    assert out.tokens.shape == (1, 108, 192) and out.pooled.shape == (1, 192)
    assert isinstance(enc.blocks[0], Block) and len(enc.blocks) == 4


def test_tiny_forward_backward_pools_cls_and_distillation():
    enc = _tiny().train()
    seen = {}
    enc.norm.register_forward_hook(lambda m, i, o: seen.update(final=o))
    out = enc(torch.randn(3, 64, 96))
    final = seen["final"]                                   # (B, 2 + N, D)
    assert final.shape == (3, 2 + 35, 48)
    torch.testing.assert_close(out.pooled, (final[:, 0] + final[:, 1]) / 2)
    torch.testing.assert_close(out.tokens, final[:, 2:])
    g = torch.Generator().manual_seed(1)
    loss = (out.pooled * torch.randn(out.pooled.shape, generator=g)).sum() \
        + (out.tokens * torch.randn(out.tokens.shape, generator=g)).sum()
    loss.backward()
    for name in ("patch_embed.weight", "cls_token", "dist_token", "pos_embed"):
        grad = dict(enc.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_reference_layout_checkpoint_loads(suffix, tmp_path):
    src = _tiny(seed=0)
    path = _save(_reference_state(src), tmp_path / f"ast_ref{suffix}")
    enc = _tiny(seed=1)
    x = torch.randn(2, 64, 96)
    with torch.no_grad():
        assert not torch.allclose(enc(x).pooled, src(x).pooled)
        enc.load_weights(path)
        torch.testing.assert_close(enc(x).pooled, src(x).pooled, rtol=0, atol=0)
        torch.testing.assert_close(enc(x).tokens, src(x).tokens, rtol=0, atol=0)


def test_reference_checkpoint_of_a_longer_input_cuts_time_positions(tmp_path):
    src = _tiny(seed=0, n_frames=200)                       # 5 x 16 patches
    path = _save(_reference_state(src), tmp_path / "long.pth")
    enc = _tiny(seed=1).load_weights(path)                  # 5 x 7: middle 7 time slots
    grid = src.pos_embed[:, 2:].reshape(1, 5, 16, 48)
    want = grid[:, :, 8 - 3:8 - 3 + 7].reshape(1, 35, 48)
    torch.testing.assert_close(enc.pos_embed[:, 2:], want, rtol=0, atol=0)
    torch.testing.assert_close(enc.pos_embed[:, :2], src.pos_embed[:, :2], rtol=0, atol=0)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_deit_timm_checkpoint_is_adapted(suffix, tmp_path):
    deit = _deit_state()
    path = _save(deit, tmp_path / f"deit{suffix}")
    enc = _tiny(seed=1).load_weights(path)
    sd = enc.state_dict()
    rgb = deit["patch_embed.proj.weight"]                   # (48, 3, 16, 16)
    torch.testing.assert_close(sd["patch_embed.weight"], rgb.mean(dim=1, keepdim=True))
    torch.testing.assert_close(sd["patch_embed.bias"], deit["patch_embed.proj.bias"])
    torch.testing.assert_close(sd["blocks.1.attn.qkv.weight"], deit["blocks.1.attn.qkv.weight"])
    # 14 x 14 image positions -> 5 x 7 (both axes shrink: the middle slots are kept).
    square = deit["pos_embed"][:, 2:].reshape(1, 14, 14, 48)
    want = square[:, 7 - 2:7 - 2 + 5, 7 - 3:7 - 3 + 7].reshape(1, 35, 48)
    torch.testing.assert_close(sd["pos_embed"][:, 2:], want)
    torch.testing.assert_close(sd["pos_embed"][:, :2], deit["pos_embed"][:, :2])
    torch.testing.assert_close(sd["dist_token"], deit["dist_token"])
    assert torch.isfinite(enc(torch.randn(1, 64, 96)).pooled).all()


def test_deit_positions_are_interpolated_along_a_longer_time_axis(tmp_path):
    deit = _deit_state()
    enc = _tiny(seed=1, n_frames=300).load_weights(_save(deit, tmp_path / "deit.pth"))
    assert enc.grid(300) == (5, 24)                          # 24 > 14 time slots
    square = deit["pos_embed"][:, 2:].reshape(1, 14, 14, 48).permute(0, 3, 1, 2)
    wide = F.interpolate(square, size=(14, 24), mode="bilinear", align_corners=False)
    want = wide[:, :, 5:10].flatten(2).transpose(1, 2)      # then the middle 5 rows
    torch.testing.assert_close(enc.pos_embed[:, 2:], want)


def test_wrong_shapes_raise_naming_keys_and_leave_weights_unchanged(tmp_path):
    path = _save(_deit_state(dim=64, heads=2), tmp_path / "deit_wide.pth")
    enc = _tiny(seed=3)
    before = _snapshot(enc)
    with pytest.raises(ConfigError, match=r"deit_wide\.pth.*timm layout.*"
                                          r"blocks\.0\.attn\.proj\.bias"):
        enc.load_weights(path)
    _assert_unchanged(enc, before)
    # One bad tensor among fitting ones: nothing is copied either.
    state = _reference_state(_tiny(seed=0))
    state["module.v.blocks.1.mlp.fc1.weight"] = torch.zeros(7, 48)
    with pytest.raises(ConfigError, match=r"blocks\.1\.mlp\.fc1\.weight: file \(7, 48\)"):
        enc.load_weights(_save(state, tmp_path / "one_bad.pth"))
    _assert_unchanged(enc, before)


def test_missing_and_unexpected_keys_raise_and_leave_weights_unchanged(tmp_path):
    state = _reference_state(_tiny(seed=0))
    del state["module.v.dist_token"], state["module.v.blocks.1.norm2.bias"]
    state["module.v.blocks.2.norm1.weight"] = torch.ones(48)
    path = _save(state, tmp_path / "partial.pth")
    enc = _tiny(seed=3)
    before = _snapshot(enc)
    with pytest.raises(ConfigError, match=r"partial\.pth.*reference layout.*missing "
                                          r"\['blocks\.1\.norm2\.bias', 'dist_token'\], "
                                          r"unexpected \['blocks\.2\.norm1\.weight'\]"):
        enc.load_weights(path)
    _assert_unchanged(enc, before)
    enc.load_weights(path, strict=False)                    # the rest, when asked
    assert torch.equal(enc.state_dict()["cls_token"], state["module.v.cls_token"])
    assert torch.equal(enc.state_dict()["dist_token"], before["dist_token"])


def test_file_uri_and_refused_sources(tmp_path):
    src = _tiny(seed=0)
    path = src.save_weights(tmp_path / "own weights.pt")    # our own format
    enc = _tiny(seed=1).load_weights(path.as_uri())
    assert torch.equal(enc.state_dict()["pos_embed"], src.state_dict()["pos_embed"])
    with pytest.raises(ConfigError, match="nothing is downloaded"):
        enc.load_weights("https://example.org/ast.pth")
    with pytest.raises(ConfigError, match="not found"):
        enc.load_weights((tmp_path / "absent.pth").as_uri())
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="junk.safetensors is not a readable"):
        enc.load_weights(tmp_path / "junk.safetensors")
    legacy = create_encoder("ast-v0", "tiny", **CONTRACT).save_weights(tmp_path / "v0.pt")
    with pytest.raises(ConfigError, match="holds encoder 'ast-v0'"):
        enc.load_weights(legacy)
