"""AST: the Audio Spectrogram Transformer as published (Gong, Chung & Glass 2021).

Y. Gong, Y.-A. Chung, J. Glass, "AST: Audio Spectrogram Transformer", Interspeech 2021,
arXiv:2104.01778. The log-mel spectrogram ``(B, n_mels, frames)`` is a one-channel image
(frequency up, time across) cut into **overlapping** ``patch x patch`` patches by a
convolution with strides ``(fstride, tstride)``: 16 x 16 patches with stride 10 in both
axes at ``small`` and ``base``, as in the paper (a 128 x 501 log-mel gives 12 x 49 patches).
No padding, as in the reference code: trailing bins and frames that fill no whole patch
are dropped (an input shorter than one patch is zero-padded to one). A [CLS] token and a
distillation token (DeiT) are prepended, learned positions over ``2 + F' * T'`` slots are
added, and ``depth`` pre-norm ViT blocks then a final LayerNorm run over all tokens. The
blocks are timm's :class:`timm.models.vision_transformer.Block` (qkv bias, LayerNorm eps
1e-6, as DeiT), so the parameter names are DeiT's.

Presets (``n_mels x frames`` 128 x 501, the EAV contract):

======  =====  =====  =====  =================  ==========  ===========
preset  dim    depth  heads  patch / stride     grid        parameters
======  =====  =====  =====  =================  ==========  ===========
tiny    48     2      2      16 / 12 (cheaper)  10 x 41     70 k
small   192    4      3      16 / 10 (paper)    12 x 49     1.94 M
base    384    12     6      16 / 10 (paper)    12 x 49     21.6 M
======  =====  =====  =====  =================  ==========  ===========

``small`` is DeiT-tiny's width at a third of its depth; ``base`` is DeiT-small
(``deit_small_distilled_patch16_224``) exactly. The paper's model is DeiT-base
(``dim=768, depth=12, heads=12``, ~ 87 M), available as size overrides of ``base``.

Outputs: ``tokens`` are the patch tokens only ``(B, F' * T', D)``, frequency-major (all
time patches of the lowest band first); ``pooled`` is the mean of the [CLS] and
distillation outputs, as the reference model feeds its head. The contract's ``n_frames``
sets the position grid; an input with another frame count gets the time axis of the grid
bilinearly interpolated, so both work with the same weights.

:meth:`AudioSpectrogramTransformer.load_weights` reads our own files, checkpoints of the
reference code (``module.v.*``) and ImageNet DeiT checkpoints in timm's layout (adapted as
the paper does); see there. Nothing is ever downloaded.

Examples
--------
>>> from emoray.models import create_encoder
>>> patch_grid(128, 100, patch=16, fstride=10, tstride=10)    # the paper's overlap
(12, 9)
>>> enc = create_encoder("ast", "tiny", n_mels=128, n_frames=501)
>>> out = enc(torch.randn(2, 128, 501))
>>> out.tokens.shape, out.pooled.shape      # 10 x 41 patches of 16 x 16, stride 12
(torch.Size([2, 410, 48]), torch.Size([2, 48]))
>>> enc(torch.randn(1, 128, 401)).tokens.shape      # 4 s: 10 x 33, positions resized
torch.Size([1, 330, 48])
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse
from urllib.request import url2pathname

import torch
import torch.nn.functional as F
from torch import nn

from emoray.errors import ConfigError
from emoray.models.base import BaseEncoder, EncoderOutput
from emoray.models.layers import check_input, check_positive, check_transformer, init_weights
from emoray.models.registry import register_encoder

#: the tokens before the patches: [CLS] and distillation
N_PREFIX = 2


def patch_grid(n_mels: int, n_frames: int, patch: int, fstride: int,
               tstride: int) -> tuple[int, int]:
    """The patch grid ``(F', T')`` of a ``n_mels x n_frames`` log-mel.

    ``floor((n - patch) / stride) + 1`` per axis (the convolution's output size, no
    padding), and 1 for an axis shorter than a patch (it is zero-padded to one patch).
    """
    return (max(n_mels - patch, 0) // fstride + 1, max(n_frames - patch, 0) // tstride + 1)


def resize_grid(pos: torch.Tensor, old: tuple[int, int], new: tuple[int, int],
                crop: bool = False) -> torch.Tensor:
    """Resize patch positions ``(1, F*T, D)`` from grid ``old`` to grid ``new``.

    ``crop=False``: bilinear interpolation of both axes. ``crop=True``: the reference
    code's rule for pretrained positions, time axis first, then frequency: an axis that
    shrinks keeps its middle slots, one that grows is bilinearly interpolated.
    """
    d = pos.shape[-1]
    g = pos.transpose(1, 2).reshape(1, d, *old).float()         # (1, D, F, T)
    if not crop:
        g = F.interpolate(g, size=new, mode="bilinear", align_corners=False)
    else:
        for axis in (3, 2):                                     # time, then frequency
            n_old, n_new = g.shape[axis], new[axis - 2]
            if n_new <= n_old:
                start = n_old // 2 - n_new // 2
                g = g.narrow(axis, start, n_new)
            else:
                size = list(g.shape[2:])
                size[axis - 2] = n_new
                g = F.interpolate(g, size=tuple(size), mode="bilinear", align_corners=False)
    return g.reshape(1, d, -1).transpose(1, 2).to(pos.dtype)    # (1, F'*T', D)


@register_encoder
class AudioSpectrogramTransformer(BaseEncoder):
    """AST: overlapping patches, [CLS] + distillation token, timm ViT blocks.

    Parameters
    ----------
    n_mels : int
        Mel bins of the input (contract).
    n_frames : int
        Frames per segment (contract), e.g. 501 for 5 s at a 10 ms hop; sets the grid
        the learned positions are built for.
    dim : int
        Token width D.
    depth : int
        Transformer blocks.
    heads : int
        Attention heads (must divide ``dim``).
    patch : int
        Square patch side in bins and frames (16 in the paper).
    fstride, tstride : int
        Patch strides along frequency and time, at most ``patch`` (10 in the paper:
        neighbouring patches share 6 bins or frames).
    mlp_ratio : float
        MLP width of each block as a multiple of ``dim``.
    dropout : float
        Dropout after the positions are added and on both residual branches of the blocks.

    Notes
    -----
    ``tokens`` are the patch tokens ``(B, F' * T', D)`` (frequency-major); ``pooled`` is
    ``(cls + dist) / 2`` of the final-norm outputs. Parameters: ``patch_embed`` (the
    first layer), ``cls_token``, ``dist_token``, ``pos_embed`` ``(1, 2 + F' * T', D)``,
    ``blocks.N.*`` (timm), ``norm``.
    """

    name: ClassVar[str] = "ast"
    modality: ClassVar[str] = "speech"
    input_column: ClassVar[str] = "logmel"
    contract_fields: ClassVar[tuple[str, ...]] = ("n_mels", "n_frames")
    #: a small contract the registry test builds every preset with
    example: ClassVar[dict[str, Any]] = {"n_mels": 64, "n_frames": 96}
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(dim=48, depth=2, heads=2, patch=16, fstride=12, tstride=12,
                     mlp_ratio=2.0, dropout=0.1),
        "small": dict(dim=192, depth=4, heads=3, patch=16, fstride=10, tstride=10,
                      mlp_ratio=4.0, dropout=0.1),
        "base": dict(dim=384, depth=12, heads=6, patch=16, fstride=10, tstride=10,
                     mlp_ratio=4.0, dropout=0.1),
    }

    def __init__(self, n_mels: int, n_frames: int, dim: int, depth: int, heads: int,
                 patch: int = 16, fstride: int = 10, tstride: int = 10,
                 mlp_ratio: float = 4.0, dropout: float = 0.1):
        super().__init__()
        check_positive(self.name, n_mels=n_mels, n_frames=n_frames, patch=patch,
                       fstride=fstride, tstride=tstride)
        check_transformer(self.name, dim, heads, depth, mlp_ratio, dropout)
        for key, stride in (("fstride", fstride), ("tstride", tstride)):
            if stride > patch:
                raise ConfigError(f"encoder {self.name!r}: {key} ({stride}) must not exceed "
                                  f"patch ({patch}), or bins/frames between patches are lost")
        self.n_mels, self.n_frames = n_mels, n_frames
        self.patch, self.stride = patch, (fstride, tstride)
        self.dim = dim
        self.patch_embed = nn.Conv2d(1, dim, kernel_size=patch, stride=self.stride)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        f, t = self.grid(n_frames)
        self.pos_embed = nn.Parameter(torch.zeros(1, N_PREFIX + f * t, dim))  # (1, 2+N, D)
        self.pos_drop = nn.Dropout(dropout)
        # imported here, not with the module: timm pulls in torchvision and torch._dynamo
        # (about 1.5 s of CPU), which a process that builds no AST (a JMML stage's
        # worker, an EEG replica) should not pay for importing the encoder registry
        from timm.models.vision_transformer import Block

        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.Sequential(*(
            Block(dim, heads, mlp_ratio=mlp_ratio, qkv_bias=True, proj_drop=dropout,
                  norm_layer=norm) for _ in range(depth)))
        self.norm = norm(dim)
        for p in (self.cls_token, self.dist_token, self.pos_embed):
            nn.init.trunc_normal_(p, std=0.02)
        self.apply(init_weights)

    def grid(self, n_frames: int) -> tuple[int, int]:
        """Patch grid ``(F', T')`` of a spectrogram with ``n_frames`` frames."""
        return patch_grid(self.n_mels, n_frames, self.patch, *self.stride)

    def position_table(self, grid: tuple[int, int]) -> torch.Tensor:
        """Positions ``(1, 2 + F' * T', D)`` for ``grid``: the learned table itself at the
        contract's grid, else its patch part bilinearly resized (prefix slots kept)."""
        own = self.grid(self.n_frames)
        if tuple(grid) == own:
            return self.pos_embed
        patches = resize_grid(self.pos_embed[:, N_PREFIX:], own, tuple(grid))
        return torch.cat([self.pos_embed[:, :N_PREFIX], patches], dim=1)

    @classmethod
    def input_shape(cls, **contract: Any) -> tuple[int, ...]:
        """One sample's input shape under ``contract``: (B, n_mels, n_frames) log-mel without B."""
        return (contract["n_mels"], contract["n_frames"])

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        """Encode a log-mel batch ``(B, n_mels, frames)``; frames may differ from ``n_frames``."""
        check_input(self.name, x, {"n_mels": self.n_mels, "n_frames": None})
        grid = self.grid(x.shape[-1])
        pad_f, pad_t = (max(self.patch - n, 0) for n in x.shape[1:])
        x = F.pad(x, (0, pad_t, 0, pad_f)).unsqueeze(1)      # (B, 1, n_mels, frames)
        h = self.patch_embed(x)                              # (B, D, F', T')
        h = h.flatten(2).transpose(1, 2)                     # (B, F'*T', D)
        b = h.shape[0]
        prefix = torch.cat([self.cls_token, self.dist_token], dim=1)  # (1, 2, D)
        h = torch.cat([prefix.expand(b, -1, -1).to(h.dtype), h], dim=1)  # (B, 2 + N, D)
        h = self.pos_drop(h + self.position_table(grid))     # (B, 2 + N, D)
        h = self.norm(self.blocks(h))                        # (B, 2 + N, D)
        pooled = (h[:, 0] + h[:, 1]) / 2                     # (B, D)
        return EncoderOutput(tokens=h[:, N_PREFIX:], pooled=pooled)

    def load_weights(self, path: Any, *, strict: bool = True) -> "AudioSpectrogramTransformer":
        """Load weights from a local ``.pth``/``.pt`` or ``.safetensors`` file (or a
        ``file://`` URI), in one of three layouts, detected from the key names:

        - ``own``: what :meth:`save_weights` writes (or its bare state dict);
        - ``reference``: the reference AST code's checkpoints (YuanGongND/ast), keys
          ``module.v.*`` (or ``v.*``): ``patch_embed.proj``, ``cls_token``,
          ``dist_token``, ``pos_embed``, ``blocks.N.*``, ``norm``; ``module.mlp_head.*``
          and DeiT's ``head``/``head_dist`` are ignored. Positions for a grid with our
          frequency rows but another time length are cut or interpolated in time, as the
          reference code does when it fine-tunes;
        - ``timm``: an ImageNet DeiT checkpoint in timm's layout (``patch_embed.proj``
          with 3 input channels, ``pos_embed`` over a square grid, e.g. 14 x 14): the
          patch kernel is averaged over RGB (the paper's rule; the reference code sums,
          i.e. 3 x this) and the square grid is cut or interpolated to ``(F', T')``
          (the reference code's rule), keeping the [CLS]/distillation positions.

        Every key and shape is checked before anything is copied: a missing, unexpected
        or wrong-shape key raises :class:`ConfigError` naming the file and the keys, and
        leaves the weights unchanged. ``strict=False`` tolerates missing and unexpected
        keys (never wrong shapes).
        """
        path, state = _read_checkpoint(path, self.name)
        own = self.state_dict()
        layout, state = _to_own_layout(state, own, self.grid(self.n_frames))
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        bad = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
               for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
        if bad or (strict and (missing or unexpected)):
            raise ConfigError(
                f"weights file {path} ({layout} layout) does not fit {self.name} "
                f"{getattr(self, '_config', {})}: wrong shape {_some(bad, 5)}, missing "
                f"{_some(missing, 8)}, unexpected {_some(unexpected, 8)}; the model is "
                f"unchanged")
        self.load_state_dict({k: v for k, v in state.items() if k in own}, strict=strict)
        return self


# -- checkpoint files -----------------------------------------------------------------------

#: key prefixes of the reference code's checkpoints (with and without DataParallel)
_REFERENCE = ("module.v.", "v.")
#: classifier heads in reference/DeiT checkpoints; an encoder has none
_HEADS = ("module.mlp_head.", "mlp_head.", "head.", "head_dist.")


def _some(items: list[str], n: int) -> str:
    """The first ``n`` items, and how many there are when more."""
    return f"{items[:n]}" + (f" (+{len(items) - n} more)" if len(items) > n else "")


def _local_path(path: Any) -> Path:
    """A local path or ``file://`` URI as a :class:`Path`; any other URI is refused."""
    text = str(path)
    url = urlparse(text)
    if url.scheme == "file":
        if url.netloc not in ("", "localhost"):
            raise ConfigError(f"weights file {text}: only local file:// URIs are read")
        return Path(url2pathname(url.path))
    if len(url.scheme) > 1:                      # a Windows drive letter is one character
        raise ConfigError(f"weights file {text}: only local paths or file:// URIs are "
                          f"read (nothing is downloaded)")
    return Path(text)


def _read_checkpoint(path: Any, encoder: str) -> tuple[Path, dict[str, torch.Tensor]]:
    """Read ``path`` (``.safetensors`` or a torch file) to a flat state dict of tensors,
    unwrapping ``{"state_dict": ...}`` (ours) and ``{"model": ...}`` (DeiT's releases)."""
    path = _local_path(path)
    if not path.is_file():
        raise ConfigError(f"weights file {path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            blob: Any = load_file(str(path), device="cpu")
        else:
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:     # torch and safetensors raise several types for bad files
        raise ConfigError(f"weights file {path} is not a readable checkpoint "
                          f"({type(exc).__name__}: {exc})") from None
    if isinstance(blob, dict) and blob.get("encoder") not in (None, encoder):
        raise ConfigError(f"weights file {path} holds encoder {blob['encoder']!r}, "
                          f"not {encoder!r}")
    for wrapper in ("state_dict", "model"):
        if isinstance(blob, dict) and isinstance(blob.get(wrapper), dict):
            blob = blob[wrapper]
            break
    if not isinstance(blob, dict) or not all(isinstance(v, torch.Tensor)
                                             for v in blob.values()):
        raise ConfigError(f"weights file {path}: expected a state dict of tensors")
    return path, dict(blob)


def _to_own_layout(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor],
                   grid: tuple[int, int]) -> tuple[str, dict[str, torch.Tensor]]:
    """Rename and adapt a checkpoint's tensors to this encoder's keys.

    Returns the layout found (``own``, ``reference``, ``timm``) and the adapted state;
    what cannot be adapted is left as it is for the caller's key/shape check to report.
    """
    if any(k.startswith(_REFERENCE) for k in state):
        layout = "reference"
        state = {next((k[len(p):] for p in _REFERENCE if k.startswith(p)), k): v
                 for k, v in state.items()}
    elif "patch_embed.proj.weight" in state:
        layout = "timm"
    else:
        return "own", state
    out = {k: v for k, v in state.items() if not k.startswith(_HEADS)}
    for suffix in ("weight", "bias"):
        if f"patch_embed.proj.{suffix}" in out:
            out[f"patch_embed.{suffix}"] = out.pop(f"patch_embed.proj.{suffix}")
    kernel = out.get("patch_embed.weight")
    if kernel is not None and kernel.ndim == 4 and kernel.shape[1] == 3:
        out["patch_embed.weight"] = kernel.mean(dim=1, keepdim=True)  # (D, 1, p, p)
    pos, want = out.get("pos_embed"), own["pos_embed"]
    if pos is not None and pos.ndim == 3 and pos.shape != want.shape \
            and pos.shape[-1] == want.shape[-1] and pos.shape[1] > N_PREFIX:
        n = pos.shape[1] - N_PREFIX
        side = math.isqrt(n)
        if layout == "timm" and side * side == n:
            old = (side, side)                       # an image model's square grid
        elif layout == "reference" and n % grid[0] == 0:
            old = (grid[0], n // grid[0])            # our frequency rows, another length
        else:
            return layout, out
        patches = resize_grid(pos[:, N_PREFIX:], old, grid, crop=True)
        out["pos_embed"] = torch.cat([pos[:, :N_PREFIX], patches], dim=1)  # (1, 2+N, D)
    return layout, out
