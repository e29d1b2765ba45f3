"""Attention fusion: any subset of modalities, masks, attention mass, modality dropout,
aux loss, errors, bf16 autocast, and learning on stand-in encoder tokens."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from emoray.errors import ConfigError
from emoray.models.fusion import AttentionFusion, FusionOutput

DIMS = {"eeg": 12, "speech": 10, "video": 14}
N_TOKENS = {"eeg": 10, "speech": 6, "video": 4}   # video has the fewest tokens
N_CLASSES = 4
SUBSETS = [s for r in (1, 2, 3) for s in itertools.combinations(DIMS, r)]


#: tiny tensors: one thread (two OpenMP threads on a busy 2-core box stall)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(**kw) -> AttentionFusion:
    torch.manual_seed(0)
    base = dict(n_classes=N_CLASSES, dim=32, heads=4, layers=2, dropout=0.0)
    return AttentionFusion(DIMS, **{**base, **kw}).eval()


def _tokens(b: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(b, N_TOKENS[m], d, generator=g) for m, d in DIMS.items()}


def _check_mass(out: FusionOutput, present: torch.Tensor) -> None:
    mass = out.attention_mass
    assert mass.dtype == torch.float32 and mass.shape == present.shape
    assert torch.all(mass[~present] == 0)                 # exactly zero when absent
    assert torch.all(mass[present] > 0)
    torch.testing.assert_close(mass.sum(1), torch.ones(len(mass)))


@pytest.mark.parametrize("how", ["omitted", "masked"])
@pytest.mark.parametrize("subset", SUBSETS, ids="+".join)
def test_every_subset_gives_finite_outputs_of_the_right_shape(subset, how):
    model, toks = _model(), _tokens(b=5)
    if how == "omitted":
        out = model({m: toks[m] for m in subset})
        assert set(out.aux_logits) == set(subset)
    else:   # in the dict, but absent for every sample, with garbage values
        absent = {m: torch.zeros(5, dtype=torch.bool) for m in DIMS if m not in subset}
        toks = {m: (t.fill_(math.nan) if m in absent else t) for m, t in toks.items()}
        out = model(toks, present=absent)
        assert set(out.aux_logits) == set(DIMS)
    assert out.logits.shape == (5, N_CLASSES) and torch.isfinite(out.logits).all()
    assert all(torch.isfinite(a).all() and a.shape == (5, N_CLASSES)
               for a in out.aux_logits.values())
    assert out.modalities == list(DIMS)
    expected = torch.tensor([m in subset for m in DIMS]).expand(5, -1)
    assert torch.equal(out.present, expected) and torch.equal(out.kept, expected)
    _check_mass(out, expected)


def test_per_sample_presence_and_token_masks():
    model, toks = _model(), _tokens(b=7)
    present = {"eeg": torch.tensor([1, 0, 0, 1, 1, 0, 1]).bool(),
               "speech": torch.tensor([0, 1, 0, 1, 0, 1, 1]).bool(),
               "video": torch.tensor([0, 0, 1, 0, 1, 1, 1]).bool()}
    masks = {"eeg": torch.zeros(7, N_TOKENS["eeg"], dtype=torch.bool)}
    masks["eeg"][6] = True                     # every EEG token of sample 6 is padding
    out = model(toks, masks=masks, present=present)
    expected = torch.stack([present[m] for m in DIMS], 1)
    expected[6, 0] = False
    assert torch.equal(out.present, expected)
    assert torch.isfinite(out.logits).all()
    _check_mass(out, expected)


def test_masking_a_modality_equals_omitting_it():
    model, toks = _model(), _tokens(b=6)
    for subset in SUBSETS:
        absent = {m: torch.zeros(6, dtype=torch.bool) for m in DIMS if m not in subset}
        masked = model(toks, present=absent)
        omitted = model({m: toks[m] for m in subset})
        torch.testing.assert_close(masked.logits, omitted.logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(masked.attention_mass, omitted.attention_mass,
                                   atol=1e-6, rtol=1e-5)


def test_padded_tokens_equal_the_shorter_sequence():
    # also with position embeddings: the real tokens keep their positions
    model, toks = _model(max_tokens={"eeg": 16}), _tokens(b=3)
    long = torch.cat([toks["eeg"], torch.full((3, 5, DIMS["eeg"]), 1e4)], 1)
    mask = torch.zeros(3, long.shape[1], dtype=torch.bool)
    mask[:, N_TOKENS["eeg"]:] = True
    a = model({**toks, "eeg": long}, masks={"eeg": mask})
    b = model(toks)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.aux_logits["eeg"], b.aux_logits["eeg"], atol=1e-5, rtol=1e-5)


def test_dict_key_order_does_not_matter():
    model, toks = _model(), _tokens()
    a = model(toks)
    b = model(dict(reversed(list(toks.items()))))
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(a.attention_mass, b.attention_mass)
    assert a.modalities == b.modalities == list(DIMS)


def test_position_embeddings_make_token_order_matter():
    toks = _tokens()
    perm = {**toks, "eeg": toks["eeg"].flip(1)}
    plain = _model()
    torch.testing.assert_close(plain(toks).logits, plain(perm).logits, atol=1e-5, rtol=1e-5)
    positional = _model(max_tokens={"eeg": N_TOKENS["eeg"]})
    assert not torch.allclose(positional(toks).logits, positional(perm).logits, atol=1e-4)
    with pytest.raises(ConfigError, match="max_tokens"):
        positional({"eeg": torch.randn(2, N_TOKENS["eeg"] + 1, DIMS["eeg"])})


def test_fusion_row_weights_are_the_attention_actually_applied():
    model = _model()
    block = model.blocks[0]
    g = torch.Generator().manual_seed(1)
    h = torch.randn(3, 9, 32, generator=g)
    pad = torch.zeros(3, 9, dtype=torch.bool)
    pad[0, 4:] = True
    pad[1, 1:] = True          # only the fusion token is a key: no NaN (unlike MHA rows)
    out, w = block.attend(h, pad)
    assert torch.isfinite(out).all() and w.shape == (3, 4, 9)
    assert torch.all(w[pad[:, None, :].expand_as(w)] == 0)
    torch.testing.assert_close(w[1, :, 0], torch.ones(4))
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 4))
    v = block.qkv(h).view(3, 9, 3, 4, 8)[:, :, 2].transpose(1, 2)      # (B, H, L, d_h)
    row0 = block.proj((w[:, :, None, :] @ v).squeeze(2).reshape(3, 32))  # (B, dim)
    torch.testing.assert_close(out[:, 0], row0, atol=1e-5, rtol=1e-5)


def test_modality_dropout_never_drops_all_and_is_reproducible():
    model = _model(modality_dropout=0.9).train()
    b = 600
    toks = _tokens(b=b)
    g = torch.Generator().manual_seed(2)
    present = {m: torch.rand(b, generator=g) < 0.7 for m in DIMS}
    present["video"] |= ~(present["eeg"] | present["speech"])
    out = model(toks, present=present, generator=torch.Generator().manual_seed(5))
    assert torch.all(out.kept <= out.present) and out.kept.any(1).all()
    single = out.present.sum(1) == 1
    assert single.any() and torch.equal(out.kept[single], out.present[single])
    full = out.present.all(1)
    assert out.kept[full].sum(1).float().mean() < 1.5     # 0.9 drops most, rescue keeps 1
    _check_mass(out, out.kept)                            # dropped modalities get 0 mass
    again = model(toks, present=present, generator=torch.Generator().manual_seed(5))
    assert torch.equal(again.kept, out.kept) and torch.equal(again.logits, out.logits)
    other = model(toks, present=present, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(other.kept, out.kept)
    assert torch.equal(model.eval()(toks, present=present).kept, out.present)


def test_aux_loss_averages_only_over_present_samples():
    model, toks = _model(), _tokens(b=6)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    present = {"eeg": torch.tensor([1, 1, 0, 0, 1, 0]).bool(),
               "speech": torch.zeros(6, dtype=torch.bool)}      # absent everywhere
    out = model(toks, present=present)
    loss, parts = model.loss(out, y, aux_weight=0.5)
    sel = present["eeg"]
    with torch.no_grad():
        expected = F.cross_entropy(out.logits, y) + 0.5 * (
            F.cross_entropy(out.aux_logits["eeg"][sel], y[sel])
            + F.cross_entropy(out.aux_logits["video"], y)) / 2
    torch.testing.assert_close(loss, expected)
    assert "ce_aux_speech" not in parts and parts["loss"] == pytest.approx(expected.item())
    # whatever the aux heads say for absent samples does not count
    out.aux_logits["eeg"] = torch.where(sel[:, None], out.aux_logits["eeg"],
                                        torch.full_like(out.aux_logits["eeg"], 1e4))
    out.aux_logits["speech"] = torch.full_like(out.aux_logits["speech"], -1e4)
    torch.testing.assert_close(model.loss(out, y, aux_weight=0.5)[0], expected)
    no_aux = model.loss(out, y, aux_weight=0.0)[0]
    torch.testing.assert_close(no_aux, F.cross_entropy(out.logits, y))


def test_gradients_reach_every_parameter():
    model = _model(max_tokens={"video": 8}).train()
    out = model(_tokens(b=4))
    model.loss(out, torch.tensor([0, 1, 2, 3]))[0].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_sample_without_any_modality_raises_value_error():
    model, toks = _model(), _tokens(b=4)
    present = {m: torch.tensor([True, True, False, True]) for m in DIMS}
    with pytest.raises(ValueError, match="sample 2"):
        model(toks, present=present)
    masks = {"video": torch.ones(4, N_TOKENS["video"], dtype=torch.bool)}
    masks["video"][:3] = False
    with pytest.raises(ValueError, match="sample 3"):
        model({"video": toks["video"]}, masks=masks)
    with pytest.raises(ValueError, match="no modality"):
        model({})


def test_bad_modalities_and_arguments_raise_config_error():
    model, toks = _model(), _tokens(b=2)
    with pytest.raises(ConfigError, match="'audio'"):
        model({**toks, "audio": torch.randn(2, 3, 8)})
    with pytest.raises(ConfigError, match="'face'"):
        model(toks, present={"face": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(ConfigError, match="tokens\\['eeg'\\].*D=12"):
        model({"eeg": torch.randn(2, 3, 13)})
    with pytest.raises(ConfigError, match="masks\\['eeg'\\]"):
        model(toks, masks={"eeg": torch.zeros(2, 3, dtype=torch.bool)})
    bad = [dict(dim=30, heads=4), dict(modality_dropout=1.0), dict(n_classes=1),
           dict(max_tokens={"audio": 4}), dict(layers=0)]
    for kw in bad:
        with pytest.raises(ConfigError, match=next(iter(kw))):
            AttentionFusion(DIMS, **{"n_classes": 3, **kw})
    with pytest.raises(ConfigError, match="modality_dims"):
        AttentionFusion({}, n_classes=3)


def test_bf16_autocast_gives_finite_outputs():
    model = _model(modality_dropout=0.3, max_tokens={"eeg": 10}).train()
    toks = _tokens(b=4)
    present = {"speech": torch.tensor([True, False, True, False])}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(toks, present=present, generator=torch.Generator().manual_seed(0))
        loss, _ = model.loss(out, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert torch.isfinite(out.logits.float()).all() and torch.isfinite(loss)
    _check_mass(out, out.kept)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_cuda_under_autocast():
    model = _model(modality_dropout=0.5).cuda().train()
    toks = {m: t.cuda() for m, t in _tokens(b=4).items()}
    present = {"eeg": torch.tensor([True, False, True, False], device="cuda")}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(toks, present=present, generator=torch.Generator().manual_seed(0))
    assert out.logits.device.type == "cuda" and torch.isfinite(out.logits.float()).all()
    assert out.kept.any(1).all()


# --- learning on stand-in encoder tokens --------------------------------------------------

SIGNAL = {"eeg": 0.0, "speech": 0.3, "video": 2.0}     # only video carries the label well


def _standin_batch(g, n, prototypes):
    y = torch.randint(0, N_CLASSES, (n,), generator=g)
    toks = {m: torch.randn(n, N_TOKENS[m], d, generator=g)
            + SIGNAL[m] * prototypes[m][y][:, None, :] for m, d in DIMS.items()}
    return toks, y


@pytest.fixture(scope="module")
def trained():
    """Train with and without modality dropout (200 steps each) on the same stand-in data."""
    g = torch.Generator().manual_seed(0)
    prototypes = {m: torch.randn(N_CLASSES, d, generator=g) for m, d in DIMS.items()}
    test = _standin_batch(torch.Generator().manual_seed(99), 256, prototypes)
    result = {}
    for p in (0.5, 0.0):
        model = _model(modality_dropout=p)
        with torch.no_grad():
            before = model(test[0]).attention_mass.mean(0)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        data, drop = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
        for _ in range(200):
            x, y = _standin_batch(data, 32, prototypes)
            loss, _ = model.loss(model(x, generator=drop), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        result[p] = (model.eval(), before)
    return result, test


def _accuracy(model, toks, y):
    with torch.no_grad():
        return (model(toks).logits.argmax(1) == y).float().mean().item()


def test_training_moves_attention_to_the_informative_modality(trained):
    result, (toks, y) = trained
    model, before = result[0.5]
    assert before[2] < before[0]                 # at first video gets less (fewest tokens)
    with torch.no_grad():
        after = model(toks).attention_mass.mean(0)
    assert after[2] > after[0] + 0.05 and after[2] > after[1] + 0.05
    assert after[2] > before[2] + 0.1
    assert _accuracy(model, toks, y) > 0.95


def test_modality_dropout_keeps_accuracy_without_video(trained):
    result, (toks, y) = trained
    no_video = {m: toks[m] for m in ("eeg", "speech")}
    with_dropout = _accuracy(result[0.5][0], no_video, y)
    without = _accuracy(result[0.0][0], no_video, y)
    assert with_dropout > 0.5                    # chance is 0.25; speech's weak signal
    assert with_dropout > without + 0.15         # robustness comes from modality dropout
    assert _accuracy(result[0.5][0], {"eeg": toks["eeg"]}, y) < 0.4   # EEG is noise


def test_fitted_expert_weights_favour_the_reliable_modality_and_are_saved():
    torch.manual_seed(0)
    f = AttentionFusion({"a": 8, "b": 8}, n_classes=3, dim=16, heads=2, layers=1,
                        fuse_aux=True, expert_weights=True).eval()
    x = {"a": torch.randn(64, 2, 8), "b": torch.randn(64, 3, 8)}
    before = f(x)
    # equal weights until fitted: the plain fuse_aux sum
    summed = before.head_logits + before.aux_logits["a"] + before.aux_logits["b"]
    assert torch.allclose(before.logits, summed, atol=1e-6)
    y = before.aux_logits["a"].argmax(1)              # labels expert "a" gets right
    w = f.fit_expert_weights(before.head_logits, before.aux_logits, before.kept, y)
    assert (w >= 0).all() and w[1] > w[0] and w[1] > w[2]
    after = f(x)
    weighted = w[0] * after.head_logits + w[1] * after.aux_logits["a"] + \
        w[2] * after.aux_logits["b"]
    assert torch.allclose(after.logits, weighted, atol=1e-5)
    assert F.cross_entropy(after.logits, y) < F.cross_entropy(before.logits, y)
    again = AttentionFusion(**f.config())                 # the config asks for the buffer
    again.load_state_dict(f.state_dict())
    assert torch.equal(again.expert_weight, f.expert_weight)
    with pytest.raises(ConfigError, match="fuse_aux"):
        AttentionFusion({"a": 8}, n_classes=3, dim=16, heads=2, expert_weights=True)
