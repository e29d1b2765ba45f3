"""JMML losses: deep CCA correlation, supervised contrastive loss, and the SSL view augmentations.

* :func:`dcca_correlation` / :func:`dcca_loss` — the total canonical correlation of two
  batches of network outputs (Andrew et al. 2013), METHODS.md section A step 2. Computed in
  float64 with autocast disabled, whatever the input dtype or autocast state.
* :func:`linear_cca` — closed-form canonical correlations in numpy/scipy: the reference the
  DCCA objective is tested against (an independent code path, no torch).
* :func:`supcon_loss` — supervised contrastive loss (Khosla et al. 2020) over V views,
  METHODS.md section A step 1 (JEC-SSL).
* :func:`feature_mask`, :func:`gaussian_noise`, :func:`time_shift` — the augmentations that
  make the JEC-SSL views; pure functions of a tensor and an optional ``torch.Generator``.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

from emoray.errors import ConfigError

__all__ = ["dcca_correlation", "dcca_loss", "linear_cca", "supcon_loss", "feature_mask",
           "gaussian_noise", "time_shift"]


# --------------------------------------------------------------------------- deep CCA

class _SymInvSqrt(torch.autograd.Function):
    """``A^{-1/2}`` of a symmetric matrix by eigendecomposition, eigenvalues clamped at eps.

    The backward pass uses the Daleckii-Krein (divided-difference) formula
    ``dF = V (L o (V^T dA V)) V^T`` with ``L_ij = (f(l_i) - f(l_j)) / (l_i - l_j)``, written
    for ``f(l) = l^{-1/2}`` in the closed form ``-1 / (s_i s_j (s_i + s_j))`` (``s = sqrt(l)``),
    which stays finite when eigenvalues coincide. ``torch.linalg.eigh``'s own backward divides
    by eigenvalue gaps and returns inf/NaN for a collapsed (low-rank) batch, whose small
    eigenvalues all sit at the ridge ``r``. Eigen-directions clamped at eps get no gradient.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, eps: float) -> torch.Tensor:
        lam, vec = torch.linalg.eigh(a)                         # (k,), (k, k)
        kept = lam > eps
        s = lam.clamp(min=eps).sqrt()                           # (k,)
        ctx.save_for_backward(vec, s, kept)
        return (vec / s) @ vec.T                                # (k, k)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        vec, s, kept = ctx.saved_tensors
        loewner = -1.0 / (s[:, None] * s[None, :] * (s[:, None] + s[None, :]))  # (k, k)
        loewner = loewner * (kept[:, None] & kept[None, :])
        g = vec.T @ (0.5 * (grad + grad.T)) @ vec
        return vec @ (loewner * g) @ vec.T, None


def _check_pair(h1: torch.Tensor, h2: torch.Tensor, top_o: int | None) -> None:
    if h1.ndim != 2 or h2.ndim != 2:
        raise ConfigError(f"dcca_correlation: h1 and h2 must be 2-D (m, k), got shapes "
                          f"{tuple(h1.shape)} and {tuple(h2.shape)}")
    if h1.shape != h2.shape:
        raise ConfigError(f"dcca_correlation: h1 and h2 must have the same shape (m, k), got "
                          f"{tuple(h1.shape)} and {tuple(h2.shape)}")
    m, k = h1.shape
    if m <= k:
        raise ConfigError(f"dcca_correlation: batch of m pairs must exceed the common-space "
                          f"size k (got m={m}, k={k}); use a larger batch or a smaller k")
    if top_o is not None and not (isinstance(top_o, int) and 1 <= top_o <= k):
        raise ConfigError(f"dcca_correlation: top_o must be None or an int in [1, k={k}], "
                          f"got {top_o!r}")


def dcca_correlation(h1: torch.Tensor, h2: torch.Tensor, *, r1: float = 1e-3,
                     r2: float = 1e-3, top_o: int | None = None,
                     eps: float = 1e-9) -> torch.Tensor:
    """Total canonical correlation of two views (deep CCA objective, Andrew et al. 2013).

    With centred ``H1, H2`` (m, k): ``S12 = H1^T H2 / (m-1)``, ``S11 = H1^T H1 / (m-1) + r1 I``,
    ``S22 = H2^T H2 / (m-1) + r2 I``, ``T = S11^{-1/2} S12 S22^{-1/2}``; the correlation is the
    trace norm of ``T`` (sum of its singular values) or the sum of its ``top_o`` largest.

    Parameters
    ----------
    h1, h2 : torch.Tensor
        ``(m, k)`` outputs of the two projections for m paired samples; any float dtype.
    r1, r2 : float
        Ridge added to each view's covariance (``>= 0``).
    top_o : int or None
        Sum only the ``top_o`` largest singular values (``1 <= top_o <= k``); None sums all.
    eps : float
        Floor for eigenvalues (covariances and ``T^T T``); keeps gradients finite.

    Returns
    -------
    torch.Tensor
        Scalar, float32 for half/bfloat16/float32 inputs, float64 for float64 inputs.

    Notes
    -----
    Everything is computed in float64 with autocast disabled, so the result is the same under
    ``torch.autocast("cuda", dtype=torch.bfloat16)``. Singular values are the square roots of
    ``eigvalsh(T^T T)`` (clamped at ``eps``), whose gradient has no eigenvalue-gap terms.
    """
    _check_pair(h1, h2, top_o)
    if r1 < 0 or r2 < 0 or eps <= 0:
        raise ConfigError(f"dcca_correlation: r1, r2 must be >= 0 and eps > 0, got "
                          f"r1={r1}, r2={r2}, eps={eps}")
    out_dtype = torch.promote_types(h1.dtype, torch.float32)
    m, k = h1.shape
    with torch.autocast(device_type=h1.device.type, enabled=False):
        a = h1.to(torch.float64)
        b = h2.to(torch.float64)
        a = a - a.mean(dim=0, keepdim=True)                     # (m, k)
        b = b - b.mean(dim=0, keepdim=True)                     # (m, k)
        eye = torch.eye(k, dtype=torch.float64, device=a.device)
        s12 = a.T @ b / (m - 1)                                 # (k, k)
        s11 = a.T @ a / (m - 1) + r1 * eye
        s22 = b.T @ b / (m - 1) + r2 * eye
        s11 = 0.5 * (s11 + s11.T)
        s22 = 0.5 * (s22 + s22.T)
        t = _SymInvSqrt.apply(s11, eps) @ s12 @ _SymInvSqrt.apply(s22, eps)   # (k, k)
        tt = t.T @ t
        lam = torch.linalg.eigvalsh(0.5 * (tt + tt.T))          # (k,) ascending
        sv = torch.where(lam > eps, lam.clamp(min=eps).sqrt(), torch.zeros_like(lam))
        corr = sv.sum() if top_o is None else sv[-top_o:].sum()
    return corr.to(out_dtype)


def dcca_loss(h1: torch.Tensor, h2: torch.Tensor, *, r1: float = 1e-3, r2: float = 1e-3,
              top_o: int | None = None, eps: float = 1e-9) -> torch.Tensor:
    """``-dcca_correlation(h1, h2, ...)``: the DCCA term ``L_corr`` to minimise."""
    return -dcca_correlation(h1, h2, r1=r1, r2=r2, top_o=top_o, eps=eps)


def _np_inv_sqrt(s: np.ndarray) -> np.ndarray:
    lam, vec = scipy.linalg.eigh(s)
    if lam.min() <= 0:
        raise ConfigError("linear_cca: a covariance matrix is singular; pass reg > 0")
    return (vec / np.sqrt(lam)) @ vec.T


def linear_cca(x: np.ndarray, y: np.ndarray, *, reg: float = 0.0) -> np.ndarray:
    """Closed-form canonical correlations of two data matrices (numpy/scipy reference).

    Parameters
    ----------
    x : np.ndarray
        ``(m, p)`` samples of the first view.
    y : np.ndarray
        ``(m, q)`` samples of the second view, rows paired with ``x``.
    reg : float
        Ridge added to both covariance matrices.

    Returns
    -------
    np.ndarray
        The ``min(p, q)`` canonical correlations, sorted descending.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ConfigError(f"linear_cca: x and y must be 2-D with the same number of rows, "
                          f"got {x.shape} and {y.shape}")
    if reg < 0:
        raise ConfigError(f"linear_cca: reg must be >= 0, got {reg}")
    m = x.shape[0]
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    sxx = x.T @ x / (m - 1) + reg * np.eye(x.shape[1])
    syy = y.T @ y / (m - 1) + reg * np.eye(y.shape[1])
    sxy = x.T @ y / (m - 1)
    t = _np_inv_sqrt(sxx) @ sxy @ _np_inv_sqrt(syy)
    return np.sort(np.linalg.svd(t, compute_uv=False))[::-1].copy()


# --------------------------------------------------------------------------- SupCon

def supcon_loss(z: torch.Tensor, labels: torch.Tensor,
                temperature: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, the "L_out" form).

    Every view of every sample is an anchor; its positives are all other views with the same
    label (its own other views included, itself excluded); the denominator runs over all views
    but the anchor. Embeddings are L2-normalised, so the loss is invariant to their scale.

    Parameters
    ----------
    z : torch.Tensor
        ``(B, V, D)`` embeddings of V views per sample, or ``(N, D)`` for a single view.
    labels : torch.Tensor
        ``(B,)`` (or ``(N,)``) integer class labels.
    temperature : float
        Softmax temperature ``tau > 0``.

    Returns
    -------
    torch.Tensor
        Scalar float32 (float64 for float64 input). Anchors without any positive (a class
        with one sample and a single view) are skipped; if no anchor has a positive the loss
        is 0 (still attached to the graph).
    """
    if z.ndim == 2:
        z = z[:, None, :]                                       # (N, 1, D)
    if z.ndim != 3:
        raise ConfigError(f"supcon_loss: z must be (B, V, D) or (N, D), got {tuple(z.shape)}")
    b, v, _ = z.shape
    if labels.shape != (b,):
        raise ConfigError(f"supcon_loss: labels must have shape ({b},), got "
                          f"{tuple(labels.shape)}")
    if temperature <= 0:
        raise ConfigError(f"supcon_loss: temperature must be > 0, got {temperature}")
    out_dtype = torch.promote_types(z.dtype, torch.float32)
    with torch.autocast(device_type=z.device.type, enabled=False):
        feats = F.normalize(z.reshape(b * v, -1).to(out_dtype), dim=-1)   # (BV, D)
        lab = labels.to(z.device).repeat_interleave(v)          # (BV,)
        sim = feats @ feats.T / temperature                     # (BV, BV)
        self_mask = torch.eye(b * v, dtype=torch.bool, device=z.device)
        sim = sim.masked_fill(self_mask, float("-inf"))
        log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
        pos = (lab[:, None] == lab[None, :]) & ~self_mask       # (BV, BV)
        n_pos = pos.sum(dim=1)                                  # (BV,)
        pos_sum = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
        has_pos = n_pos > 0
        if not bool(has_pos.any()):
            return feats.sum() * 0.0
        per_anchor = pos_sum[has_pos] / n_pos[has_pos]
        return -per_anchor.mean()


# --------------------------------------------------------------------------- augmentations

def _rand(shape: tuple[int, ...], x: torch.Tensor, generator: torch.Generator | None,
          normal: bool = False) -> torch.Tensor:
    device = generator.device if generator is not None else x.device
    fn = torch.randn if normal else torch.rand
    return fn(shape, generator=generator, device=device).to(x.device)


def feature_mask(x: torch.Tensor, p: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero each element of ``x`` independently with probability ``p`` (no rescaling)."""
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"feature_mask: p must be in [0, 1), got {p}")
    keep = _rand(tuple(x.shape), x, generator) >= p
    return x * keep.to(x.dtype)


def gaussian_noise(x: torch.Tensor, std: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Add i.i.d. Gaussian noise of standard deviation ``std`` to every element of ``x``."""
    if std < 0:
        raise ConfigError(f"gaussian_noise: std must be >= 0, got {std}")
    return x + std * _rand(tuple(x.shape), x, generator, normal=True).to(x.dtype)


def time_shift(x: torch.Tensor, max_shift: int,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Roll each sample of ``x`` (B, ..., T) along its last axis by its own random shift.

    Shifts are integers drawn uniformly from ``[-max_shift, max_shift]``, one per sample
    (per leading index); a 1-D ``x`` is one sample. Rolling is circular, so nothing is lost.
    """
    if not isinstance(max_shift, int) or max_shift < 0:
        raise ConfigError(f"time_shift: max_shift must be an int >= 0, got {max_shift!r}")
    if x.ndim == 0:
        raise ConfigError("time_shift: x must have at least one axis (time last)")
    if max_shift == 0:
        return x
    squeeze = x.ndim == 1
    xb = x[None] if squeeze else x                              # (B, ..., T)
    b, t = xb.shape[0], xb.shape[-1]
    device = generator.device if generator is not None else x.device
    shifts = torch.randint(-max_shift, max_shift + 1, (b,), generator=generator,
                           device=device).to(x.device)          # (B,)
    idx = (torch.arange(t, device=x.device)[None, :] - shifts[:, None]) % t   # (B, T)
    idx = idx.reshape(b, *([1] * (xb.ndim - 2)), t).expand_as(xb)
    out = torch.gather(xb, -1, idx)
    return out[0] if squeeze else out
