"""MLP encoder over feature vectors: the lightweight encoders of JMML's intra stage.

Inputs are per-segment feature vectors: EEG differential entropy or band power
``(C, n_bands)`` flattened to ``C * n_bands``, or speech statistics ``(265,)``. Each
hidden layer is ``Linear -> LayerNorm -> GELU -> Dropout`` (no BatchNorm, so a batch of
one, uneven DDP shards and eval mode behave alike; the LayerNorm after every Linear keeps
activations on a fixed scale whatever the feature units), and a final Linear gives the
embedding of width ``dim`` (32/64/128 in the presets).

Features should be standardised by the caller (e.g. with training-set mean and std);
band power in V^2 is ~1e-12 and would otherwise reach the first layer as zeros.

Examples
--------
>>> from emoray.models import create_encoder
>>> enc = create_encoder("mlp", "tiny", in_features=150)
>>> out = enc(torch.randn(4, 30, 5))        # (B, C, n_bands) is flattened
>>> out.tokens.shape, out.pooled.shape
(torch.Size([4, 1, 32]), torch.Size([4, 32]))
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from emoray.models.base import BaseEncoder, EncoderOutput
from emoray.models.registry import register_encoder
from emoray.models.layers import check_dropout, check_input, check_positive, init_weights


@register_encoder
class MLPEncoder(BaseEncoder):
    """``depth`` hidden layers (Linear-LayerNorm-GELU-Dropout) and a linear embedding.

    Parameters
    ----------
    in_features : int
        Length F of the feature vector (contract).
    dim : int
        Embedding width D.
    hidden : int
        Width of the hidden layers.
    depth : int
        Number of hidden layers (>= 1).
    dropout : float
        Dropout after every hidden layer.

    Notes
    -----
    ``tokens`` is the embedding as a single token ``(B, 1, D)`` so that the MLP fits
    wherever a token encoder does; ``pooled`` is the same vector ``(B, D)``.
    """

    name: ClassVar[str] = "mlp"
    modality: ClassVar[str] = "features"
    contract_fields: ClassVar[tuple[str, ...]] = ("in_features",)
    #: a small contract the registry test builds every preset with
    example: ClassVar[dict[str, Any]] = {"in_features": 20}
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(dim=32, hidden=64, depth=1, dropout=0.1),
        "small": dict(dim=64, hidden=256, depth=2, dropout=0.2),
        "base": dict(dim=128, hidden=1024, depth=3, dropout=0.2),
    }

    def __init__(self, in_features: int, dim: int, hidden: int, depth: int,
                 dropout: float = 0.1):
        super().__init__()
        check_positive(self.name, in_features=in_features, dim=dim, hidden=hidden,
                       depth=depth)
        check_dropout(self.name, dropout)
        self.in_features = in_features
        self.dim = dim
        self.stem = self._layer(in_features, hidden, dropout)      # F -> hidden
        self.hidden = nn.Sequential(*(self._layer(hidden, hidden, dropout)
                                      for _ in range(depth - 1)))
        self.out = nn.Linear(hidden, dim)
        self.apply(init_weights)

    @staticmethod
    def _layer(n_in: int, n_out: int, dropout: float) -> nn.Sequential:
        return nn.Sequential(nn.Linear(n_in, n_out), nn.LayerNorm(n_out), nn.GELU(),
                             nn.Dropout(dropout))

    @classmethod
    def input_shape(cls, **contract: Any) -> tuple[int, ...]:
        """One sample's input shape under ``contract``: (B, F) features without B."""
        return (contract["in_features"],)

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        """Encode features ``(B, in_features)``; ``(B, ...)`` is flattened first."""
        if x.ndim > 2 and math.prod(x.shape[1:]) == self.in_features:
            x = x.flatten(1)                                 # (B, C, n_bands) -> (B, F)
        check_input(self.name, x, {"in_features": self.in_features})
        pooled = self.out(self.hidden(self.stem(x)))         # (B, D)
        return EncoderOutput(tokens=pooled.unsqueeze(1), pooled=pooled)


@register_encoder
class SpeechStatsEncoder(MLPEncoder):
    """The MLP over a segment's speech statistics (``audio_stats``: log-mel means and
    stds, energy, pitch, voicing, rate, jitter), standardised per subject: the speech
    path that keeps level and spectral tilt (``architectures: {speech: speechstats}``).

    Examples
    --------
    >>> from emoray.models import create_encoder
    >>> create_encoder("speechstats", "tiny", in_features=265)(torch.randn(2, 265)).pooled.shape
    torch.Size([2, 32])
    """

    name: ClassVar[str] = "speechstats"
    modality: ClassVar[str] = "speech"
    input_column: ClassVar[str] = "audio_stats"


@register_encoder
class BandPowerMLPEncoder(MLPEncoder):
    """The MLP over a segment's log band power per channel (``eeg_bp`` ``(C, n_bands)``,
    flattened), standardised per subject: the smallest EEG path that keeps band power and
    topography (``architectures: {eeg: bandpower-mlp}``); on a few hundred segments it
    overfits less than the per-band spatial-filter transformer (``bandpower``).

    Examples
    --------
    >>> from emoray.models import create_encoder
    >>> enc = create_encoder("bandpower-mlp", "tiny", n_chans=30, n_bands=5)
    >>> enc(torch.randn(2, 30, 5)).pooled.shape
    torch.Size([2, 32])
    """

    name: ClassVar[str] = "bandpower-mlp"
    modality: ClassVar[str] = "eeg"
    input_column: ClassVar[str] = "eeg_bp"
    contract_fields: ClassVar[tuple[str, ...]] = ("n_chans", "n_bands")
    example: ClassVar[dict[str, Any]] = {"n_chans": 4, "n_bands": 5}

    def __init__(self, n_chans: int, n_bands: int, dim: int, hidden: int, depth: int,
                 dropout: float = 0.1):
        check_positive(self.name, n_chans=n_chans, n_bands=n_bands)
        super().__init__(n_chans * n_bands, dim, hidden, depth, dropout)

    @classmethod
    def input_shape(cls, **contract: Any) -> tuple[int, ...]:
        """One sample's input: ``(n_chans, n_bands)``."""
        return (contract["n_chans"], contract["n_bands"])
