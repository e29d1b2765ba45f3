"""EEGformer as published (Wan et al. 2023): the feature cube, which axis each of the three
transformers attends over, gradients, bf16, lengths, and a model-behaviour check (alpha)."""

from __future__ import annotations

import math
import time

import pytest
import torch

from emoray.errors import ConfigError
from emoray.models import create_encoder

CONTRACT = dict(n_chans=4, sfreq=100.0, n_times=200)


#: tiny tensors: one thread (two OpenMP threads on a busy 2-core box stall)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny(seed: int = 0, **over):
    torch.manual_seed(seed)
    return create_encoder("eegformer", "tiny", **{**CONTRACT, **over})


def _inputs(enc, x):
    """The inputs each transformer received in one forward pass (forward pre-hooks)."""
    seen = {}
    hooks = [getattr(enc, k).register_forward_pre_hook(
        lambda mod, args, k=k: seen.__setitem__(k, args[0].detach().clone()))
        for k in ("regional", "synchronous", "temporal")]
    with torch.no_grad():
        enc(x)
    for h in hooks:
        h.remove()
    return seen


def test_feature_cube_is_channels_x_filters_x_time_and_depthwise():
    enc = _tiny().eval()
    x = torch.randn(2, 4, 200)
    with torch.no_grad():
        cube = enc.feature_cube(x)
        assert cube.shape == (2, 4, enc.filters, 200)               # (B, C, F, T)
        assert enc.feature_cube(torch.randn(2, 4, 130)).shape == (2, 4, enc.filters, 130)
        y = x.clone()
        y[:, 1] += torch.randn(2, 200)                              # change channel 1 only
        changed = (enc.feature_cube(y) - cube).abs().amax(dim=(2, 3))   # (B, C)
    assert (changed[:, 1] > 0).all()
    assert torch.all(changed[:, [0, 2, 3]] == 0)                   # depth-wise per channel


def test_each_transformer_gets_the_axis_it_attends_over():
    enc = _tiny().eval()
    b, m = 3, 8                                             # ceil(200 / 25) segments
    seen = _inputs(enc, torch.randn(b, 4, 200))
    w = enc.width
    # regional: per (sample, channel), tokens = the F convolutional features
    assert seen["regional"].shape == (b * 4, enc.filters, m, w)
    # synchronous: per (sample, feature), tokens = the C EEG channels
    assert seen["synchronous"].shape == (b * enc.filters, 4, m, w)
    # temporal: [CLS] + one token per time segment
    assert seen["temporal"].shape == (b, 1 + m, enc.dim)


@pytest.mark.parametrize("module,other", [("regional", "channel"),
                                          ("synchronous", "feature")])
def test_regional_and_synchronous_mix_only_along_their_axis(module, other):
    enc = _tiny().eval()
    h = _inputs(enc, torch.randn(2, 4, 200))[module]                # (groups, L, M, w)
    block = getattr(enc, module)
    g = h.clone()
    g[0, 0, 0] += 1.0                     # one token (group 0, position 0), one segment
    with torch.no_grad():
        diff = (block(g) - block(h)).abs().amax(dim=-1)             # (groups, L, M)
    # Within group 0 every token and every segment changes: attention across the axis,
    # with scores over the whole series (one map per series, as in the paper).
    assert (diff[0] > 0).all()
    # Other groups (another EEG channel / another feature, or another sample) are untouched.
    assert torch.all(diff[1:] == 0), f"{module} mixed across the {other} axis"


def test_temporal_transformer_attends_across_time_segments():
    enc = _tiny().eval()
    z = _inputs(enc, torch.randn(2, 4, 200))["temporal"]            # (B, 1 + M, D)
    y = z.clone()
    y[0, 1] += 1.0                                          # first segment, sample 0
    with torch.no_grad():
        diff = (enc.temporal(y) - enc.temporal(z)).abs().amax(dim=-1)   # (B, 1 + M)
    assert (diff[0] > 0).all() and torch.all(diff[1] == 0)


def test_forward_backward_and_gradient_reaches_the_first_conv():
    enc = _tiny().train()
    out = enc(torch.randn(3, 4, 200))
    assert out.tokens.shape == (3, 8, enc.dim) and out.pooled.shape == (3, enc.dim)
    g = torch.Generator().manual_seed(5)
    loss = ((out.tokens * torch.randn(out.tokens.shape, generator=g)).sum()
            + (out.pooled * torch.randn(out.pooled.shape, generator=g)).sum())
    loss.backward()
    grads = {k: p.grad for k, p in enc.named_parameters()}
    assert all(v is not None and torch.isfinite(v).all() for v in grads.values())
    assert grads["odcm.conv1.weight"].abs().sum() > 0


@pytest.mark.parametrize("n_times", [200, 130])
def test_bf16_autocast_on_cpu_is_finite(n_times):
    enc = _tiny().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = enc(torch.randn(2, 4, n_times))
    assert out.tokens.shape == (2, math.ceil(n_times / 25), enc.dim)
    assert torch.isfinite(out.tokens.float()).all()
    assert torch.isfinite(out.pooled.float()).all()
    out.pooled.float().pow(2).sum().backward()
    assert torch.isfinite(enc.odcm["conv1"].weight.grad).all()


def test_lengths_other_than_the_contract():
    enc = _tiny().eval()
    with torch.no_grad():
        assert enc(torch.randn(1, 4, 400)).tokens.shape == (1, 16, enc.dim)  # resized pos.
        assert enc(torch.randn(1, 4, 25)).pooled.shape == (1, enc.dim)        # one segment
    with pytest.raises(ValueError, match="n_times must be at least 25"):
        enc(torch.randn(1, 4, 24))
    with pytest.raises(ConfigError, match="n_times"):
        _tiny(n_times=40)                                         # under two segments
    with pytest.raises(ConfigError, match=r"token_heads \(3\) must divide width \(8\)"):
        _tiny(token_heads=3)


def _alpha_eeg(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise EEG (4 ch, 2 s at 100 Hz); label 1 adds strong 9-11 Hz alpha, label 0 weak.
    Each channel is z-scored, so only the spectrum's shape tells the classes apart."""
    y = torch.arange(n) % 2
    t = torch.arange(200) / 100.0
    freq = 9.0 + 2.0 * torch.rand(n, 1, 1, generator=gen)
    phase = 2 * math.pi * torch.rand(n, 4, 1, generator=gen)
    amp = torch.where(y == 1, 1.0, 0.25)[:, None, None]
    alpha = amp * torch.sin(2 * math.pi * freq * t + phase)                 # (N, 4, 200)
    x = torch.randn(n, 4, 200, generator=gen) + alpha
    x = (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True)
    return x, y


def test_tiny_eegformer_learns_alpha_power():
    gen = torch.Generator().manual_seed(0)
    x_train, y_train = _alpha_eeg(512, gen)
    x_test, y_test = _alpha_eeg(128, gen)
    enc = _tiny(seed=1)
    head = torch.nn.Linear(enc.dim, 2)
    opt = torch.optim.AdamW([*enc.parameters(), *head.parameters()], lr=3e-3)
    start = time.perf_counter()
    enc.train()
    for _ in range(80):                       # 80 batches of 32: 5 epochs
        idx = torch.randperm(512, generator=gen)[:32]
        logits = head(enc(x_train[idx]).pooled)
        loss = torch.nn.functional.cross_entropy(logits, y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    took = time.perf_counter() - start
    enc.eval()
    with torch.no_grad():
        acc = (head(enc(x_test).pooled).argmax(-1) == y_test).float().mean().item()
    assert took < 5.0, f"training took {took:.1f} s"
    assert acc > 0.8, f"held-out accuracy {acc:.2f}"
