"""JMML losses on data whose answer is known: canonical correlations built in, clusters built in.

The two-view data below has canonical correlations 0.9, 0.6, 0.3 and 0 by construction
(x_i = z_i + s_i n_i, y_i = z_i + s_i n'_i has corr(x_i, y_i) = 1 / (1 + s_i^2), independent
pairs, then mixed by random invertible matrices, which leaves canonical correlations unchanged).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emoray.errors import ConfigError
from emoray.models.losses import (dcca_correlation, dcca_loss, feature_mask, gaussian_noise,
                                  linear_cca, supcon_loss, time_shift)

RHOS = np.array([0.9, 0.6, 0.3, 0.0])


def two_views(m: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(m, 4) and (m, 4) views with canonical correlations RHOS, linearly mixed."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((m, 3))
    s = np.sqrt(1.0 / RHOS[:3] - 1.0)                  # corr(z + s n, z + s n') = 1/(1+s^2)
    x = np.hstack([z + s * rng.standard_normal((m, 3)), rng.standard_normal((m, 1))])
    y = np.hstack([z + s * rng.standard_normal((m, 3)), rng.standard_normal((m, 1))])
    return x @ rng.standard_normal((4, 4)), y @ rng.standard_normal((4, 4))


def qr_cca(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Canonical correlations as the cosines of principal angles (Bjorck-Golub, QR + SVD)."""
    qx, _ = np.linalg.qr(x - x.mean(0))
    qy, _ = np.linalg.qr(y - y.mean(0))
    return np.linalg.svd(qx.T @ qy, compute_uv=False)


@pytest.fixture(scope="module")
def big() -> tuple[np.ndarray, np.ndarray]:
    return two_views(20000)


def test_linear_cca_matches_principal_angles_and_truth(big):
    x, y = big
    rho = linear_cca(x, y)
    assert rho.shape == (4,) and np.all(np.diff(rho) <= 0)
    np.testing.assert_allclose(rho, qr_cca(x, y), atol=1e-10)
    # Sampling error ~ (1 - rho^2) / sqrt(m) < 0.01; the zero correlation is biased up ~1/sqrt(m).
    np.testing.assert_allclose(rho, RHOS, atol=0.02)


def test_dcca_on_raw_data_equals_linear_cca(big):
    x, y = big
    corr = dcca_correlation(torch.from_numpy(x), torch.from_numpy(y), r1=0.0, r2=0.0)
    assert corr.dtype == torch.float64 and corr.ndim == 0
    # Singular values below sqrt(eps) ~ 3e-5 count as 0 (here the sampled "zero" correlation,
    # ~1e-5), so the default eps agrees to ~1e-4 and a tiny eps agrees exactly.
    assert abs(corr.item() - linear_cca(x, y).sum()) < 1e-4
    exact = dcca_correlation(torch.from_numpy(x), torch.from_numpy(y), r1=0.0, r2=0.0,
                             eps=1e-16)
    assert abs(exact.item() - linear_cca(x, y).sum()) < 1e-8
    assert abs(corr.item() - RHOS.sum()) < 0.04
    # The ridge shrinks the correlation, and the loss is its negative.
    ridged = dcca_correlation(torch.from_numpy(x), torch.from_numpy(y), r1=1.0, r2=1.0)
    assert ridged.item() < corr.item() - 0.05
    assert abs(ridged.item() - linear_cca(x, y, reg=1.0).sum()) < 1e-4
    assert dcca_loss(torch.from_numpy(x), torch.from_numpy(y), r1=0.0, r2=0.0).item() == \
        pytest.approx(-corr.item())


def test_top_o_sums_the_largest(big):
    x, y = big
    rho = linear_cca(x, y)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for o in (1, 2, 3, 4):
        got = dcca_correlation(xt, yt, r1=0.0, r2=0.0, top_o=o, eps=1e-16).item()
        assert abs(got - rho[:o].sum()) < 1e-8
    assert abs(dcca_correlation(xt, yt, r1=0, r2=0, top_o=1).item() - 0.9) < 0.01


def test_float32_and_float64_agree_and_output_dtype():
    x, y = two_views(2000, seed=1)
    c64 = dcca_correlation(torch.from_numpy(x), torch.from_numpy(y))
    c32 = dcca_correlation(torch.from_numpy(x).float(), torch.from_numpy(y).float())
    assert c32.dtype == torch.float32
    assert abs(c32.item() - c64.item()) < 1e-4
    c16 = dcca_correlation(torch.from_numpy(x).bfloat16(), torch.from_numpy(y).bfloat16())
    assert c16.dtype == torch.float32 and abs(c16.item() - c64.item()) < 0.05


def test_autocast_does_not_lower_precision():
    x, y = two_views(1000, seed=2)
    xb = torch.from_numpy(x).bfloat16()
    yb = torch.from_numpy(y).bfloat16()
    ref = dcca_correlation(xb.double(), yb.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = dcca_correlation(xb.float(), yb.float())
    assert abs(got.item() - ref.item()) < 1e-6


def test_gradient_finite_and_correct():
    torch.manual_seed(0)
    a = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, q: dcca_correlation(p, q), (a, b))
    # Two dead output units (all-zero columns): S11 has the eigenvalue r twice, exactly.
    # eigh's own backward divides by the eigenvalue gap (NaN here); ours must stay finite
    # and match finite differences.
    dead = torch.randn(30, 4, dtype=torch.float64)
    dead[:, 2:] = 0.0
    dead.requires_grad_(True)
    b4 = torch.randn(30, 4, dtype=torch.float64, requires_grad=True)
    dcca_correlation(dead, b4).backward()
    assert torch.isfinite(dead.grad).all() and dead.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(lambda p, q: dcca_correlation(p, q, r1=1e-2, r2=1e-2),
                                    (dead, b4))


def test_gradient_finite_with_duplicated_columns():
    x, y = two_views(500, seed=3)
    x = np.hstack([x[:, :3], x[:, :1]])                 # column 3 duplicates column 0
    for r in (0.0, 1e-3):
        xt = torch.tensor(x, dtype=torch.float32, requires_grad=True)
        yt = torch.tensor(y, dtype=torch.float32, requires_grad=True)
        corr = dcca_correlation(xt, yt, r1=r, r2=r)
        corr.backward()
        assert torch.isfinite(corr) and 0.0 < corr.item() < 3.0
        assert torch.isfinite(xt.grad).all() and torch.isfinite(yt.grad).all()
        assert xt.grad.abs().sum() > 0


def test_gradient_ascent_reaches_linear_cca_optimum():
    x, y = two_views(1000, seed=4)
    xt = torch.tensor(x, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.float32)
    torch.manual_seed(0)
    w1 = torch.nn.Linear(4, 2, bias=False)
    w2 = torch.nn.Linear(4, 2, bias=False)
    opt = torch.optim.Adam([*w1.parameters(), *w2.parameters()], lr=0.05)
    start = dcca_correlation(w1(xt), w2(yt), top_o=2).item()
    for _ in range(200):
        opt.zero_grad()
        loss = dcca_loss(w1(xt), w2(yt), r1=1e-4, r2=1e-4)
        loss.backward()
        opt.step()
    end = dcca_correlation(w1(xt), w2(yt), r1=1e-4, r2=1e-4).item()
    best = linear_cca(x, y)[:2].sum()                   # ~ 0.9 + 0.6
    assert start < best - 0.2
    assert best - 0.01 < end <= best + 1e-6


def test_bad_arguments():
    h = torch.randn(10, 3)
    with pytest.raises(ConfigError, match="must exceed the common-space size k"):
        dcca_correlation(torch.randn(3, 3), torch.randn(3, 3))
    with pytest.raises(ConfigError, match="same shape"):
        dcca_correlation(h, torch.randn(10, 4))
    with pytest.raises(ConfigError, match="same shape"):
        dcca_correlation(h, torch.randn(11, 3))
    with pytest.raises(ConfigError, match="top_o"):
        dcca_correlation(h, h, top_o=4)
    with pytest.raises(ConfigError, match="r1"):
        dcca_correlation(h, h, r1=-1.0)
    with pytest.raises(ConfigError, match="same number of rows"):
        linear_cca(np.zeros((5, 2)), np.zeros((6, 2)))


# --------------------------------------------------------------------------- SupCon

def clustered(b: int = 32, v: int = 2, d: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(b) % 4
    centres = torch.randn(4, d, generator=g) * 3.0
    z = centres[labels][:, None, :] + 0.3 * torch.randn(b, v, d, generator=g)   # (B, V, D)
    return z, labels


def naive_supcon(z: torch.Tensor, labels: torch.Tensor, tau: float) -> float:
    """Khosla et al. eq. 2 written out with loops, skipping anchors without positives."""
    b, v, _ = z.shape
    f = torch.nn.functional.normalize(z.reshape(b * v, -1).double(), dim=-1)
    lab = labels.repeat_interleave(v).tolist()
    terms = []
    for i in range(b * v):
        others = [a for a in range(b * v) if a != i]
        pos = [p for p in others if lab[p] == lab[i]]
        if not pos:
            continue
        denom = sum(torch.exp(f[i] @ f[a] / tau) for a in others)
        terms.append(-sum(torch.log(torch.exp(f[i] @ f[p] / tau) / denom) for p in pos)
                     / len(pos))
    return float(sum(terms) / len(terms))


def test_supcon_matches_definition():
    z, labels = clustered(b=6, v=2, d=5, seed=3)
    assert abs(supcon_loss(z, labels, 0.5).item() - naive_supcon(z, labels, 0.5)) < 1e-5


def test_supcon_lower_for_clustered_than_shuffled():
    z, labels = clustered()
    wrong = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]
    good = supcon_loss(z, labels)
    assert good.ndim == 0 and torch.isfinite(good)
    assert good.item() < supcon_loss(z, wrong).item() - 1.0
    # Single-view (N, D) input works the same way.
    assert supcon_loss(z[:, 0], labels).item() < supcon_loss(z[:, 0], wrong).item() - 1.0


def test_supcon_scale_invariant_and_grad():
    z, labels = clustered(seed=2)
    z = z.clone().requires_grad_(True)
    a = supcon_loss(z, labels, temperature=0.2)
    b = supcon_loss(7.5 * z, labels, temperature=0.2)
    assert abs(a.item() - b.item()) < 1e-5
    a.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_supcon_singleton_class_is_skipped_not_nan():
    z, labels = clustered(b=9, v=1)
    labels = labels.clone()
    labels[0] = 99                                       # a class with one sample, one view
    z = z[:, 0].clone().requires_grad_(True)
    loss = supcon_loss(z, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    # The singleton has no term of its own but sits in the others' denominators.
    assert abs(loss.item() - naive_supcon(z.detach()[:, None], labels, 0.1)) < 1e-5
    assert z.grad[0].abs().sum() > 0
    # Every sample alone in its class: nothing to contrast, loss 0, no NaN.
    lone = supcon_loss(torch.randn(5, 8), torch.arange(5))
    assert lone.item() == 0.0
    # With two views, a singleton class still has its other view as a positive.
    two = supcon_loss(torch.randn(5, 2, 8), torch.arange(5))
    assert torch.isfinite(two) and two.item() > 0


# --------------------------------------------------------------------------- augmentations

def test_feature_mask_and_noise():
    x = torch.ones(200, 50)
    g = torch.Generator().manual_seed(0)
    m = feature_mask(x, 0.3, generator=g)
    assert m.shape == x.shape and set(m.unique().tolist()) <= {0.0, 1.0}
    assert abs((m == 0).float().mean().item() - 0.3) < 0.02
    assert torch.equal(feature_mask(x, 0.3, torch.Generator().manual_seed(0)), m)
    assert torch.equal(feature_mask(x, 0.0), x)
    n = gaussian_noise(torch.zeros(100, 100), 0.5, generator=torch.Generator().manual_seed(0))
    assert abs(n.std().item() - 0.5) < 0.02 and abs(n.mean().item()) < 0.02
    with pytest.raises(ConfigError, match="p must be"):
        feature_mask(x, 1.0)
    with pytest.raises(ConfigError, match="std"):
        gaussian_noise(x, -1.0)


def test_time_shift_rolls_each_sample():
    t = 20
    x = torch.arange(t, dtype=torch.float32).repeat(16, 3, 1)      # (B, C, T)
    out = time_shift(x, 4, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    shifts = []
    for b in range(16):
        k = int((out[b, 0, 0].item() * -1) % t)                    # out[..., 0] = x[..., -k]
        k = k if k <= t // 2 else k - t
        assert -4 <= k <= 4
        assert torch.equal(out[b], torch.roll(x[b], k, dims=-1))   # channels shift together
        shifts.append(k)
    assert len(set(shifts)) > 1                                    # per-sample shifts
    assert torch.equal(time_shift(x, 0), x)
    one = time_shift(torch.arange(10.0), 3, generator=torch.Generator().manual_seed(1))
    assert sorted(one.tolist()) == list(range(10))
    with pytest.raises(ConfigError, match="max_shift"):
        time_shift(x, -1)
