"""Encoders: shapes, gradients, sizes, contracts, weight files, errors, bf16 autocast."""

from __future__ import annotations

import pytest
import torch

from emoray.errors import ConfigError
from emoray.models import create_encoder, encoder_class, encoder_names
from emoray.models.layers import AttentionPool, PositionalEmbedding, TransformerBlock

# Per encoder (one line each, so an encoder's file and its rows change together):
# a small contract (every tiny encoder runs in milliseconds), one sample's input shape,
# the token count of that input, the first layer's parameter, and the real contract
# defaults (EAV preprocessing; parameter counts on "meta").
CONTRACTS = {
    "eegformer": dict(n_chans=4, sfreq=100.0, n_times=200),
    "eegformer-v0": dict(n_chans=4, sfreq=100.0, n_times=200),
    "ast": dict(n_mels=64, n_frames=96),
    "ast-v0": dict(n_mels=64, n_frames=96),
    "vit": dict(n_frames=3, size=64),
    "vit-v0": dict(n_frames=3, size=64),
    "mlp": dict(in_features=20),
    "bandpower": dict(n_chans=4, n_bands=5),
    "speechstats": dict(in_features=20),
    "bandpower-mlp": dict(n_chans=4, n_bands=5),
}
INPUTS = {
    "eegformer": (4, 200),
    "eegformer-v0": (4, 200),
    "ast": (64, 96),
    "ast-v0": (64, 96),
    "vit": (3, 3, 64, 64),
    "vit-v0": (3, 3, 64, 64),
    "mlp": (20,),
    "bandpower": (4, 5),
    "speechstats": (20,),
    "bandpower-mlp": (4, 5),
}
N_TOKENS = {
    "eegformer": 8,             # ceil(200 / 25)
    "eegformer-v0": 8,          # ceil(200 / 25)
    "ast": 35,                  # 5 x 7 overlapping 16 x 16 patches, stride 12
    "ast-v0": 6,                # 2 x 3 patches
    "vit": 3,                   # one per frame
    "vit-v0": 3,                # one per frame
    "mlp": 1,
    "bandpower": 6,             # a token per band + the all-band token
    "speechstats": 1,
    "bandpower-mlp": 1,
}
FIRST_LAYER = {
    "eegformer": "odcm.conv1.weight",
    "eegformer-v0": "temporal.weight",
    "ast": "patch_embed.weight",
    "ast-v0": "patch_embed.weight",
    "vit": "backbone.patch_embed.proj.weight",
    "vit-v0": "patch_embed.weight",
    "mlp": "stem.0.weight",
    "bandpower": "spatial",
    "speechstats": "stem.0.weight",
    "bandpower-mlp": "stem.0.weight",
}
REAL = {
    "eegformer": dict(n_chans=30, sfreq=100.0, n_times=500),
    "eegformer-v0": dict(n_chans=30, sfreq=100.0, n_times=500),
    "ast": dict(n_mels=128, n_frames=501),
    "ast-v0": dict(n_mels=128, n_frames=501),
    "vit": dict(n_frames=25, size=224),
    "vit-v0": dict(n_frames=25, size=224),
    "mlp": dict(in_features=265),
    "bandpower": dict(n_chans=30, n_bands=5),
    "speechstats": dict(in_features=265),
    "bandpower-mlp": dict(n_chans=30, n_bands=5),
}
NAMES = sorted(CONTRACTS)


#: tiny tensors: one thread (two OpenMP threads on a busy 2-core box stall)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _build(name: str, preset: str = "tiny", seed: int = 0, **over):
    torch.manual_seed(seed)
    return create_encoder(name, preset, **{**CONTRACTS[name], **over})


def _batch(name: str, b: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, *INPUTS[name], generator=g)


def _n_params(name: str, preset: str) -> int:
    with torch.device("meta"):          # no memory, no init cost
        enc = create_encoder(name, preset, **REAL[name])
    return sum(p.numel() for p in enc.parameters())


def test_registry_lists_every_encoder():
    assert encoder_names() == NAMES
    for name in NAMES:
        cls = encoder_class(name)
        assert cls.name == name
        assert set(cls.presets) == {"tiny", "small", "base"}
        assert set(cls.contract_fields) == set(CONTRACTS[name])
    assert {encoder_class(n).modality for n in NAMES} == {"eeg", "speech", "video", "features"}


@pytest.mark.parametrize("name", NAMES)
def test_tiny_shapes_finite_and_batch_independent(name):
    enc = _build(name).eval()
    x = _batch(name, 3)
    with torch.no_grad():
        out = enc(x)
        one = enc(x[:1])
    d = enc.dim
    assert out.tokens.shape == (3, N_TOKENS[name], d)
    assert out.pooled.shape == (3, d)
    assert one.tokens.shape == (1, N_TOKENS[name], d)
    assert one.pooled.shape == (1, d)
    assert torch.isfinite(out.tokens).all() and torch.isfinite(out.pooled).all()
    # No batch coupling (no BatchNorm): a sample alone encodes as it does in a batch.
    torch.testing.assert_close(one.pooled, out.pooled[:1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(one.tokens, out.tokens[:1], rtol=1e-4, atol=1e-5)
    # Different inputs give different embeddings (the encoder is not constant).
    assert not torch.allclose(out.pooled[0], out.pooled[1], atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_the_first_layer(name):
    enc = _build(name).train()
    out = enc(_batch(name, 3))
    g = torch.Generator().manual_seed(5)
    # Random projections: a plain sum after a LayerNorm would have zero gradient.
    loss = ((out.tokens * torch.randn(out.tokens.shape, generator=g)).sum()
            + (out.pooled * torch.randn(out.pooled.shape, generator=g)).sum())
    loss.backward()
    grads = dict(enc.named_parameters())
    missing = [k for k, p in grads.items() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in grads.values())
    assert grads[FIRST_LAYER[name]].grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts_grow_with_preset(name):
    tiny, small, base = (_n_params(name, p) for p in ("tiny", "small", "base"))
    assert tiny < small < base
    assert tiny < 200_000
    if name in ("ast", "eegformer", "vit"):  # the raw-signal transformers' size classes
        assert 1_000_000 <= small <= 3_000_000
        assert 10_000_000 <= base <= 30_000_000


def test_one_base_encoder_builds_and_runs():
    enc = _build("eegformer", "base").eval()
    with torch.no_grad():
        out = enc(_batch("eegformer", 1))
    assert out.tokens.shape == (1, 20, 384)    # stride 10 over 200 samples
    assert torch.isfinite(out.pooled).all()


@pytest.mark.parametrize("frames,grid_t", [(64, 5), (130, 10), (96, 7), (10, 1)])
def test_ast_accepts_other_frame_counts(frames, grid_t):
    enc = _build("ast").eval()          # tiny: 16 x 16 patches, stride 12; 5 mel rows
    with torch.no_grad():
        out = enc(torch.randn(2, 64, frames))
    assert out.tokens.shape == (2, 5 * grid_t, enc.dim)
    assert torch.isfinite(out.pooled).all()
    # The contract's own length uses the positional table as learned (no interpolation).
    assert enc.position_table((5, 7)) is enc.pos_embed


def test_ast_wrong_mel_count_names_n_mels():
    with pytest.raises(ValueError, match="n_mels"):
        _build("ast")(torch.randn(2, 40, 96))


def test_eegformer_wrong_channel_count_names_n_chans():
    enc = _build("eegformer")
    with pytest.raises(ValueError, match="n_chans is 4"):
        enc(torch.randn(2, 5, 200))
    with pytest.raises(ValueError, match=r"\(B, n_chans, n_times\)"):
        enc(torch.randn(4, 200))
    out = enc(torch.randn(2, 4, 130))       # other lengths: ceil(130 / 25) tokens
    assert out.tokens.shape == (2, 6, enc.dim)


def test_vit_rejects_uint8_and_wrong_size():
    enc = _build("vit")
    with pytest.raises(ValueError, match="normalise frames with the contract first"):
        enc(torch.zeros(1, 3, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="size is 64"):
        enc(torch.randn(1, 3, 3, 32, 32))
    out = enc(torch.randn(2, 5, 3, 64, 64))     # other frame counts: one token per frame
    assert out.tokens.shape == (2, 5, enc.dim)


def test_mlp_flattens_channel_band_features():
    enc = create_encoder("mlp", "tiny", in_features=150).eval()
    x = torch.randn(2, 30, 5)
    with torch.no_grad():
        torch.testing.assert_close(enc(x).pooled, enc(x.flatten(1)).pooled)
    with pytest.raises(ValueError, match="in_features is 150"):
        enc(torch.randn(2, 149))


@pytest.mark.parametrize("name", NAMES)
def test_weights_round_trip(name, tmp_path):
    enc = _build(name, seed=0).eval()
    path = enc.save_weights(tmp_path / f"{name}.pt")
    other = _build(name, seed=99).eval()
    x = _batch(name, 2)
    with torch.no_grad():
        assert not torch.allclose(other(x).pooled, enc(x).pooled)
        other.load_weights(path)
        torch.testing.assert_close(other(x).pooled, enc(x).pooled, rtol=0, atol=0)
        torch.testing.assert_close(other(x).tokens, enc(x).tokens, rtol=0, atol=0)
        again = create_encoder(name, "tiny", weights=path, **CONTRACTS[name]).eval()
        torch.testing.assert_close(again(x).pooled, enc(x).pooled, rtol=0, atol=0)
    assert other.config() == again.config() == enc.config()


def test_weights_into_other_preset_or_encoder_raise(tmp_path):
    path = _build("eegformer").save_weights(tmp_path / "eeg.pt")
    with pytest.raises(ConfigError, match="eeg.pt"):
        _build("eegformer", "small").load_weights(path)
    with pytest.raises(ConfigError, match="eeg.pt.*'eegformer'"):
        _build("ast").load_weights(path)
    with pytest.raises(ConfigError, match="eeg.pt"):        # same preset, other contract
        _build("eegformer", n_chans=6).load_weights(path)
    with pytest.raises(ConfigError, match="missing.pt"):
        _build("eegformer").load_weights(tmp_path / "missing.pt")


def test_bad_arguments_raise_config_error():
    with pytest.raises(ConfigError, match="huge"):
        create_encoder("ast", "huge", **CONTRACTS["ast"])
    with pytest.raises(ConfigError, match="width"):
        create_encoder("ast", "tiny", width=3, **CONTRACTS["ast"])
    with pytest.raises(ConfigError, match="n_frames"):
        create_encoder("ast", "tiny", n_mels=64)
    with pytest.raises(ConfigError, match="unknown encoder"):
        create_encoder("resnet", "tiny")
    with pytest.raises(ConfigError, match=r"heads \(5\) must divide dim \(48\)"):
        _build("eegformer", heads=5)
    with pytest.raises(ConfigError, match="size .* multiple of patch"):
        _build("vit", size=48)
    with pytest.raises(ConfigError, match="dropout"):
        _build("mlp", dropout=1.5)
    with pytest.raises(ConfigError, match="sfreq"):
        _build("eegformer", sfreq=0)
    with pytest.raises(ConfigError, match="stride"):
        _build("eegformer", n_times=10)
    with pytest.raises(ConfigError, match="depth"):
        _build("ast", depth=0)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_gives_finite_outputs(name):
    enc = _build(name).train()
    x = _batch(name, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = enc(x)
    assert out.tokens.shape == (2, N_TOKENS[name], enc.dim)
    assert out.pooled.shape == (2, enc.dim)
    assert torch.isfinite(out.tokens.float()).all() and torch.isfinite(out.pooled.float()).all()
    out.pooled.float().pow(2).sum().backward()
    assert torch.isfinite(dict(enc.named_parameters())[FIRST_LAYER[name]].grad).all()


# -- shared layers --------------------------------------------------------------------------

def test_padding_mask_hides_padded_tokens():
    torch.manual_seed(0)
    block, pool = TransformerBlock(16, 2).eval(), AttentionPool(16, 2).eval()
    x = torch.randn(2, 6, 16)
    mask = torch.tensor([[False] * 4 + [True] * 2] * 2)
    y = x.clone()
    y[:, 4:] = 100.0                        # change only the padded tokens
    with torch.no_grad():
        torch.testing.assert_close(block(x, mask)[:, :4], block(y, mask)[:, :4])
        torch.testing.assert_close(pool(x, mask), pool(y, mask))
        out, w = block(x, mask, return_attention=True)
    assert w.shape == (2, 6, 6)
    assert torch.all(w[:, :, 4:] == 0)


def test_positional_embedding_interpolates():
    pe = PositionalEmbedding((2, 4), 8)
    assert pe.table().shape == (1, 8, 8)
    assert pe.table((2, 7)).shape == (1, 14, 8)
    # Resizing a constant-in-time table keeps it constant (interpolation, not padding).
    with torch.no_grad():
        pe.weight.copy_(torch.arange(2.0).repeat_interleave(4)[None, :, None].expand(1, 8, 8))
    t = pe.table((2, 7)).reshape(2, 7, 8)
    torch.testing.assert_close(t[0], torch.zeros(7, 8))
    torch.testing.assert_close(t[1], torch.ones(7, 8))
    one_d = PositionalEmbedding(5, 4)
    assert one_d(torch.zeros(3, 9, 4)).shape == (3, 9, 4)
