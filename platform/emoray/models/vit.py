"""ViT over video frames, with frame tokens pooled over time.

Every frame of a clip ``(B, N, 3, S, S)`` goes through the same (shared-weight) Vision
Transformer: ``patch x patch`` patches embedded by a convolution with kernel = stride =
patch, a CLS token, learned 2-D positions, ``depth`` transformer blocks. The per-frame CLS
outputs are the frame tokens ``(B, N, D)``; learned temporal positions are added, a small
temporal transformer (``temporal_depth`` blocks, may be 0) runs over them, and attention
pooling over time gives the pooled clip embedding ``(B, D)``.

Frames must already be float and normalised with the contract's mean/std (as the
preprocessing contract does at load time); a ``uint8`` batch raises :class:`ValueError`.

Examples
--------
>>> from emoray.models import create_encoder
>>> enc = create_encoder("vit", "tiny", n_frames=4, size=64)
>>> out = enc(torch.randn(2, 4, 3, 64, 64))
>>> out.tokens.shape, out.pooled.shape
(torch.Size([2, 4, 32]), torch.Size([2, 32]))
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from emoray.errors import ConfigError
from emoray.models.base import BaseEncoder, EncoderOutput
from emoray.models.registry import register_encoder
from emoray.models.layers import (AttentionPool, ClsToken, PositionalEmbedding,
                                  TransformerStack, check_input, check_positive,
                                  check_transformer, init_weights)


@register_encoder
class VideoViT(BaseEncoder):
    """Shared per-frame ViT (CLS per frame) + temporal transformer + attention pooling.

    Parameters
    ----------
    n_frames : int
        Frames per clip N (contract). Other counts are accepted at run time; the temporal
        positions are interpolated.
    size : int
        Frame height and width S in pixels (contract); must be a multiple of ``patch``.
    dim : int
        Token width D (spatial and temporal).
    depth : int
        Spatial transformer blocks (per frame).
    heads : int
        Attention heads (must divide ``dim``).
    patch : int
        Square patch size in pixels.
    temporal_depth : int
        Transformer blocks over the frame tokens (0: attention pooling only).
    mlp_ratio : float
        MLP width of each block as a multiple of ``dim``.
    dropout : float
        Dropout in the transformer blocks.
    """

    name: ClassVar[str] = "vit"
    modality: ClassVar[str] = "video"
    input_column: ClassVar[str] = "video"
    contract_fields: ClassVar[tuple[str, ...]] = ("n_frames", "size")
    #: a small contract the registry test builds every preset with
    example: ClassVar[dict[str, Any]] = {"n_frames": 3, "size": 64}
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(dim=32, depth=2, heads=2, patch=32, temporal_depth=1, mlp_ratio=2.0,
                     dropout=0.1),
        "small": dict(dim=192, depth=4, heads=4, patch=16, temporal_depth=1, mlp_ratio=4.0,
                      dropout=0.1),
        "base": dict(dim=384, depth=8, heads=6, patch=16, temporal_depth=2, mlp_ratio=4.0,
                     dropout=0.1),
    }

    def __init__(self, n_frames: int, size: int, dim: int, depth: int, heads: int,
                 patch: int, temporal_depth: int = 1, mlp_ratio: float = 4.0,
                 dropout: float = 0.1):
        super().__init__()
        check_positive(self.name, n_frames=n_frames, size=size, patch=patch)
        check_transformer(self.name, dim, heads, depth, mlp_ratio, dropout)
        if isinstance(temporal_depth, bool) or not isinstance(temporal_depth, int) \
                or temporal_depth < 0:
            raise ConfigError(f"encoder {self.name!r}: temporal_depth must be an integer "
                              f">= 0, got {temporal_depth!r}")
        if size % patch:
            raise ConfigError(f"encoder {self.name!r}: size ({size}) must be a multiple of "
                              f"patch ({patch}); change the contract's video size or "
                              f"override patch")
        self.n_frames, self.size, self.patch = n_frames, size, patch
        self.dim = dim
        side = size // patch
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.cls = ClsToken(dim)
        self.pos = PositionalEmbedding((side, side), dim)
        self.drop = nn.Dropout(dropout)
        self.spatial = TransformerStack(dim, depth, heads, mlp_ratio, dropout)
        self.time_pos = PositionalEmbedding(n_frames, dim)
        self.temporal = TransformerStack(dim, temporal_depth, heads, mlp_ratio, dropout)
        self.pool = AttentionPool(dim, heads)
        self.apply(init_weights)

    @classmethod
    def input_shape(cls, **contract: Any) -> tuple[int, ...]:
        """One sample's input shape under ``contract``: (B, N, 3, H, W) frames without B."""
        return (contract["n_frames"], 3, contract["size"], contract["size"])

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        """Encode normalised frames ``(B, N, 3, size, size)``; N may differ from ``n_frames``."""
        if x.dtype == torch.uint8:
            raise ValueError(f"encoder {self.name!r} got uint8 frames: normalise frames with "
                             f"the contract first (float, the contract's mean/std)")
        check_input(self.name, x, {"n_frames": None, "channels": 3, "size": self.size,
                                   "size (width)": self.size})
        b, n = x.shape[:2]
        h = self.patch_embed(x.flatten(0, 1))                # (B*N, D, S/p, S/p)
        h = self.pos(h.flatten(2).transpose(1, 2))           # (B*N, P, D)
        h = self.spatial(self.drop(self.cls(h)))             # (B*N, 1 + P, D)
        frames = h[:, 0].reshape(b, n, self.dim)             # (B, N, D)
        tokens = self.temporal(self.time_pos(frames))        # (B, N, D)
        return EncoderOutput(tokens=tokens, pooled=self.pool(tokens))
