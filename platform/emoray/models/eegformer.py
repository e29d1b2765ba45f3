"""EEGformer as published (Wan et al. 2023).

Z. Wan, M. Li, S. Liu, J. Huang, H. Tan, W. Duan, "EEGformer: A transformer-based brain
activity classification method using EEG signal", Front. Neurosci. 17:1148855 (2023).

1. **1DCNN (ODCM)**: three depth-wise temporal convolutions (kernel 10, as in the
   paper): the first gives ``filters`` maps per EEG channel (120 in the paper), the next
   two filter each map on its own. The input is zero-padded by ``3 (kernel - 1)`` so the
   valid convolutions keep T. Result: the *feature cube* channels x filters x time
   ``(B, C, F, T)`` (:meth:`EEGformer.feature_cube`).
2. **Regional transformer**: within each EEG channel, attention across its F
   convolutional features; **synchronous transformer**: within each feature, attention
   across the C channels; each with its own [CLS] token and learned positions over the
   axis it attends across. A token is one (channel, feature) time series, as in the
   paper. The paper maps its Le samples to D by one linear map; we cut it into
   ``stride``-sample segments, each mapped to ``width`` by one shared map (the paper's
   map made block-diagonal over time), so a token is ``M x width``, ``M = ceil(T /
   stride)``. Attention scores and LayerNorm use the whole series, as in the paper (one
   attention map per series); the Q/K/V and MLP maps are shared across segments, so any
   length works and the cost is linear in T.
3. **Temporal transformer**: the paper averages the series axis into M parts and flattens
   each C x F matrix into one token; here each segment's ``width`` numbers are averaged
   (learned weights, starting at the mean), each segment's C*F vector is LayerNorm-ed and
   mapped to ``dim``, a [CLS] token and learned positions are added, and ``depth`` blocks
   attend across the M segments.
4. **CNN decoder**: the paper's three convolutions and one fully connected layer: (i)
   each segment's output to one value per EEG channel, (ii) ``decoder_filters`` filters
   across channels, (iii) M segments -> M/2 (starts as a mean over segments), then FC.
   Here the FC gives ``dim`` features, the **pooled** output (the decoder's features
   before classification: the classifier is the fusion model's or a unimodal head).
   **tokens** are the temporal transformer's segment outputs ``(B, M, dim)`` (without
   [CLS]), what the fusion attends over. Layer (iii) is sized for the contract's M: an
   input of another length (``n_times >= stride``) has its segments linearly resampled
   to that M there; tokens keep the input's own M.

GELU after each 1DCNN convolution; none in the decoder (with GELUs there, one large step
could silence it for good in our tests). No BatchNorm (a sample encodes alone as in a
batch); dropout only on the temporal transformer and the decoder (the cube-sized 1DCNN
and series blocks hold few parameters). Presets, parameters for the EAV contract (30
channels, 100 Hz, 500 samples: 20 segments at stride 25, 50 at stride 10):

======  =======  ======  =====  ===================  =================  ==========
preset  filters  stride  width  regional / synchr.   temporal D x K, A  parameters
======  =======  ======  =====  ===================  =================  ==========
tiny    8        25      8      1 / 1 blocks, 2 h    48 x 1, 2 heads    47.6 k
small   16       25      8      2 / 2 blocks, 2 h    192 x 4, 4 heads   1.93 M
base    32       10      16     3 / 3 blocks, 4 h    384 x 6, 6 heads   11.4 M
======  =======  ======  =====  ===================  =================  ==========

Where ours differ from the paper's sizes: 8-32 filters instead of 120, because the cube
(C x F series of M x width) sets the cost: ``small`` trains on CPU (its cube is 30 x 16
series of 20 x 8). The paper's block and head counts could not be checked here. Its
regional transformer attends across the features of one channel and its synchronous one
across channels, as here and in the public re-implementations; METHODS.md section B had
the two swapped.

Examples
--------
>>> from emoray.models import create_encoder
>>> enc = create_encoder("eegformer", "tiny", n_chans=30, sfreq=100.0, n_times=500)
>>> enc.feature_cube(torch.randn(2, 30, 500)).shape      # (B, C, F, T)
torch.Size([2, 30, 8, 500])
>>> out = enc(torch.randn(2, 30, 500))
>>> out.tokens.shape, out.pooled.shape                   # 500 / 25 = 20 segments
(torch.Size([2, 20, 48]), torch.Size([2, 48]))
>>> enc(torch.randn(1, 30, 400)).tokens.shape            # 4 s: 16 segments
torch.Size([1, 16, 48])
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from emoray.errors import ConfigError
from emoray.models.base import BaseEncoder, EncoderOutput
from emoray.models.layers import (ClsToken, PositionalEmbedding, TransformerStack,
                                  check_input, check_positive, check_transformer,
                                  init_weights)
from emoray.models.registry import register_encoder


class _SeriesNorm(nn.Module):
    """LayerNorm over a whole series token ``(..., M, width)``, affine per width."""

    def __init__(self, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-2:]) * self.weight + self.bias


class _SeriesBlock(nn.Module):
    """Pre-norm transformer block over ``L`` series tokens ``(N, L, M, width)``.

    Queries, keys and values are computed per segment by shared maps; a head's score of
    two tokens is the dot product of their whole series (``M * width / heads`` numbers),
    so one attention map per series, as the paper's tokens of length D.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = _SeriesNorm(width), _SeriesNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        hidden = max(1, int(round(width * mlp_ratio)))
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(),
                                 nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, l, m, w = x.shape
        h, dh = self.heads, w // self.heads
        qkv = self.qkv(self.norm1(x)).reshape(n, l, m, 3, h, dh)
        qkv = qkv.permute(3, 0, 4, 1, 2, 5).reshape(3, n, h, l, m * dh)   # per head: series
        q, k, v = qkv                                                      # (N, h, L, M*dh)
        a = F.scaled_dot_product_attention(q, k, v)                        # (N, h, L, M*dh)
        a = a.reshape(n, h, l, m, dh).permute(0, 2, 3, 1, 4).reshape(n, l, m, w)
        x = x + self.proj(a)                                               # (N, L, M, w)
        return x + self.mlp(self.norm2(x))                                 # (N, L, M, w)


class _AxisTransformer(nn.Module):
    """[CLS] + learned positions over the attended axis + :class:`_SeriesBlock` s.

    Input and output ``(N, L, M, width)``: N independent groups, attention across L.
    """

    def __init__(self, length: int, width: int, depth: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, 1, 1, width))
        self.pos = nn.Parameter(torch.zeros(1, length, 1, width))
        nn.init.trunc_normal_(self.cls, std=0.02)
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(_SeriesBlock(width, heads, mlp_ratio)
                                    for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos                                                   # (N, L, M, w)
        cls = self.cls.expand(x.shape[0], 1, x.shape[2], -1).to(x.dtype)   # (N, 1, M, w)
        x = torch.cat([cls, x], dim=1)                                     # (N, 1+L, M, w)
        for block in self.blocks:
            x = block(x)
        return x[:, 1:]                                                    # (N, L, M, w)


def _init(module: nn.Module) -> None:
    """Transformer init (:func:`init_weights`); convolutions He-normal, zero bias."""
    init_weights(module)
    if isinstance(module, nn.Conv1d):
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        nn.init.zeros_(module.bias)


@register_encoder
class EEGformer(BaseEncoder):
    """EEGformer (Wan et al. 2023) for ``(B, C, T)`` EEG: 1DCNN, regional, synchronous and
    temporal transformers, CNN decoder (see the module docstring).

    Parameters
    ----------
    n_chans, sfreq, n_times : int, float, int
        The contract: EEG channels C, sampling rate (Hz), samples per segment T.
    dim, depth, heads : int
        Width D, blocks and heads of the temporal transformer (D is :attr:`dim`).
    filters : int
        Depth-wise convolutional features F per channel (paper: 120).
    kernel : int
        Length of the depth-wise temporal kernels (paper: 10).
    stride : int
        Samples per time segment; ``ceil(T / stride)`` segments, one token each.
    width : int
        Width of one segment of a regional/synchronous series token.
    token_heads, regional_depth, synchronous_depth : int
        Heads (must divide ``width``) and blocks of the regional and synchronous
        transformers.
    decoder_filters : int
        Filters N of the decoder's second convolution.
    mlp_ratio : float
        MLP width of every block as a multiple of its token width.
    dropout : float
        Dropout on the temporal transformer's input and blocks and in the decoder.

    Notes
    -----
    The input is z-scored EEG ``(B, n_chans, T)``; another channel count raises
    :class:`ValueError` naming ``n_chans``, fewer than ``stride`` samples one naming
    ``n_times``. :meth:`load_weights` reads the files :meth:`save_weights` writes.
    """

    name: ClassVar[str] = "eegformer"
    modality: ClassVar[str] = "eeg"
    input_column: ClassVar[str] = "eeg"
    contract_fields: ClassVar[tuple[str, ...]] = ("n_chans", "sfreq", "n_times")
    #: a small contract the registry test builds every preset with
    example: ClassVar[dict[str, Any]] = {"n_chans": 4, "sfreq": 100.0, "n_times": 200}
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(dim=48, depth=1, heads=2, filters=8, kernel=10, stride=25, width=8,
                     token_heads=2, regional_depth=1, synchronous_depth=1,
                     decoder_filters=8, mlp_ratio=2.0, dropout=0.1),
        "small": dict(dim=192, depth=4, heads=4, filters=16, kernel=10, stride=25,
                      width=8, token_heads=2, regional_depth=2, synchronous_depth=2,
                      decoder_filters=16, mlp_ratio=4.0, dropout=0.1),
        "base": dict(dim=384, depth=6, heads=6, filters=32, kernel=10, stride=10, width=16,
                     token_heads=4, regional_depth=3, synchronous_depth=3,
                     decoder_filters=32, mlp_ratio=4.0, dropout=0.1),
    }

    def __init__(self, n_chans: int, sfreq: float, n_times: int, dim: int, depth: int,
                 heads: int, filters: int, kernel: int, stride: int, width: int,
                 token_heads: int, regional_depth: int, synchronous_depth: int,
                 decoder_filters: int, mlp_ratio: float = 4.0, dropout: float = 0.1):
        super().__init__()
        check_positive(self.name, n_chans=n_chans, n_times=n_times, filters=filters,
                       kernel=kernel, stride=stride, width=width, token_heads=token_heads,
                       regional_depth=regional_depth, synchronous_depth=synchronous_depth,
                       decoder_filters=decoder_filters)
        check_transformer(self.name, dim, heads, depth, mlp_ratio, dropout)
        if width % token_heads:
            raise ConfigError(f"encoder {self.name!r}: token_heads ({token_heads}) must "
                              f"divide width ({width})")
        if isinstance(sfreq, bool) or not isinstance(sfreq, (int, float)) or sfreq <= 0:
            raise ConfigError(f"encoder {self.name!r}: sfreq must be a positive number "
                              f"(Hz), got {sfreq!r}")
        if n_times < 2 * stride:
            raise ConfigError(f"encoder {self.name!r}: n_times ({n_times}) holds fewer "
                              f"than two segments of stride ({stride}) samples; choose "
                              f"a smaller stride")
        self.n_chans, self.sfreq, self.n_times = n_chans, float(sfreq), n_times
        self.filters, self.stride, self.width = filters, stride, width
        self.dim = dim
        self.n_segments = self.n_tokens(n_times)
        cf = n_chans * filters
        # 1DCNN: depth-wise per EEG channel, then per feature map (valid; input padded).
        self.odcm = nn.ModuleDict(dict(
            conv1=nn.Conv1d(n_chans, cf, kernel, groups=n_chans),
            conv2=nn.Conv1d(cf, cf, kernel, groups=cf),
            conv3=nn.Conv1d(cf, cf, kernel, groups=cf)))
        self._pad = (3 * (kernel - 1) // 2, 3 * (kernel - 1) - 3 * (kernel - 1) // 2)
        # Each series' segment of `stride` samples -> `width` (the token map, shared).
        self.segment_embed = nn.Linear(stride, width)
        self.regional = _AxisTransformer(filters, width, regional_depth, token_heads,
                                         mlp_ratio)
        self.synchronous = _AxisTransformer(n_chans, width, synchronous_depth, token_heads,
                                            mlp_ratio)
        self.segment_pool = nn.Linear(width, 1)
        self.temporal_norm = nn.LayerNorm(cf)
        self.temporal_drop = nn.Dropout(dropout)
        self.temporal_embed = nn.Linear(cf, dim)
        self.temporal_pos = PositionalEmbedding(self.n_segments, dim)
        self.temporal_cls = ClsToken(dim)
        self.temporal = TransformerStack(dim, depth, heads, mlp_ratio, dropout)
        # CNN decoder: (i) token -> one value per channel, (ii) N filters across channels,
        # (iii) M -> M/2 segments, then the FC layer (to `dim` here: pooled).
        half = self.n_segments // 2
        self.decoder = nn.ModuleDict(dict(
            conv1=nn.Conv1d(dim, n_chans, 1), conv2=nn.Conv1d(n_chans, decoder_filters, 1),
            conv3=nn.Conv1d(self.n_segments, half, 1),
            fc=nn.Linear(half * decoder_filters, dim)))
        self.decoder_drop = nn.Dropout(dropout)
        self.apply(_init)
        nn.init.kaiming_normal_(self.segment_embed.weight, nonlinearity="relu")
        with torch.no_grad():   # start from means: steadier training (alpha test)
            self.decoder["conv3"].weight.mul_(0.1).add_(1.0 / self.n_segments)  # + He / 10
            self.segment_pool.weight.fill_(1.0 / width)         # the paper's average

    def n_tokens(self, n_times: int) -> int:
        """Time segments (tokens) of ``n_times`` samples: ``ceil(n_times / stride)``."""
        return -(-n_times // self.stride)

    @classmethod
    def input_shape(cls, **contract: Any) -> tuple[int, ...]:
        """One sample's input shape under ``contract``: (B, C, T) EEG without B."""
        return (contract["n_chans"], contract["n_times"])

    def feature_cube(self, x: torch.Tensor) -> torch.Tensor:
        """The 1DCNN's output: EEG ``(B, C, T)`` -> feature cube ``(B, C, F, T)``."""
        h = F.pad(x, self._pad)                                   # (B, C, T + 3 (kernel-1))
        for conv in self.odcm.values():
            h = F.gelu(conv(h))                                   # (B, C*F, ...)
        return h.unflatten(1, (self.n_chans, self.filters))       # (B, C, F, T)

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        """Encode z-scored EEG ``(B, n_chans, T)``; any ``T >= stride`` works."""
        check_input(self.name, x, {"n_chans": self.n_chans, "n_times": None})
        b, c, t = x.shape
        if t < self.stride:
            raise ValueError(f"encoder {self.name!r}: the input has {t} samples, fewer "
                             f"than one segment of stride ({self.stride}); n_times must "
                             f"be at least {self.stride} (contract n_times {self.n_times})")
        f, w, m = self.filters, self.width, self.n_tokens(t)
        x = F.pad(x, (0, m * self.stride - t))                    # (B, C, M*stride)
        cube = self.feature_cube(x)                               # (B, C, F, M*stride)
        h = self.segment_embed(cube.reshape(b * c, f, m, -1))     # (B*C, F, M, w)
        h = self.regional(h)                                      # across the F features
        h = h.reshape(b, c, f, m, w).transpose(1, 2).reshape(b * f, c, m, w)
        h = self.synchronous(h)                                   # across the C channels
        h = self.segment_pool(h).reshape(b, f, c, m)              # (B, F, C, M)
        h = h.permute(0, 3, 2, 1).reshape(b, m, c * f)            # (B, M, C*F)
        h = self.temporal_drop(self.temporal_norm(h))             # (B, M, C*F)
        z = self.temporal_pos(self.temporal_embed(h))             # (B, M, D)
        tokens = self.temporal(self.temporal_cls(z))[:, 1:]       # (B, M, D)
        return EncoderOutput(tokens=tokens, pooled=self._decode(tokens))

    def _decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """The CNN decoder: segment tokens ``(B, M, D)`` -> pooled ``(B, D)``."""
        dec, drop = self.decoder, self.decoder_drop
        h = drop(dec["conv2"](dec["conv1"](tokens.transpose(1, 2))))  # (B,C,M) -> (B,N,M)
        if h.shape[-1] != self.n_segments:                        # another length: resample
            h = F.interpolate(h, size=self.n_segments, mode="linear", align_corners=False)
        h = drop(dec["conv3"](h.transpose(1, 2)))                 # (B, M/2, N)
        return dec["fc"](h.flatten(1))                            # (B, D)
