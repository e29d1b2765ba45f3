"""E-DCC-CAE on a toy paired problem with a known shared latent, and label-based pairing.

Speech and EEG "embeddings" are two different linear mixtures of a shared 2-D latent u (which
carries the label, y = [u_0 > 0]) plus larger modality-private nuisance. Deep CCA must find u
in both views; then speech alone predicts the label.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emoray.errors import ConfigError
from emoray.models.jmml import EDCCCAE, pair_by_label

DIM_S, DIM_E, K = 10, 6, 2


def toy(m: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mix = torch.Generator().manual_seed(1234)            # same mixing for every split
    a_s = torch.randn(2 + 4, DIM_S, generator=mix)
    a_e = torch.randn(2 + 3, DIM_E, generator=mix)
    u = torch.randn(m, 2, generator=g)                   # (m, 2) shared latent
    nuis_s = 1.5 * torch.randn(m, 4, generator=g)        # private, larger than the signal
    nuis_e = 1.5 * torch.randn(m, 3, generator=g)
    e_s = torch.cat([u, nuis_s], 1) @ a_s + 0.1 * torch.randn(m, DIM_S, generator=g)
    e_e = torch.cat([u, nuis_e], 1) @ a_e + 0.1 * torch.randn(m, DIM_E, generator=g)
    y = (u[:, 0] > 0).long()
    return e_s, e_e, y


def probe_accuracy(train: torch.Tensor, y_train: torch.Tensor, test: torch.Tensor,
                   y_test: torch.Tensor) -> float:
    """Held-out accuracy of a logistic-regression probe on standardised features."""
    mu, sd = train.mean(0), train.std(0) + 1e-6
    xtr, xte = (train - mu) / sd, (test - mu) / sd
    lin = torch.nn.Linear(xtr.shape[1], 2)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=100)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xtr), y_train)
        loss.backward()
        return loss

    opt.step(closure)
    return (lin(xte).argmax(1) == y_test).float().mean().item()


def test_shapes_and_representations():
    torch.manual_seed(0)
    model = EDCCCAE(DIM_S, DIM_E, K, hidden=16, n_classes=3)
    e_s, e_e = torch.randn(7, DIM_S), torch.randn(7, DIM_E)
    out = model(e_s, e_e)
    assert out["z_s"].shape == out["z_e"].shape == (7, K)
    assert out["rec_s_self"].shape == out["rec_s_cross"].shape == (7, DIM_S)
    assert out["rec_e_self"].shape == out["rec_e_cross"].shape == (7, DIM_E)
    assert out["logits_s"].shape == out["logits_e"].shape == (7, 3)
    model.eval()
    with torch.no_grad():
        out = model(e_s, e_e)
        rep = model.speech_only(e_s)
        both = model.combined(e_s, e_e)
    assert rep.shape == (7, model.speech_only_dim) == (7, K + DIM_E)
    # speech_only is exactly [z_s, g_e(z_s)] = [z_s, the cross reconstruction of EEG].
    torch.testing.assert_close(rep, torch.cat([out["z_s"], out["rec_e_cross"]], 1))
    assert both.shape == (7, model.combined_dim) == (7, 2 * K)
    torch.testing.assert_close(both, torch.cat([out["z_s"], out["z_e"]], 1))


def test_loss_parts_finite_and_every_part_trains_its_modules():
    torch.manual_seed(1)
    model = EDCCCAE(DIM_S, DIM_E, K, hidden=16)
    e_s, e_e, y = toy(64, seed=0)
    out = model(e_s, e_e)
    total, parts = model.loss(out, e_s, e_e, y, alpha=0.5, beta=0.5, gamma=1.0, top_o=1)
    assert set(parts) == {"corr", "self", "cross", "cls", "total"}
    assert all(np.isfinite(v) for v in parts.values())
    assert 0.0 <= parts["corr"] <= 1.0 + 1e-6            # top_o=1: one correlation
    assert parts["total"] == pytest.approx(-parts["corr"] + 0.5 * parts["self"]
                                           + 0.5 * parts["cross"] + parts["cls"], rel=1e-5)
    total.backward()
    for name in ("f_s", "f_e", "g_s", "g_e", "head"):
        grads = [p.grad for p in getattr(model, name).parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name
    # Without the class term, labels may be omitted; with it they are required.
    _, parts0 = model.loss(model(e_s, e_e), e_s, e_e, None, alpha=1.0, beta=1.0, gamma=0.0)
    assert parts0["cls"] == 0.0
    with pytest.raises(ConfigError, match="gamma"):
        model.loss(out, e_s, e_e, None, alpha=1.0, beta=1.0, gamma=1.0)
    with pytest.raises(ConfigError, match="alpha"):
        model.loss(out, e_s, e_e, y, alpha=-1.0, beta=1.0, gamma=1.0)


def test_bf16_autocast_forward_and_loss():
    torch.manual_seed(2)
    model = EDCCCAE(DIM_S, DIM_E, K, hidden=16)
    e_s, e_e, y = toy(64, seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(e_s, e_e)
        total, parts = model.loss(out, e_s, e_e, y, alpha=1.0, beta=1.0, gamma=1.0)
    assert total.dtype == torch.float32 and torch.isfinite(total)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("gamma", [0.0, 1.0])
def test_training_finds_shared_latent_and_speech_alone_predicts_label(gamma):
    torch.manual_seed(0)
    e_s, e_e, y = toy(512, seed=10)
    t_s, t_e, t_y = toy(512, seed=11)
    model = EDCCCAE(DIM_S, DIM_E, K, hidden=32, dropout=0.0)

    def evaluate() -> tuple[float, float, float]:
        model.eval()
        with torch.no_grad():
            _, parts = model.loss(model(e_s, e_e), e_s, e_e, y, alpha=0.0, beta=0.0, gamma=0.0)
            _, held = model.loss(model(t_s, t_e), t_s, t_e, t_y, alpha=0.0, beta=0.0, gamma=0.0)
            acc = probe_accuracy(model.speech_only(e_s), y, model.speech_only(t_s), t_y)
        model.train()
        return parts["corr"], held["corr"], acc

    corr0, held0, acc0 = evaluate()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        total, _ = model.loss(model(e_s, e_e), e_s, e_e, y, alpha=0.05, beta=0.05, gamma=gamma)
        total.backward()
        opt.step()
    corr1, held1, acc1 = evaluate()
    # Two shared latent dims: the total correlation is at most 2, on held-out pairs too.
    assert corr0 < 0.5 and corr1 > 1.8
    assert held0 < 0.8 and held1 > 1.8
    assert acc0 < 0.75
    if gamma > 0:
        # With the class term on the common space, speech alone is linearly predictive.
        # (Correlation alone finds u only up to a nonlinear warp, so no accuracy bound there.)
        assert acc1 > 0.9


def test_bad_constructor_and_inputs():
    with pytest.raises(ConfigError, match="k must be"):
        EDCCCAE(4, 4, 0)
    with pytest.raises(ConfigError, match="n_classes"):
        EDCCCAE(4, 4, 2, n_classes=1)
    with pytest.raises(ConfigError, match="dropout"):
        EDCCCAE(4, 4, 2, dropout=1.0)
    model = EDCCCAE(4, 3, 2, hidden=8)
    with pytest.raises(ConfigError, match=r"e_e must be \(B, 3\)"):
        model(torch.randn(5, 4), torch.randn(5, 4))
    with pytest.raises(ConfigError, match="same number of pairs"):
        model(torch.randn(5, 4), torch.randn(6, 3))
    with pytest.raises(ConfigError, match="must exceed the common-space size k"):
        out = model(torch.randn(2, 4), torch.randn(2, 3))
        model.loss(out, torch.randn(2, 4), torch.randn(2, 3), None, alpha=0, beta=0, gamma=0)


# --------------------------------------------------------------------------- pairing

def test_pair_by_label_same_label_fresh_each_call():
    labels_s = np.array([0, 1, 1, 0, 2, 2, 2, 1] * 25)
    labels_e = np.array([2, 0, 1, 1, 0, 2, 0, 1, 2, 2, 0, 1])
    rng = np.random.default_rng(0)
    a = pair_by_label(labels_s, labels_e, rng)
    b = pair_by_label(labels_s, labels_e, rng)
    assert a.shape == labels_s.shape and a.dtype == np.int64
    assert np.array_equal(labels_e[a], labels_s) and np.array_equal(labels_e[b], labels_s)
    assert not np.array_equal(a, b)                         # fresh draw per call (epoch)
    for lab in (0, 1, 2):                                   # every same-label EEG sample used
        assert set(a[labels_s == lab]) == set(np.flatnonzero(labels_e == lab))
    # Reproducible from the seed.
    assert np.array_equal(pair_by_label(labels_s, labels_e, np.random.default_rng(0)), a)


def test_pair_by_label_missing_label_is_named():
    with pytest.raises(ConfigError, match="speech label 3 has no EEG sample"):
        pair_by_label(np.array([0, 1, 3]), np.array([0, 1, 1]), np.random.default_rng(0))
    with pytest.raises(ConfigError, match="1-D"):
        pair_by_label(np.zeros((2, 2)), np.zeros(3), np.random.default_rng(0))
    # Extra EEG labels absent from speech are fine.
    idx = pair_by_label(np.array(["hi", "lo"]), np.array(["lo", "hi", "mid"]),
                        np.random.default_rng(0))
    assert idx.tolist() == [1, 0]
