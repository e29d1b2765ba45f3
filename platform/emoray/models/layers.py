"""Transformer building blocks shared by the encoders (and usable by the fusion model).

Written once here and used by :mod:`~emoray.models.eegformer`, :mod:`~emoray.models.ast`
and :mod:`~emoray.models.vit`:

- :class:`TransformerBlock`: pre-norm block, ``x + Attn(LN(x))`` then ``x + MLP(LN(x))``,
  with :class:`torch.nn.MultiheadAttention` (``batch_first``) and an optional key-padding mask.
- :class:`TransformerStack`: ``depth`` blocks followed by a final LayerNorm.
- :class:`PositionalEmbedding`: a learnable embedding over a 1-D or 2-D grid of positions,
  interpolated when the input's grid differs from the one it was built for.
- :class:`ClsToken`: prepends a learnable token (CLS pooling reads position 0).
- :class:`AttentionPool`: a learned query attends over the tokens (attention pooling).

Also small helpers for constructor checks (raising :class:`~emoray.errors.ConfigError`)
and for input-shape checks (raising :class:`ValueError` naming the contract field).

Examples
--------
>>> block = TransformerBlock(dim=16, heads=2)
>>> block(torch.zeros(3, 7, 16)).shape
torch.Size([3, 7, 16])
>>> AttentionPool(16, heads=2)(torch.zeros(3, 7, 16)).shape
torch.Size([3, 16])
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from emoray.errors import ConfigError


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: self-attention then MLP, each with a residual.

    Parameters
    ----------
    dim : int
        Token width D.
    heads : int
        Attention heads; must divide ``dim``.
    mlp_ratio : float
        Hidden width of the MLP as a multiple of ``dim``.
    dropout : float
        Dropout on both residual branches and inside the MLP.
    attn_dropout : float
        Dropout on the attention weights (off by default: on CPU it costs more than the
        attention itself, and the residual dropout already regularises).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 attn_dropout: float = 0.0):
        super().__init__()
        hidden = max(1, int(round(dim * mlp_ratio)))
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=attn_dropout,
                                          batch_first=True)
        self.drop1 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim))
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                return_attention: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Apply the block.

        Parameters
        ----------
        x : Tensor
            Tokens ``(B, T, D)``.
        key_padding_mask : Tensor, optional
            ``(B, T)`` bool, ``True`` where a token is padding (ignored as a key).
        return_attention : bool
            Also return the head-averaged attention weights ``(B, T, T)``.
        """
        h = self.norm1(x)
        a, w = self.attn(h, h, h, key_padding_mask=key_padding_mask,
                         need_weights=return_attention)
        x = x + self.drop1(a)                           # (B, T, D)
        x = x + self.drop2(self.mlp(self.norm2(x)))     # (B, T, D)
        return (x, w) if return_attention else x


class TransformerStack(nn.Module):
    """``depth`` :class:`TransformerBlock` s followed by a final LayerNorm."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, attn_dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, heads, mlp_ratio, dropout, attn_dropout)
            for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, key_padding_mask)
        return self.norm(x)                             # (B, T, D)


class PositionalEmbedding(nn.Module):
    """Learnable positional embedding over a grid of positions, added to the tokens.

    Parameters
    ----------
    grid : int or tuple of int
        The number of positions (1-D) or the ``(rows, cols)`` grid (2-D, tokens in
        row-major order) that the embedding is built for.
    dim : int
        Token width D.

    Notes
    -----
    When :meth:`forward` gets another grid (e.g. a 4 s spectrogram where the contract said
    5 s), the table is resized by linear (1-D) or bilinear (2-D) interpolation.
    """

    def __init__(self, grid: int | tuple[int, ...], dim: int):
        super().__init__()
        self.grid = (grid,) if isinstance(grid, int) else tuple(int(g) for g in grid)
        if len(self.grid) not in (1, 2) or min(self.grid) < 1:
            raise ConfigError(f"positional grid must be 1-D or 2-D and positive, "
                              f"got {self.grid}")
        self.weight = nn.Parameter(torch.zeros(1, math.prod(self.grid), dim))  # (1, N, D)
        nn.init.trunc_normal_(self.weight, std=0.02)

    def table(self, grid: tuple[int, ...] | None = None) -> torch.Tensor:
        """The embedding ``(1, N, D)`` for ``grid`` (interpolated if it differs)."""
        grid = self.grid if grid is None else tuple(grid)
        if grid == self.grid:
            return self.weight
        if len(grid) != len(self.grid):
            raise ValueError(f"positional grid {grid} has another rank than {self.grid}")
        d = self.weight.shape[-1]
        w = self.weight.transpose(1, 2).reshape(1, d, *self.grid)   # (1, D, *grid)
        mode = "linear" if len(grid) == 1 else "bilinear"
        w = F.interpolate(w.float(), size=grid, mode=mode, align_corners=False)
        return w.reshape(1, d, -1).transpose(1, 2).to(self.weight.dtype)  # (1, N', D)

    def forward(self, x: torch.Tensor, grid: tuple[int, ...] | None = None) -> torch.Tensor:
        """Add positions to ``x`` ``(B, N, D)``; ``grid`` defaults to ``(N,)`` for 1-D."""
        if grid is None:
            grid = (x.shape[1],) if len(self.grid) == 1 else self.grid
        return x + self.table(grid)


class ClsToken(nn.Module):
    """A learnable token prepended to the sequence: ``(B, T, D) -> (B, 1 + T, D)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls = self.token.expand(x.shape[0], -1, -1).to(x.dtype)    # (B, 1, D)
        return torch.cat([cls, x], dim=1)                          # (B, 1 + T, D)


class AttentionPool(nn.Module):
    """Attention pooling: a learned query attends over the tokens, ``(B, T, D) -> (B, D)``.

    Parameters
    ----------
    dim : int
        Token width D.
    heads : int
        Attention heads of the pooling query; must divide ``dim``.
    """

    def __init__(self, dim: int, heads: int = 1):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        q = self.query.expand(x.shape[0], -1, -1).to(x.dtype)     # (B, 1, D)
        out, _ = self.attn(q, x, x, key_padding_mask=key_padding_mask, need_weights=False)
        return self.norm(out[:, 0])                                # (B, D)


def init_weights(module: nn.Module) -> None:
    """Transformer initialisation: truncated-normal (std 0.02) Linear weights, zero biases,
    unit LayerNorms. Use as ``model.apply(init_weights)``."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# -- argument checks ------------------------------------------------------------------------

def check_positive(encoder: str, **values: Any) -> None:
    """Raise :class:`ConfigError` unless every value is a positive int (not a bool)."""
    for key, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"encoder {encoder!r}: {key} must be a positive integer, "
                              f"got {v!r}")


def check_transformer(encoder: str, dim: int, heads: int, depth: int, mlp_ratio: float,
                      dropout: float, min_depth: int = 1) -> None:
    """Check the sizes of a transformer stack; raise :class:`ConfigError` naming the field."""
    check_positive(encoder, dim=dim, heads=heads)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < min_depth:
        raise ConfigError(f"encoder {encoder!r}: depth must be an integer >= {min_depth}, "
                          f"got {depth!r}")
    if dim % heads:
        raise ConfigError(f"encoder {encoder!r}: heads ({heads}) must divide dim ({dim})")
    if not isinstance(mlp_ratio, (int, float)) or isinstance(mlp_ratio, bool) \
            or mlp_ratio <= 0:
        raise ConfigError(f"encoder {encoder!r}: mlp_ratio must be a positive number, "
                          f"got {mlp_ratio!r}")
    check_dropout(encoder, dropout)


def check_dropout(encoder: str, dropout: float) -> None:
    """Raise :class:`ConfigError` unless ``0 <= dropout < 1``."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
            or not 0 <= dropout < 1:
        raise ConfigError(f"encoder {encoder!r}: dropout must be in [0, 1), got {dropout!r}")


def check_input(encoder: str, x: torch.Tensor, expected: dict[str, int | None]) -> None:
    """Check a batch against the input contract; raise :class:`ValueError` naming the field.

    Parameters
    ----------
    encoder : str
        Encoder name (for the message).
    x : Tensor
        The batch; its first dimension is the batch size B.
    expected : dict
        Contract field name -> expected size of each following dimension, in order;
        ``None`` accepts any size (e.g. a time axis that may be shorter or longer).
    """
    names = list(expected)
    layout = "(B, " + ", ".join(names) + ")"
    if x.ndim != 1 + len(names):
        raise ValueError(f"encoder {encoder!r} expects input {layout}, got shape "
                         f"{tuple(x.shape)}")
    for axis, (key, size) in enumerate(expected.items(), start=1):
        if size is not None and x.shape[axis] != size:
            raise ValueError(f"encoder {encoder!r}: input dimension {axis} is "
                             f"{x.shape[axis]} but the contract's {key} is {size} "
                             f"(input shape {tuple(x.shape)}, expected {layout})")
    if not torch.is_floating_point(x):
        raise ValueError(f"encoder {encoder!r} expects a floating-point input, got {x.dtype}")
