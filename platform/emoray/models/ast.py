"""AST: Audio Spectrogram Transformer over log-mel patches.

The log-mel spectrogram ``(B, n_mels, frames)`` is treated as a one-channel image and cut
into non-overlapping ``patch_freq x patch_time`` patches by a convolution with
kernel = stride = patch (zero-padded at the top/right edge so that no frame is dropped;
the contract's utterance normalisation makes zero the mean). A CLS token and learned 2-D
positions (frequency x time) are added to the patches (the CLS token,
itself learned, needs none) and transformer blocks run over all patches.

The contract's ``n_frames`` sets the positional grid; an input with another frame count
(e.g. 4 s where the contract said 5 s) gets the time axis of the grid interpolated, so
both work with the same weights.

Examples
--------
>>> from emoray.models import create_encoder
>>> enc = create_encoder("ast", "tiny", n_mels=128, n_frames=501)
>>> out = enc(torch.randn(2, 128, 501))
>>> out.tokens.shape, out.pooled.shape      # 4 x 16 patches of 32 x 32
(torch.Size([2, 64, 48]), torch.Size([2, 48]))
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from emoray.models.base import BaseEncoder, EncoderOutput
from emoray.models.registry import register_encoder
from emoray.models.layers import (ClsToken, PositionalEmbedding, TransformerStack,
                                  check_input, check_positive, check_transformer,
                                  init_weights)


@register_encoder
class AudioSpectrogramTransformer(BaseEncoder):
    """Patch embedding + CLS token + transformer over a log-mel spectrogram.

    Parameters
    ----------
    n_mels : int
        Mel bins of the input (contract).
    n_frames : int
        Frames per segment (contract), e.g. 501 for 5 s at a 10 ms hop.
    dim : int
        Token width D.
    depth : int
        Transformer blocks.
    heads : int
        Attention heads (must divide ``dim``).
    patch_freq, patch_time : int
        Patch size in mel bins and in frames.
    mlp_ratio : float
        MLP width of each block as a multiple of ``dim``.
    dropout : float
        Dropout in the transformer blocks.

    Notes
    -----
    ``tokens`` are the patch tokens ``(B, F' * T', D)`` in frequency-major order (all
    time patches of the lowest band first); ``pooled`` is the CLS token's output.
    """

    name: ClassVar[str] = "ast"
    modality: ClassVar[str] = "speech"
    input_column: ClassVar[str] = "logmel"
    contract_fields: ClassVar[tuple[str, ...]] = ("n_mels", "n_frames")
    #: a small contract the registry test builds every preset with
    example: ClassVar[dict[str, Any]] = {"n_mels": 64, "n_frames": 96}
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(dim=48, depth=2, heads=2, patch_freq=32, patch_time=32, mlp_ratio=2.0,
                     dropout=0.1),
        "small": dict(dim=192, depth=4, heads=4, patch_freq=16, patch_time=16,
                      mlp_ratio=4.0, dropout=0.1),
        "base": dict(dim=384, depth=8, heads=6, patch_freq=16, patch_time=16,
                     mlp_ratio=4.0, dropout=0.1),
    }

    def __init__(self, n_mels: int, n_frames: int, dim: int, depth: int, heads: int,
                 patch_freq: int, patch_time: int, mlp_ratio: float = 4.0,
                 dropout: float = 0.1):
        super().__init__()
        check_positive(self.name, n_mels=n_mels, n_frames=n_frames, patch_freq=patch_freq,
                       patch_time=patch_time)
        check_transformer(self.name, dim, heads, depth, mlp_ratio, dropout)
        self.n_mels, self.n_frames = n_mels, n_frames
        self.patch = (patch_freq, patch_time)
        self.dim = dim
        self.patch_embed = nn.Conv2d(1, dim, kernel_size=self.patch, stride=self.patch)
        self.cls = ClsToken(dim)
        self.pos = PositionalEmbedding(self.grid(n_frames), dim)
        self.drop = nn.Dropout(dropout)
        self.transformer = TransformerStack(dim, depth, heads, mlp_ratio, dropout)
        self.apply(init_weights)

    def grid(self, n_frames: int) -> tuple[int, int]:
        """Patch grid ``(F', T')`` of a spectrogram with ``n_frames`` frames (ceil division)."""
        pf, pt = self.patch
        return -(-self.n_mels // pf), -(-n_frames // pt)

    @classmethod
    def input_shape(cls, **contract: Any) -> tuple[int, ...]:
        """One sample's input shape under ``contract``: (B, n_mels, n_frames) log-mel without B."""
        return (contract["n_mels"], contract["n_frames"])

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        """Encode a log-mel batch ``(B, n_mels, frames)``; frames may differ from ``n_frames``."""
        check_input(self.name, x, {"n_mels": self.n_mels, "n_frames": None})
        grid = self.grid(x.shape[-1])
        pad_f = grid[0] * self.patch[0] - x.shape[1]
        pad_t = grid[1] * self.patch[1] - x.shape[2]
        x = F.pad(x, (0, pad_t, 0, pad_f)).unsqueeze(1)      # (B, 1, F'*pf, T'*pt)
        h = self.patch_embed(x)                              # (B, D, F', T')
        h = h.flatten(2).transpose(1, 2)                     # (B, F'*T', D)
        h = self.pos(h, grid)                                # (B, N, D)
        h = self.cls(h)                                      # (B, 1 + N, D)
        h = self.transformer(self.drop(h))                   # (B, 1 + N, D)
        return EncoderOutput(tokens=h[:, 1:], pooled=h[:, 0])
