"""ViT over video frames (Dosovitskiy et al. 2021), with frame tokens pooled over time.

Every frame of a clip ``(B, N, 3, S, S)`` goes through the same (shared-weight) Vision
Transformer of Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image
Recognition at Scale" (ICLR 2021): ``patch x patch`` patches embedded by a convolution, a
[CLS] token, learned 2-D positions, pre-norm blocks and a final LayerNorm. The backbone is
timm's :class:`~timm.models.vision_transformer.VisionTransformer`, the field's reference
implementation, so that published ViT weights in timm's key layout load unchanged
(:meth:`VideoViT.load_weights`). timm has no video head, so the temporal part is ours: the
per-frame [CLS] outputs are the frame tokens ``(B, N, D)``, learned temporal positions are
added, a small temporal transformer (``temporal_depth`` blocks, may be 0) runs over them
and attention pooling over time gives the clip embedding ``(B, D)``.

Frames must already be float and normalised with the contract's mean/std (as the
preprocessing contract does at load time); a ``uint8`` batch raises :class:`ValueError`.
Published weights expect their own normalisation (e.g. mean = std = 0.5 for timm's
``augreg`` ViTs): set the contract's mean/std to match before fine-tuning from them.

Examples
--------
>>> from emoray.models import create_encoder
>>> enc = create_encoder("vit", "tiny", n_frames=4, size=64)
>>> out = enc(torch.randn(2, 4, 3, 64, 64))
>>> out.tokens.shape, out.pooled.shape
(torch.Size([2, 4, 32]), torch.Size([2, 32]))
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse
from urllib.request import url2pathname

import torch
from torch import nn

from emoray.errors import ConfigError
from emoray.models.base import BaseEncoder, EncoderOutput
from emoray.models.layers import (AttentionPool, PositionalEmbedding, TransformerStack,
                                  check_dropout, check_input, check_positive,
                                  check_transformer, init_weights)
from emoray.models.registry import register_encoder

#: our state-dict prefix of the per-frame timm backbone
_BACKBONE = "backbone."
#: timm checkpoint keys that have no counterpart here (the classifier)
_IGNORED = ("head.",)


@register_encoder
class VideoViT(BaseEncoder):
    """Shared per-frame timm ViT ([CLS] per frame) + temporal transformer + attention pool.

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
        Dropout after the positions, on the blocks' projections and on the frame tokens.
    attn_dropout : float
        Dropout on the backbone's attention weights.
    drop_path : float
        Stochastic depth rate of the backbone (timm's ``drop_path_rate``).

    Notes
    -----
    ``base`` is ViT-S/16's backbone (``vit_small_patch16_224``'s weights load into it at
    ``size=224``); ``small`` has ViT-Ti/16's width and heads at a third of its depth
    (``depth=12`` loads ``vit_tiny_patch16_224``).
    """

    name: ClassVar[str] = "vit"
    modality: ClassVar[str] = "video"
    input_column: ClassVar[str] = "video"
    contract_fields: ClassVar[tuple[str, ...]] = ("n_frames", "size")
    #: a small contract the registry test builds every preset with
    example: ClassVar[dict[str, Any]] = {"n_frames": 3, "size": 64}
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(dim=32, depth=2, heads=2, patch=32, temporal_depth=1, mlp_ratio=2.0,
                     dropout=0.1, attn_dropout=0.0, drop_path=0.0),
        "small": dict(dim=192, depth=4, heads=3, patch=16, temporal_depth=1, mlp_ratio=4.0,
                      dropout=0.1, attn_dropout=0.0, drop_path=0.1),
        "base": dict(dim=384, depth=12, heads=6, patch=16, temporal_depth=2, mlp_ratio=4.0,
                     dropout=0.1, attn_dropout=0.0, drop_path=0.1),
    }

    def __init__(self, n_frames: int, size: int, dim: int, depth: int, heads: int,
                 patch: int, temporal_depth: int = 1, mlp_ratio: float = 4.0,
                 dropout: float = 0.1, attn_dropout: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        check_positive(self.name, n_frames=n_frames, size=size, patch=patch)
        check_transformer(self.name, dim, heads, depth, mlp_ratio, dropout)
        check_dropout(self.name, attn_dropout)
        check_dropout(self.name, drop_path)
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
        # timm is imported where it is used, as in the AST (emoray.models.ast): importing
        # the encoder registry stays cheap for processes that build no ViT
        from timm.models.vision_transformer import VisionTransformer

        self.backbone = VisionTransformer(
            img_size=size, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads,
            mlp_ratio=mlp_ratio, class_token=True, global_pool="token", num_classes=0,
            drop_rate=dropout, pos_drop_rate=dropout, proj_drop_rate=dropout,
            attn_drop_rate=attn_dropout, drop_path_rate=drop_path)
        self.time_pos = PositionalEmbedding(n_frames, dim)
        self.temporal = TransformerStack(dim, temporal_depth, heads, mlp_ratio, dropout)
        self.pool = AttentionPool(dim, heads)
        self.temporal.apply(init_weights)       # the backbone keeps timm's own init
        self.pool.apply(init_weights)

    @property
    def patch_embed(self) -> nn.Module:
        """The first layer: the backbone's patch embedding (timm ``PatchEmbed``)."""
        return self.backbone.patch_embed

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
        cls = self.backbone(x.flatten(0, 1))                 # (B*N, D) normed [CLS]
        frames = cls.reshape(b, n, self.dim)                 # (B, N, D)
        tokens = self.temporal(self.time_pos(frames))        # (B, N, D)
        return EncoderOutput(tokens=tokens, pooled=self.pool(tokens))

    # -- weight files ---------------------------------------------------------------------

    def load_weights(self, path: str | Path, *, strict: bool = True) -> "VideoViT":
        """Load our own weight file, or a timm ViT state dict into the per-frame backbone.

        Parameters
        ----------
        path : str or Path
            A local file or a ``file://`` URI: a file from :meth:`save_weights`, or a timm
            ``VisionTransformer`` state dict (``.pth`` via :func:`torch.save`, or
            ``.safetensors``). Nothing is downloaded.
        strict : bool
            Refuse missing or unexpected keys (wrong shapes are always refused).

        Returns
        -------
        VideoViT
            ``self``.

        Raises
        ------
        ConfigError
            Naming the file and the keys, for an unreadable file, another encoder's file,
            or missing/unexpected/wrong-shape keys. Everything is checked before any weight
            is copied, so a failed load leaves the model unchanged.

        Notes
        -----
        In a timm file the classifier (``head.*``) is ignored, the position table is
        resampled when the file's patch grid differs from ours, and the patch kernel is
        resampled when the file's patch size differs (FlexiViT's pseudo-inverse resize).
        The temporal part keeps its current weights.
        """
        file = _local_file(path)
        state = _read_state(file, self.name)
        own = self.state_dict()
        if _is_timm_layout(state):
            state = self._from_timm(state, file, strict)
            state = {**{k: v for k, v in own.items() if not k.startswith(_BACKBONE)},
                     **{_BACKBONE + k: v for k, v in state.items()}}
        missing = [k for k in own if k not in state] if strict else []
        unexpected = [k for k in state if k not in own] if strict else []
        self._check(file, own, state, missing, unexpected)
        # validated: cast every tensor first, then copy them all (nothing half-loaded)
        ready = {k: v.to(own[k].dtype) for k, v in state.items() if k in own}
        self.load_state_dict({**own, **ready}, strict=True)
        return self

    def _from_timm(self, state: dict[str, torch.Tensor], file: Path,
                   strict: bool = True) -> dict[str, torch.Tensor]:
        """Map a timm state dict onto our backbone's keys (no prefix), resampled to fit."""
        from timm.layers import resample_abs_pos_embed, resample_patch_embed

        state = {k: v for k, v in state.items() if not k.startswith(_IGNORED)}
        own = self.backbone.state_dict()
        pos, kernel = state.get("pos_embed"), state.get("patch_embed.proj.weight")
        if pos is not None and pos.ndim == 3 and pos.shape != own["pos_embed"].shape \
                and pos.shape[-1] == self.dim:
            grid = math.isqrt(pos.shape[1] - 1)
            if grid * grid != pos.shape[1] - 1:
                raise ConfigError(f"weights file {file}: pos_embed {tuple(pos.shape)} is "
                                  f"not a [CLS] token plus a square patch grid")
            side = self.size // self.patch
            state["pos_embed"] = resample_abs_pos_embed(
                pos.float(), new_size=[side, side], old_size=[grid, grid],
                num_prefix_tokens=1)                          # (1, 1 + side*side, D)
        want = own["patch_embed.proj.weight"].shape
        if kernel is not None and kernel.ndim == 4 and kernel.shape[:2] == want[:2] \
                and kernel.shape[2:] != want[2:]:
            state["patch_embed.proj.weight"] = resample_patch_embed(
                kernel.float(), new_size=[self.patch, self.patch])  # (D, 3, p, p)
        missing = [k for k in own if k not in state] if strict else []
        unexpected = [k for k in state if k not in own] if strict else []
        self._check(file, own, state, missing, unexpected, layout="timm ")
        return {k: v for k, v in state.items() if k in own}

    def _check(self, file: Path, own: dict[str, torch.Tensor],
               state: dict[str, torch.Tensor], missing: list[str], unexpected: list[str],
               layout: str = "") -> None:
        """Raise :class:`ConfigError` naming ``file`` and the keys that do not fit."""
        bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
               for k, v in state.items() if k in own and own[k].shape != v.shape]
        bad += [f"{k}: {v.dtype} is not a floating-point tensor"
                for k, v in state.items()
                if k in own and own[k].is_floating_point() and not v.is_floating_point()]
        if not (bad or missing or unexpected):
            return
        parts = [f"wrong shape {bad[:5]}" if bad else "",
                 f"missing {missing[:5]}" if missing else "",
                 f"unexpected {unexpected[:5]}" if unexpected else ""]
        raise ConfigError(f"{layout}weights file {file} does not fit {self.name} "
                          f"({getattr(self, '_config', {})}): "
                          + "; ".join(p for p in parts if p) + "; the model is unchanged")


# -- reading weight files -------------------------------------------------------------------

def _local_file(path: str | Path) -> Path:
    """A local path from a path or a ``file://`` URI; other schemes are refused."""
    if isinstance(path, str):
        url = urlparse(path)
        if url.scheme == "file":
            if url.netloc not in ("", "localhost"):
                raise ConfigError(f"weights URI {path!r}: only local file:// URIs are read")
            path = url2pathname(url.path)
        elif len(url.scheme) > 1:                 # one letter: a Windows drive
            raise ConfigError(f"weights {path!r}: only local files and file:// URIs are "
                              f"read; nothing is downloaded")
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"weights file {file} not found")
    return file


def _read_state(file: Path, encoder: str) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` or torch file (our wrapper or a bare state dict)."""
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file
            blob: Any = load_file(str(file), device="cpu")
        else:
            blob = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:      # torch and safetensors raise several types
        raise ConfigError(f"weights file {file} is not a checkpoint "
                          f"({type(exc).__name__}: {exc})") from None
    if isinstance(blob, dict) and blob.get("encoder") not in (None, encoder):
        raise ConfigError(f"weights file {file} holds encoder {blob['encoder']!r}, "
                          f"not {encoder!r}")
    for wrapper in ("state_dict", "model"):     # ours / timm's train.py, a bare model dict
        if isinstance(blob, dict) and isinstance(blob.get(wrapper), dict):
            blob = blob[wrapper]
            break
    if not isinstance(blob, dict) or not blob:
        raise ConfigError(f"weights file {file}: expected a state dict")
    odd = [k for k, v in blob.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise ConfigError(f"weights file {file}: entries {odd[:5]} are not tensors")
    if all(k.startswith("module.") for k in blob):          # saved from DataParallel
        blob = {k[len("module."):]: v for k, v in blob.items()}
    return blob


def _is_timm_layout(state: dict[str, torch.Tensor]) -> bool:
    """A timm ViT state dict: its own top-level names, none of ours."""
    return not any(k.startswith(_BACKBONE) for k in state) \
        and any(k in state for k in ("pos_embed", "cls_token", "patch_embed.proj.weight"))
