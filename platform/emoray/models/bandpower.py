"""Band-power tokens: spatial patterns of the EEG's log band power, one token per band.

The input is the contract's ``eeg_bp`` (or ``eeg_de``) feature ``(B, C, n_bands)`` — per
channel, the log power in each frequency band — standardised per subject
(:mod:`emoray.data.subject_norm`). This is the power-preserving path of the emotion-EEG
literature (SEED's differential-entropy features feed DGCNN, BiHDM and the like): on a few
hundred segments an end-to-end network on raw EEG overfits before it finds band power,
while band power carries the emotion signal (frontal alpha asymmetry, beta/gamma arousal).

Each band's topography (its C channel values) is projected by that band's own learned
spatial filters to a token (a weighted sum over electrodes is what frontal asymmetry and
regional power are), one more token projects all bands at once; a
:class:`~emoray.models.layers.TransformerStack` relates the band tokens and attention
pooling gives the pooled embedding. Weights stay per electrode: an encoder that shares one
embedding across channels and tells them apart by an added channel code learned nothing
here (deep EEG accuracy 0.30 vs 0.49 for logistic regression on the same inputs). Written
here: braindecode's models take raw time series, not band features.

Examples
--------
>>> from emoray.models import create_encoder
>>> enc = create_encoder("bandpower", "tiny", n_chans=30, n_bands=5)
>>> out = enc(torch.randn(2, 30, 5))
>>> out.tokens.shape, out.pooled.shape
(torch.Size([2, 6, 32]), torch.Size([2, 32]))
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from emoray.models.base import BaseEncoder, EncoderOutput
from emoray.models.layers import (AttentionPool, TransformerStack, check_input,
                                  check_positive, check_transformer, init_weights)
from emoray.models.registry import register_encoder


@register_encoder
class BandPowerEncoder(BaseEncoder):
    """Band tokens (and one all-band token) from ``(B, C, n_bands)`` log band power.

    Parameters
    ----------
    n_chans : int
        EEG channels C (contract).
    n_bands : int
        Frequency bands per channel (contract ``eeg.bands``).
    dim : int
        Token width D.
    depth : int
        Transformer blocks across the band tokens (0: none, the tokens are pooled directly).
    heads : int
        Attention heads (must divide ``dim``).
    mlp_ratio : float
        MLP width of each block as a multiple of ``dim``.
    dropout : float
        Dropout in the embedding and the blocks.
    """

    name: ClassVar[str] = "bandpower"
    modality: ClassVar[str] = "eeg"
    input_column: ClassVar[str] = "eeg_bp"
    contract_fields: ClassVar[tuple[str, ...]] = ("n_chans", "n_bands")
    example: ClassVar[dict[str, Any]] = {"n_chans": 4, "n_bands": 5}
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(dim=32, depth=1, heads=2, mlp_ratio=2.0, dropout=0.1),
        "small": dict(dim=64, depth=2, heads=4, mlp_ratio=2.0, dropout=0.1),
        "base": dict(dim=128, depth=4, heads=4, mlp_ratio=4.0, dropout=0.1),
    }

    def __init__(self, n_chans: int, n_bands: int, dim: int, depth: int, heads: int,
                 mlp_ratio: float = 2.0, dropout: float = 0.1):
        super().__init__()
        check_positive(self.name, n_chans=n_chans, n_bands=n_bands)
        check_transformer(self.name, dim, heads, max(depth, 1), mlp_ratio, dropout)
        self.n_chans, self.n_bands, self.dim = n_chans, n_bands, dim
        # per band: C electrodes -> D (that band's spatial filters); all bands: C*nb -> D
        self.spatial = nn.Parameter(torch.empty(n_bands, n_chans, dim))
        self.band_bias = nn.Parameter(torch.zeros(n_bands, dim))
        self.all_bands = nn.Linear(n_chans * n_bands, dim)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.transformer = (TransformerStack(dim, depth, heads, mlp_ratio, dropout)
                            if depth else nn.Identity())
        self.pool = AttentionPool(dim, heads)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.spatial, std=n_chans ** -0.5)

    @classmethod
    def input_shape(cls, **contract: Any) -> tuple[int, ...]:
        """One sample's input: ``(n_chans, n_bands)``."""
        return (contract["n_chans"], contract["n_bands"])

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        """Encode standardised log band power ``(B, n_chans, n_bands)``."""
        check_input(self.name, x, {"n_chans": self.n_chans, "n_bands": self.n_bands})
        bands = torch.einsum("bcn,ncd->bnd", x, self.spatial) + self.band_bias  # (B, nb, D)
        every = self.all_bands(x.flatten(1)).unsqueeze(1)                   # (B, 1, D)
        h = self.drop(torch.nn.functional.gelu(self.norm(torch.cat([bands, every], 1))))
        tokens = self.transformer(h)                                        # (B, nb+1, D)
        return EncoderOutput(tokens=tokens, pooled=self.pool(tokens))
