"""The encoders of bundles written before the published architectures (issue 16).

Until then ``eegformer``, ``ast`` and ``vit`` were simplified hand-written transformers
(a depthwise-conv stem + one temporal transformer; an AST with non-overlapping patches; a
hand-written ViT). Those names now build the published models (:mod:`emoray.models.eegformer`,
:mod:`emoray.models.ast`, :mod:`emoray.models.vit`). The old classes live on here, unchanged
and registered as ``eegformer-v0``, ``ast-v0`` and ``vit-v0``, so that every bundle written
before keeps loading and answering the same: :meth:`emoray.models.FusionModel.from_config`
maps a config without ``"encoder_generation"`` to these names. They can also be chosen
explicitly (``architectures: {eeg: eegformer-v0}``), e.g. to compare with the published ones.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from emoray.errors import ConfigError
from emoray.models.base import BaseEncoder, EncoderOutput
from emoray.models.registry import register_encoder
from emoray.models.layers import (AttentionPool, ClsToken, PositionalEmbedding,
                                  TransformerStack, check_input, check_positive,
                                  check_transformer, init_weights)

#: the encoder names of bundles written before the published architectures -> their class
LEGACY_NAMES = {"eegformer": "eegformer-v0", "ast": "ast-v0", "vit": "vit-v0"}

@register_encoder
class EEGformerV0(BaseEncoder):
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

    name: ClassVar[str] = "eegformer-v0"
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


@register_encoder
class AudioSpectrogramTransformerV0(BaseEncoder):
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

    name: ClassVar[str] = "ast-v0"
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


@register_encoder
class VideoViTV0(BaseEncoder):
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

    name: ClassVar[str] = "vit-v0"
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
