"""EEGformer: 1-D convolutions over the EEG channels, then transformer blocks over time.

The convolutional stem follows the depthwise-separable design of compact EEG networks:

1. a *temporal* depthwise convolution: ``multiplier`` learned filters of ``kernel`` samples
   per channel, applied to each channel on its own (``groups = n_chans``);
2. a *spatial* pointwise convolution mixing all channels' filter outputs into ``dim``
   features, then GroupNorm and GELU;
3. a learned *downsampling*: a depthwise convolution with kernel = stride = ``stride``
   that turns every ``stride`` samples into one time token (at 100 Hz, 5 s = 500 samples
   give 20 tokens with stride 25, 50 with stride 10).

Learned positions are added to the time tokens, a :class:`~emoray.models.layers.TransformerStack`
runs over them, and attention pooling gives the pooled embedding.

Examples
--------
>>> from emoray.models import create_encoder
>>> enc = create_encoder("eegformer", "tiny", n_chans=30, sfreq=100.0, n_times=500)
>>> out = enc(torch.randn(2, 30, 500))
>>> out.tokens.shape, out.pooled.shape
(torch.Size([2, 20, 48]), torch.Size([2, 48]))
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from emoray.errors import ConfigError
from emoray.models.base import BaseEncoder, EncoderOutput
from emoray.models.registry import register_encoder
from emoray.models.layers import (AttentionPool, PositionalEmbedding, TransformerStack,
                                  check_input, check_positive, check_transformer,
                                  init_weights)


@register_encoder
class EEGformer(BaseEncoder):
    """Convolutional stem over channels + transformer over time tokens, for ``(B, C, T)`` EEG.

    Parameters
    ----------
    n_chans : int
        Number of EEG channels C (contract).
    sfreq : float
        Sampling rate in Hz of the input (contract); with ``stride`` it sets the token rate
        (:attr:`tokens_per_second`).
    n_times : int
        Samples per segment T (contract), e.g. 500 for 5 s at 100 Hz. Other lengths are
        accepted at run time; the positional table is interpolated.
    dim : int
        Token width D.
    depth : int
        Transformer blocks.
    heads : int
        Attention heads (must divide ``dim``).
    kernel : int
        Length in samples of the per-channel temporal filters.
    stride : int
        Samples per time token (the downsampling factor).
    multiplier : int
        Temporal filters per channel.
    mlp_ratio : float
        MLP width of each block as a multiple of ``dim``.
    dropout : float
        Dropout in the stem and the transformer blocks.

    Notes
    -----
    The input is z-scored EEG ``(B, n_chans, n_times)`` as the preprocessing contract writes
    it; a batch with another channel count raises :class:`ValueError` naming ``n_chans``.
    The stem is normalised with GroupNorm (per sample), so batch size 1 and uneven DDP
    shards behave exactly like large batches.
    """

    name: ClassVar[str] = "eegformer"
    modality: ClassVar[str] = "eeg"
    input_column: ClassVar[str] = "eeg"
    contract_fields: ClassVar[tuple[str, ...]] = ("n_chans", "sfreq", "n_times")
    #: a small contract the registry test builds every preset with
    example: ClassVar[dict[str, Any]] = {"n_chans": 4, "sfreq": 100.0, "n_times": 200}
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(dim=48, depth=2, heads=2, kernel=25, stride=25, multiplier=2,
                     mlp_ratio=2.0, dropout=0.1),
        "small": dict(dim=160, depth=4, heads=4, kernel=25, stride=16, multiplier=4,
                      mlp_ratio=4.0, dropout=0.1),
        "base": dict(dim=384, depth=6, heads=6, kernel=51, stride=10, multiplier=8,
                     mlp_ratio=4.0, dropout=0.1),
    }

    def __init__(self, n_chans: int, sfreq: float, n_times: int, dim: int, depth: int,
                 heads: int, kernel: int, stride: int, multiplier: int = 2,
                 mlp_ratio: float = 4.0, dropout: float = 0.1):
        super().__init__()
        check_positive(self.name, n_chans=n_chans, n_times=n_times, kernel=kernel,
                       stride=stride, multiplier=multiplier)
        check_transformer(self.name, dim, heads, depth, mlp_ratio, dropout)
        if isinstance(sfreq, bool) or not isinstance(sfreq, (int, float)) or sfreq <= 0:
            raise ConfigError(f"encoder {self.name!r}: sfreq must be a positive number "
                              f"(Hz), got {sfreq!r}")
        if stride > n_times:
            raise ConfigError(f"encoder {self.name!r}: stride ({stride}) is longer than "
                              f"n_times ({n_times}); choose a smaller stride")
        self.n_chans, self.sfreq, self.n_times = n_chans, float(sfreq), n_times
        self.stride = stride
        self.dim = dim
        filters = n_chans * multiplier
        # Per-channel temporal filters ("same" padding keeps T), then channel mixing.
        self.temporal = nn.Conv1d(n_chans, filters, kernel, padding="same", groups=n_chans,
                                  bias=False)
        self.spatial = nn.Conv1d(filters, dim, 1)
        self.stem_norm = nn.GroupNorm(1, dim)
        self.stem_drop = nn.Dropout(dropout)
        # Learned downsampling: each feature's `stride` samples -> one token.
        self.downsample = nn.Conv1d(dim, dim, stride, stride=stride, groups=dim)
        self.pos = PositionalEmbedding(self.n_tokens(n_times), dim)
        self.transformer = TransformerStack(dim, depth, heads, mlp_ratio, dropout)
        self.pool = AttentionPool(dim, heads)
        self.apply(init_weights)

    @property
    def tokens_per_second(self) -> float:
        """Time tokens per second of EEG (``sfreq / stride``)."""
        return self.sfreq / self.stride

    def n_tokens(self, n_times: int) -> int:
        """Number of time tokens for a segment of ``n_times`` samples (``ceil(T / stride)``)."""
        return -(-n_times // self.stride)

    @classmethod
    def input_shape(cls, **contract: Any) -> tuple[int, ...]:
        """One sample's input shape under ``contract``: (B, C, T) EEG without B."""
        return (contract["n_chans"], contract["n_times"])

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        """Encode z-scored EEG ``(B, n_chans, T)``; T may differ from ``n_times``."""
        check_input(self.name, x, {"n_chans": self.n_chans, "n_times": None})
        pad = self.n_tokens(x.shape[-1]) * self.stride - x.shape[-1]
        h = self.temporal(x)                                  # (B, C*m, T)
        h = F.gelu(self.stem_norm(self.spatial(h)))           # (B, D, T)
        h = F.pad(self.stem_drop(h), (0, pad))                # (B, D, T'*stride)
        h = self.downsample(h).transpose(1, 2)                # (B, T', D)
        h = self.pos(h)                                       # (B, T', D)
        tokens = self.transformer(h)                          # (B, T', D)
        return EncoderOutput(tokens=tokens, pooled=self.pool(tokens))
