"""Attention fusion of per-modality token sequences (METHODS.md, method B).

Every modality's encoder tokens ``(B, T_m, D_m)`` are projected to a shared width ``dim``,
tagged with a learned modality embedding (and, optionally, a learned position embedding),
concatenated behind one learnable fusion token and passed through shared pre-norm
transformer layers whose self-attention carries a key-padding mask. The prediction is read
from the fusion token. A modality may be missing from the input entirely, or be absent for
some samples only (``present`` False, or every token masked): its tokens are then masked
as keys, so **any non-empty subset of modalities** is a valid input. Random modality dropout
during training makes a missing modality a normal case. With every prediction the model
returns the share of the fusion token's attention that each modality received.

The module knows nothing about the encoders: it takes their outputs.

Examples
--------
>>> fusion = AttentionFusion({"eeg": 16, "video": 24}, n_classes=5, dim=32)
>>> out = fusion({"eeg": torch.randn(2, 7, 16), "video": torch.randn(2, 3, 24)})
>>> out.logits.shape, out.attention_mass.shape, out.modalities
(torch.Size([2, 5]), torch.Size([2, 2]), ['eeg', 'video'])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from emoray.errors import ConfigError


@dataclass
class FusionOutput:
    """What :class:`AttentionFusion` returns.

    Attributes
    ----------
    logits : Tensor
        ``(B, n_classes)`` fused logits, read from the fusion token.
    aux_logits : dict[str, Tensor]
        ``(B, n_classes)`` per modality given in the input (empty without aux heads), from
        each modality's mean-pooled projected tokens. Rows of samples where the modality is
        absent are meaningless; :meth:`AttentionFusion.loss` skips them via ``present``.
    attention_mass : Tensor
        ``(B, M)`` float32: the share of the fusion token's attention (mean over heads and
        layers) that went to each modality's tokens, renormalised over modalities. Columns
        follow ``modalities``; a modality that did not take part for a sample is exactly 0
        and every row sums to 1.
    modalities : list[str]
        The column order: every modality the model was built for, in constructor order.
    present : Tensor
        ``(B, M)`` bool: the modality was available for the sample (given, ``present``
        True and at least one unmasked token).
    kept : Tensor
        ``(B, M)`` bool: the modality took part in the fusion (``present`` minus what
        modality dropout removed; equals ``present`` in eval mode).
    head_logits : Tensor | None
        ``(B, n_classes)``: the attention head's logits alone (``logits`` adds the aux
        heads' to them under ``fuse_aux``).
    """

    logits: torch.Tensor
    aux_logits: dict[str, torch.Tensor]
    attention_mass: torch.Tensor
    modalities: list[str]
    present: torch.Tensor
    kept: torch.Tensor
    head_logits: torch.Tensor | None = None


class _Block(nn.Module):
    """One pre-norm transformer layer; also returns the fusion token's attention row."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(4 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def attend(self, h: torch.Tensor, pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked multi-head self-attention of ``h`` ``(B, L, dim)``; ``pad`` ``(B, L)`` is
        True for keys to ignore. Returns the output ``(B, L, dim)`` and the fusion token's
        (position 0) attention weights ``(B, heads, L)`` in float32, before dropout."""
        b, n, d = h.shape
        q, k, v = self.qkv(h).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        # q, k, v: (B, H, L, d_h); SDPA's boolean mask is True where attention is allowed
        allowed = (~pad)[:, None, None, :]                       # (B, 1, 1, L)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(b, n, d)               # (B, L, dim)
        # the fusion row's weights, explicitly (one query: cheap), in float32
        scores = (q[:, :, :1].float() @ k.float().transpose(-1, -2)).squeeze(2)  # (B, H, L)
        scores = scores / math.sqrt(d // self.heads)
        weights = scores.masked_fill(pad[:, None, :], float("-inf")).softmax(-1)
        return self.proj(out), weights

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, weights = self.attend(self.norm1(x), pad)
        x = x + self.drop(a)
        x = x + self.drop(self.mlp(self.norm2(x)))
        return x, weights


class AttentionFusion(nn.Module):
    """Fuse any non-empty subset of modalities with shared masked self-attention.

    Parameters
    ----------
    modality_dims : dict[str, int]
        Token width ``D_m`` of each modality, e.g. ``{"eeg": 64, "speech": 96,
        "video": 96}``; the key order is the column order of every output.
    n_classes : int
        Number of classes (>= 2).
    dim : int
        Shared width ``d`` after projection; divisible by ``heads``.
    heads, layers : int
        Attention heads and transformer layers (>= 1).
    dropout : float
        Dropout in attention and the MLPs, in ``[0, 1)``.
    modality_dropout : float
        In training, the probability of dropping each present modality per sample; the last
        present modality of a sample is never dropped. In ``[0, 1)``. Dropout hides a
        modality from the fusion attention only; its aux head still sees it.
    aux_heads : bool
        Add a unimodal classifier (LayerNorm + Linear) per modality on its mean-pooled
        projected tokens.
    max_tokens : dict[str, int] | None
        For the modalities named, a learned position embedding of that many positions;
        longer inputs raise :class:`ConfigError`. Modalities not named get none.
    fuse_aux : bool
        The fused logits are the attention head's plus the aux heads' logits of the
        modalities that took part (a product of experts: each modality's own evidence
        counts even where the attention head overfits). Needs ``aux_heads``.
    expert_weights : bool
        Under ``fuse_aux``, weigh the attention head and each aux head by a stored weight
        (buffer ``expert_weight``, ``(1 + M,)``, ones until :meth:`fit_expert_weights` sets
        them on held-out rows): a modality whose own head is unreliable counts less.
    """

    def __init__(self, modality_dims: dict[str, int], *, n_classes: int, dim: int = 128,
                 heads: int = 4, layers: int = 2, dropout: float = 0.1,
                 modality_dropout: float = 0.0, aux_heads: bool = True,
                 max_tokens: dict[str, int] | None = None, fuse_aux: bool = False,
                 expert_weights: bool = False):
        super().__init__()
        _check_config(modality_dims, n_classes, dim, heads, layers, dropout, modality_dropout,
                      max_tokens)
        if fuse_aux and not aux_heads:
            raise ConfigError("fuse_aux needs the auxiliary heads (aux_heads=True)")
        self._config = dict(modality_dims=dict(modality_dims), n_classes=n_classes, dim=dim,
                            heads=heads, layers=layers, dropout=dropout,
                            modality_dropout=modality_dropout, aux_heads=aux_heads,
                            max_tokens=dict(max_tokens) if max_tokens else None)
        if expert_weights and not fuse_aux:
            raise ConfigError("expert_weights weigh the experts of fuse_aux: set fuse_aux")
        if fuse_aux:                       # absent from older bundles' configs
            self._config["fuse_aux"] = True
        if expert_weights:
            self._config["expert_weights"] = True
        self.fuse_aux = fuse_aux
        self.modalities = list(modality_dims)
        self.modality_dims = dict(modality_dims)
        self.n_classes = n_classes
        self.dim = dim
        self.modality_dropout = modality_dropout
        self.max_tokens = dict(max_tokens or {})
        self.proj = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in modality_dims.items()})
        self.modality_embed = nn.Parameter(torch.zeros(len(self.modalities), dim))  # (M, dim)
        self.pos_embed = nn.ParameterDict(
            {m: nn.Parameter(torch.zeros(n, dim)) for m, n in self.max_tokens.items()})
        self.fusion_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(_Block(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)
        self.aux = nn.ModuleDict(
            {m: nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, n_classes))
             for m in self.modalities}) if aux_heads else None
        for p in [self.modality_embed, self.fusion_token, *self.pos_embed.values()]:
            nn.init.trunc_normal_(p, std=0.02)
        if expert_weights:
            self.register_buffer("expert_weight", torch.ones(1 + len(self.modalities)))
        else:
            self.expert_weight = None

    def config(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this module (saved with its weights)."""
        return dict(self._config)

    def forward(self, tokens: dict[str, torch.Tensor],
                masks: dict[str, torch.Tensor] | None = None,
                present: dict[str, torch.Tensor] | None = None, *,
                generator: torch.Generator | None = None) -> FusionOutput:
        """Fuse the given modalities.

        Parameters
        ----------
        tokens : dict[str, Tensor]
            ``(B, T_m, D_m)`` per modality; any non-empty subset of ``modality_dims``, in
            any key order. Values at masked or absent positions are ignored (NaN allowed).
        masks : dict[str, Tensor] | None
            ``(B, T_m)`` bool per modality, **True = padding** (as a key-padding mask).
        present : dict[str, Tensor] | None
            ``(B,)`` bool per modality; False masks all of that sample's tokens. Entries of
            ``masks``/``present`` for modalities not in ``tokens`` are ignored.
        generator : torch.Generator | None
            Makes modality dropout reproducible (drawn on the generator's device).

        Raises
        ------
        ConfigError
            An unknown modality, a wrong shape, or more tokens than ``max_tokens``.
        ValueError
            No modality given, or a sample with no modality available (names the index).
        """
        names, pads = self._validate(tokens, masks or {}, present or {})
        x0 = tokens[names[0]]
        b, device = x0.shape[0], x0.device
        cols = [self.modalities.index(m) for m in names]
        avail = torch.zeros(b, len(self.modalities), dtype=torch.bool, device=device)
        avail[:, cols] = torch.stack([~pads[m].all(1) for m in names], 1)   # (B, M)
        empty = (~avail.any(1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"sample {empty[0]} has no modality (samples without any: "
                             f"{empty[:10]}); every sample needs at least one of {names}")
        kept = self._drop_modalities(avail, generator) if (
            self.training and self.modality_dropout > 0) else avail

        parts, key_pad, aux_logits = [], [], {}
        for m, c in zip(names, cols):
            pad = pads[m] | ~kept[:, c, None]                              # (B, T_m)
            x = tokens[m].masked_fill(pads[m][..., None], 0.0)             # (B, T_m, D_m)
            h = self.proj[m](x)                                            # (B, T_m, dim)
            if self.aux is not None:
                valid = (~pads[m]).to(h.dtype)[..., None]                  # (B, T_m, 1)
                pooled = (h * valid).sum(1) / valid.sum(1).clamp_min(1.0)  # (B, dim)
                aux_logits[m] = self.aux[m](pooled)                        # (B, n_classes)
            h = h + self.modality_embed[c]
            if m in self.pos_embed:
                h = h + self.pos_embed[m][: h.shape[1]]
            parts.append(h)
            key_pad.append(pad)
        fusion = self.fusion_token.expand(b, -1, -1).to(parts[0].dtype)
        seq = torch.cat([fusion, *parts], 1)                               # (B, 1+sum T, dim)
        pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=device), *key_pad], 1)

        row = torch.zeros(b, seq.shape[1], device=device)                  # (B, L)
        for block in self.blocks:
            seq, weights = block(seq, pad)
            row = row + weights.mean(1)
        row = row / len(self.blocks)
        head = self.head(self.norm(seq[:, 0]))                             # (B, n_classes)
        logits = head
        if self.fuse_aux:
            w = self.expert_weight
            logits = head if w is None else head * w[0].to(head.dtype)
            for m, c in zip(names, cols):
                gate = kept[:, c, None].to(logits.dtype)
                if w is not None:
                    gate = gate * w[1 + c].to(logits.dtype)
                logits = logits + aux_logits[m] * gate
        return FusionOutput(logits=logits, aux_logits=aux_logits,
                            attention_mass=self._mass(row, names, cols, tokens, kept),
                            modalities=list(self.modalities), present=avail, kept=kept,
                            head_logits=head)

    @torch.no_grad()
    def fit_expert_weights(self, head: torch.Tensor, aux: dict[str, torch.Tensor],
                           kept: torch.Tensor, y: torch.Tensor, l2: float = 0.01,
                           steps: int = 100) -> torch.Tensor:
        """Set ``expert_weight`` to the non-negative weights of the attention head and the
        aux heads that minimise the cross-entropy of their weighted sum on held-out rows
        (``head`` ``(N, K)``, ``aux[m]`` ``(N, K)``, ``kept`` ``(N, M)``, ``y`` ``(N,)``),
        with an L2 pull of ``l2`` towards equal weights (L-BFGS; deterministic, so every
        worker fitting the same rows gets the same weights). Returns the weights."""
        if self.expert_weight is None:
            raise ConfigError("fit_expert_weights: built without expert_weights=True")
        experts = [head.float()] + [
            aux[m].float() * kept[:, c, None].float() if m in aux
            else torch.zeros_like(head, dtype=torch.float32)
            for c, m in enumerate(self.modalities)]
        stacked = torch.stack(experts)                                     # (1+M, N, K)
        y = y.long()
        offset = math.log(math.e - 1.0)                                    # softplus(offset) = 1
        with torch.enable_grad():
            raw = torch.zeros(len(experts), requires_grad=True)
            opt = torch.optim.LBFGS([raw], max_iter=steps, line_search_fn="strong_wolfe")

            def closure():
                opt.zero_grad()
                w = F.softplus(raw + offset)
                loss = (F.cross_entropy(torch.einsum("e,enk->nk", w, stacked), y)
                        + l2 * ((w - 1.0) ** 2).sum())
                loss.backward()
                return loss

            opt.step(closure)
        w = F.softplus(raw.detach() + offset)
        self.expert_weight.copy_(w.to(self.expert_weight.device))
        return w

    def loss(self, out: FusionOutput, y: torch.Tensor, *, aux_weight: float = 0.3,
             mix: tuple[torch.Tensor, float] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """CE on the fused logits + ``aux_weight`` x the mean CE of the aux heads.

        Each aux head's CE averages only over samples where its modality was present;
        heads with no such sample in the batch are left out of the mean. Computed in
        float32. ``mix = (y2, lam)`` is mixup's second label and weight: every CE becomes
        ``lam * CE(y) + (1 - lam) * CE(y2)``. Returns the loss and
        ``{"loss", "ce_fused", "ce_aux", "ce_aux_<m>"}``.
        """
        if y.shape != out.logits.shape[:1]:
            raise ConfigError(f"labels y: expected shape {tuple(out.logits.shape[:1])}, "
                              f"got {tuple(y.shape)}")
        y = y.long()
        y2, lam = (mix[0].long(), float(mix[1])) if mix is not None else (y, 1.0)

        def cross_entropy(logits: torch.Tensor, sel: torch.Tensor | None = None):
            a, b = (y, y2) if sel is None else (y[sel], y2[sel])
            ce = F.cross_entropy(logits, a)
            return ce if lam == 1.0 else lam * ce + (1 - lam) * F.cross_entropy(logits, b)

        ce = cross_entropy(out.logits.float())
        parts: dict[str, float] = {"ce_fused": float(ce.detach())}
        aux = []
        for m, logits in out.aux_logits.items():
            sel = out.present[:, out.modalities.index(m)]                  # (B,)
            if sel.any():
                aux.append(cross_entropy(logits.float()[sel], sel))
                parts[f"ce_aux_{m}"] = float(aux[-1].detach())
        total = ce
        if aux and aux_weight:
            aux_mean = torch.stack(aux).mean()
            total = ce + aux_weight * aux_mean
            parts["ce_aux"] = float(aux_mean.detach())
        parts["loss"] = float(total.detach())
        return total, parts

    def _validate(self, tokens, masks, present):
        """Check names and shapes; return the given names (constructor order) and their
        padding masks ``(B, T_m)`` merged with ``present``."""
        if not isinstance(tokens, dict) or not tokens:
            raise ValueError(f"no modality given; expected a dict with at least one of "
                             f"{self.modalities}")
        for what, d in (("tokens", tokens), ("masks", masks), ("present", present)):
            unknown = sorted(set(d) - set(self.modalities))
            if unknown:
                raise ConfigError(f"{what}: unknown modality {unknown[0]!r}; this fusion "
                                  f"was built for {self.modalities}")
        names = [m for m in self.modalities if m in tokens]
        b = tokens[names[0]].shape[0] if tokens[names[0]].dim() == 3 else -1
        pads = {}
        for m in names:
            t = tokens[m]
            if t.dim() != 3 or t.shape[0] != b or t.shape[2] != self.modality_dims[m] \
                    or t.shape[1] < 1:
                raise ConfigError(f"tokens[{m!r}]: expected shape (B={b}, T>=1, "
                                  f"D={self.modality_dims[m]}), got {tuple(t.shape)}")
            if m in self.max_tokens and t.shape[1] > self.max_tokens[m]:
                raise ConfigError(f"tokens[{m!r}]: {t.shape[1]} tokens exceed max_tokens"
                                  f"[{m!r}]={self.max_tokens[m]}")
            pad = torch.zeros(t.shape[:2], dtype=torch.bool, device=t.device)
            if m in masks:
                if tuple(masks[m].shape) != tuple(t.shape[:2]):
                    raise ConfigError(f"masks[{m!r}]: expected shape {tuple(t.shape[:2])}, "
                                      f"got {tuple(masks[m].shape)}")
                pad = masks[m].to(device=t.device, dtype=torch.bool)
            if m in present:
                if tuple(present[m].shape) != (b,):
                    raise ConfigError(f"present[{m!r}]: expected shape ({b},), "
                                      f"got {tuple(present[m].shape)}")
                pad = pad | ~present[m].to(device=t.device, dtype=torch.bool)[:, None]
            pads[m] = pad
        return names, pads

    def _drop_modalities(self, avail: torch.Tensor, generator: torch.Generator | None):
        """Drop each available modality with probability ``modality_dropout`` per sample;
        where that would drop all, keep one available modality chosen at random."""
        gen_device = generator.device if generator is not None else avail.device
        u = torch.rand(avail.shape, generator=generator, device=gen_device).to(avail.device)
        kept = avail & (u >= self.modality_dropout)                        # (B, M)
        # one random available modality per sample (u is uniform: argmax of fresh draws)
        r = torch.rand(avail.shape, generator=generator, device=gen_device).to(avail.device)
        rescue = F.one_hot(r.masked_fill(~avail, -1.0).argmax(1), avail.shape[1]).bool()
        return torch.where(kept.any(1, keepdim=True), kept, rescue)

    def _mass(self, row, names, cols, tokens, kept) -> torch.Tensor:
        """Sum the fusion token's mean attention row ``(B, L)`` per modality segment and
        renormalise over modalities -> ``(B, M)`` float32."""
        mass = torch.zeros(kept.shape, device=row.device)                  # (B, M)
        start = 1                                                          # 0: fusion token
        for m, c in zip(names, cols):
            n = tokens[m].shape[1]
            mass[:, c] = row[:, start:start + n].sum(1)
            start += n
        mass = mass * kept
        total = mass.sum(1, keepdim=True)
        # if every kept token's weight underflowed to 0, share equally among kept ones
        fallback = kept.float() / kept.sum(1, keepdim=True).clamp_min(1)
        return torch.where(total > 0, mass / total.clamp_min(1e-30), fallback)


def _check_config(modality_dims, n_classes, dim, heads, layers, dropout, modality_dropout,
                  max_tokens) -> None:
    def positive_int(name, v):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name}: expected a positive int, got {v!r}")

    if not isinstance(modality_dims, dict) or not modality_dims:
        raise ConfigError(f"modality_dims: expected a non-empty dict name -> token width, "
                          f"got {modality_dims!r}")
    for m, d in modality_dims.items():
        positive_int(f"modality_dims[{m!r}]", d)
    positive_int("dim", dim)
    positive_int("heads", heads)
    positive_int("layers", layers)
    positive_int("n_classes", n_classes)
    if n_classes < 2:
        raise ConfigError(f"n_classes: expected >= 2, got {n_classes}")
    if dim % heads:
        raise ConfigError(f"dim: expected a multiple of heads={heads}, got {dim}")
    for name, p in (("dropout", dropout), ("modality_dropout", modality_dropout)):
        if not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ConfigError(f"{name}: expected a probability in [0, 1), got {p!r}")
    for m, n in (max_tokens or {}).items():
        if m not in modality_dims:
            raise ConfigError(f"max_tokens: unknown modality {m!r}; expected one of "
                              f"{list(modality_dims)}")
        positive_int(f"max_tokens[{m!r}]", n)
