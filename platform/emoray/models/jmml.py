"""E-DCC-CAE: the inter-modal step of JMML (METHODS.md section A, steps 2 and 3).

Two frozen (or fine-tuned) unimodal embeddings ``e_s`` (speech) and ``e_e`` (EEG) are
projected into a common space of size k (``z_s = f_s(e_s)``, ``z_e = f_e(e_e)``), correlated
with deep CCA, reconstructed from their own and from the other modality's code (cross-modal
autoencoders, DCC-CAE), and classified from the common space (the "extension")::

    L2 = -corr(z_s, z_e) + alpha * L_self + beta * L_cross + gamma * L_cls

At inference speech alone gives ``[z_s, g_e(z_s)]`` (:meth:`EDCCCAE.speech_only`): the
hallucinated EEG embedding is what lets a speech-only classifier profit from EEG training.

Speech and EEG are non-parallel: :func:`pair_by_label` pairs every speech sample with a
random same-label EEG sample, drawn afresh every epoch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emoray.errors import ConfigError
from emoray.models.losses import dcca_correlation

__all__ = ["EDCCCAE", "pair_by_label"]


def _mlp(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, d_out))


def _mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error in at least float32 (bf16 outputs under autocast are upcast)."""
    dt = torch.promote_types(pred.dtype, torch.float32)
    return F.mse_loss(pred.to(dt), target.to(device=pred.device, dtype=dt))


def _positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"EDCCCAE: {name} must be an int >= {minimum}, got {value!r}")
    return value


class EDCCCAE(nn.Module):
    """Extended deep canonically correlated cross-modal autoencoder (E-DCC-CAE).

    Parameters
    ----------
    dim_s, dim_e : int
        Widths of the speech and EEG embeddings (the JEC-SSL encoders' pooled outputs).
    k : int
        Size of the common space (a CCA hyperparameter; the DCCA batch must exceed it).
    hidden : int
        Hidden width of the projections ``f_s, f_e`` and decoders ``g_s, g_e``.
    n_classes : int
        Classes of the head on the common space (2 for binary valence/arousal).
    dropout : float
        Dropout inside the projection and decoder MLPs.

    Notes
    -----
    One class head is shared by ``z_s`` and ``z_e``: the common space is meant to be one
    space, so the same linear boundary should serve both modalities.
    """

    def __init__(self, dim_s: int, dim_e: int, k: int, *, hidden: int = 128,
                 n_classes: int = 2, dropout: float = 0.1):
        super().__init__()
        self.dim_s = _positive_int("dim_s", dim_s)
        self.dim_e = _positive_int("dim_e", dim_e)
        self.k = _positive_int("k", k)
        self.hidden = _positive_int("hidden", hidden)
        self.n_classes = _positive_int("n_classes", n_classes, minimum=2)
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"EDCCCAE: dropout must be in [0, 1), got {dropout!r}")
        self.f_s = _mlp(dim_s, hidden, k, dropout)              # e_s -> z_s
        self.f_e = _mlp(dim_e, hidden, k, dropout)              # e_e -> z_e
        self.g_s = _mlp(k, hidden, dim_s, dropout)              # z -> e_s
        self.g_e = _mlp(k, hidden, dim_e, dropout)              # z -> e_e
        self.head = nn.Linear(k, n_classes)

    def _check(self, name: str, x: torch.Tensor, dim: int) -> None:
        if x.ndim != 2 or x.shape[1] != dim:
            raise ConfigError(f"EDCCCAE: {name} must be (B, {dim}), got {tuple(x.shape)}")

    def forward(self, e_s: torch.Tensor, e_e: torch.Tensor) -> dict[str, torch.Tensor]:
        """Project, reconstruct and classify a batch of (speech, EEG) embedding pairs.

        Parameters
        ----------
        e_s : torch.Tensor
            ``(B, dim_s)`` speech embeddings.
        e_e : torch.Tensor
            ``(B, dim_e)`` EEG embeddings, row i paired with ``e_s[i]``.

        Returns
        -------
        dict
            ``z_s, z_e`` (B, k); ``rec_s_self = g_s(z_s)``, ``rec_s_cross = g_s(z_e)``
            (B, dim_s); ``rec_e_self = g_e(z_e)``, ``rec_e_cross = g_e(z_s)`` (B, dim_e);
            ``logits_s, logits_e`` (B, n_classes).
        """
        self._check("e_s", e_s, self.dim_s)
        self._check("e_e", e_e, self.dim_e)
        if e_s.shape[0] != e_e.shape[0]:
            raise ConfigError(f"EDCCCAE: e_s and e_e must hold the same number of pairs, got "
                              f"{e_s.shape[0]} and {e_e.shape[0]}")
        z_s = self.f_s(e_s)                                     # (B, k)
        z_e = self.f_e(e_e)                                     # (B, k)
        return {
            "z_s": z_s,
            "z_e": z_e,
            "rec_s_self": self.g_s(z_s),                        # (B, dim_s)
            "rec_e_self": self.g_e(z_e),                        # (B, dim_e)
            "rec_e_cross": self.g_e(z_s),                       # (B, dim_e)
            "rec_s_cross": self.g_s(z_e),                       # (B, dim_s)
            "logits_s": self.head(z_s),                         # (B, n_classes)
            "logits_e": self.head(z_e),                         # (B, n_classes)
        }

    def loss(self, out: dict[str, torch.Tensor], e_s: torch.Tensor, e_e: torch.Tensor,
             y: torch.Tensor | None, *, alpha: float, beta: float, gamma: float,
             r: float = 1e-3, top_o: int | None = None
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """The E-DCC-CAE objective ``L2 = -corr + alpha L_self + beta L_cross + gamma L_cls``.

        Parameters
        ----------
        out : dict
            The output of :meth:`forward` on ``(e_s, e_e)``.
        e_s, e_e : torch.Tensor
            The embeddings given to :meth:`forward` (reconstruction targets).
        y : torch.Tensor or None
            ``(B,)`` labels of the pairs; may be None only when ``gamma == 0``.
        alpha, beta, gamma : float
            Weights (``>= 0``) of self reconstruction, cross reconstruction and the class term.
        r : float
            DCCA ridge for both views.
        top_o : int or None
            Sum only the ``top_o`` largest canonical correlations.

        Returns
        -------
        total : torch.Tensor
            Scalar loss (float32, float64 for float64 inputs).
        parts : dict[str, float]
            ``corr`` (the correlation, not negated), ``self``, ``cross``, ``cls``, ``total``.

        Notes
        -----
        Reconstruction errors are mean squared errors over elements (so their scale does
        not grow with the embedding width); the class term averages the cross-entropy of
        the speech and EEG heads. They scale with the embeddings' variance while the
        correlation is at most k: standardise the embeddings (or lower alpha, beta) so the
        reconstructions do not swamp the correlation; with a small k a heavy self term
        pulls z towards the high-variance, modality-private directions.
        """
        for name, w in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
            if w < 0:
                raise ConfigError(f"EDCCCAE.loss: {name} must be >= 0, got {w}")
        corr = dcca_correlation(out["z_s"], out["z_e"], r1=r, r2=r, top_o=top_o)

        l_self = _mse(out["rec_s_self"], e_s) + _mse(out["rec_e_self"], e_e)
        l_cross = _mse(out["rec_e_cross"], e_e) + _mse(out["rec_s_cross"], e_s)
        if y is None:
            if gamma != 0:
                raise ConfigError("EDCCCAE.loss: labels y are required when gamma > 0")
            l_cls = torch.zeros((), device=corr.device, dtype=corr.dtype)
        else:
            y = y.to(out["logits_s"].device).long()
            dt = corr.dtype
            l_cls = 0.5 * (F.cross_entropy(out["logits_s"].to(dt), y)
                           + F.cross_entropy(out["logits_e"].to(dt), y))
        total = -corr + alpha * l_self + beta * l_cross + gamma * l_cls
        parts = {"corr": float(corr.detach()), "self": float(l_self.detach()),
                 "cross": float(l_cross.detach()), "cls": float(l_cls.detach()),
                 "total": float(total.detach())}
        return total, parts

    @property
    def speech_only_dim(self) -> int:
        """Width of :meth:`speech_only`'s output: ``k + dim_e``."""
        return self.k + self.dim_e

    @property
    def combined_dim(self) -> int:
        """Width of :meth:`combined`'s output: ``2 k``."""
        return 2 * self.k

    def speech_only(self, e_s: torch.Tensor) -> torch.Tensor:
        """Inference representation from speech alone: ``concat(z_s, g_e(z_s))``.

        ``z_s`` is the speech code in the common space (trained to correlate with EEG) and
        ``g_e(z_s)`` the hallucinated EEG embedding reconstructed from it (METHODS.md step 3).
        The step-3 classifier must be trained on this same representation. Call under
        ``model.eval()`` (dropout off) and ``torch.no_grad()`` for features.

        Returns
        -------
        torch.Tensor
            ``(B, k + dim_e)``.
        """
        self._check("e_s", e_s, self.dim_s)
        z_s = self.f_s(e_s)                                     # (B, k)
        return torch.cat([z_s, self.g_e(z_s)], dim=-1)          # (B, k + dim_e)

    def combined(self, e_s: torch.Tensor, e_e: torch.Tensor) -> torch.Tensor:
        """Representation with both modalities present: ``concat(z_s, z_e)``, ``(B, 2k)``.

        With real EEG there is nothing to hallucinate; the two common-space codes carry
        the correlated part of each modality.
        """
        self._check("e_s", e_s, self.dim_s)
        self._check("e_e", e_e, self.dim_e)
        return torch.cat([self.f_s(e_s), self.f_e(e_e)], dim=-1)   # (B, 2k)


def pair_by_label(labels_s: np.ndarray, labels_e: np.ndarray,
                  rng: np.random.Generator) -> np.ndarray:
    """Pair each speech sample with a random EEG sample of the same label (non-parallel data).

    Parameters
    ----------
    labels_s : np.ndarray
        ``(N_s,)`` labels of the speech samples.
    labels_e : np.ndarray
        ``(N_e,)`` labels of the EEG samples.
    rng : np.random.Generator
        Source of the draw; call once per epoch for fresh pairs.

    Returns
    -------
    np.ndarray
        ``(N_s,)`` int64 indices into ``labels_e``; ``labels_e[idx[i]] == labels_s[i]``.
        Drawn uniformly with replacement within each label.

    Raises
    ------
    ConfigError
        When a speech label has no EEG sample, or the inputs are not 1-D.
    """
    labels_s = np.asarray(labels_s)
    labels_e = np.asarray(labels_e)
    if labels_s.ndim != 1 or labels_e.ndim != 1:
        raise ConfigError(f"pair_by_label: labels_s and labels_e must be 1-D, got shapes "
                          f"{labels_s.shape} and {labels_e.shape}")
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(f"pair_by_label: rng must be a numpy Generator, got {type(rng)}")
    idx = np.empty(len(labels_s), dtype=np.int64)
    for label in np.unique(labels_s):
        where_s = np.flatnonzero(labels_s == label)
        where_e = np.flatnonzero(labels_e == label)
        if len(where_e) == 0:
            raise ConfigError(f"pair_by_label: speech label {label.tolist()!r} has no EEG "
                              f"sample with that label (EEG labels: "
                              f"{sorted(np.unique(labels_e).tolist())})")
        idx[where_s] = where_e[rng.integers(0, len(where_e), size=len(where_s))]
    return idx
