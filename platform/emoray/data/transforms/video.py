"""Video preprocessing for one segment: pick frames, centre-crop, resize, normalise.

Frame choice follows EAV: from a 5 s clip at 30 fps (150 frames) every 6th frame gives 25.
In general frame ``i`` of ``n`` is ``floor(i * T / n)``: evenly spaced from the first
frame, repeating frames when the clip has fewer than ``n``. Frames are centre-cropped to a
square (the face sits in the middle), resized with antialiasing on ``uint8`` (torchvision's
fast path), then scaled to [0, 1] and normalised with the contract's mean and std.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torchvision.io
from torchvision.transforms.v2 import functional as F

from emoray.config.contract import VideoContract
from emoray.errors import DataError


def frame_indices(n_available: int, n_frames: int) -> np.ndarray:
    """Indices of ``n_frames`` frames evenly spaced over ``n_available`` (``(n_frames,)``)."""
    return (np.arange(n_frames, dtype=np.int64) * n_available) // n_frames


def preprocess_video(frames: np.ndarray, c: VideoContract, *, normalize: bool = True,
                     source: str | None = None) -> dict[str, np.ndarray]:
    """Turn a clip of RGB frames into the model's frame stack.

    Parameters
    ----------
    frames : np.ndarray
        ``(T, H, W, 3)`` uint8 RGB.
    c : VideoContract
        The parameters.
    normalize : bool
        ``False`` stops before the float conversion and returns the resized frames as
        ``uint8`` (4x smaller to store); :func:`normalize_video` finishes them later.
    source : str, optional
        The file the clip came from, named in errors.

    Returns
    -------
    dict
        ``video`` ``(n_frames, 3, size, size)`` float32, ``(x / 255 - mean) / std``
        (``uint8`` when ``normalize`` is false).

    Raises
    ------
    DataError
        ``layout`` for a wrong shape or dtype, ``truncated`` for an empty clip (field
        ``video``).
    """
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise DataError(source, f"expected (frames, height, width, 3) uint8 RGB, got shape "
                        f"{arr.shape} dtype {arr.dtype}", kind="layout", field="video")
    if arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise DataError(source, f"empty clip of shape {arr.shape}; expected frames",
                        kind="truncated", field="video")
    chosen = np.ascontiguousarray(arr[frame_indices(arr.shape[0], c.n_frames)])
    clip = torch.from_numpy(chosen).permute(0, 3, 1, 2)              # (N, 3, H, W) uint8
    return {"video": _finish([clip], c, normalize)}


def preprocess_video_jpeg(blobs: Sequence[bytes], c: VideoContract, *,
                          normalize: bool = True,
                          source: str | None = None) -> dict[str, np.ndarray]:
    """Like :func:`preprocess_video` for a clip stored as one JPEG per frame.

    Only the frames that :func:`frame_indices` picks are decoded
    (``torchvision.io.decode_jpeg``, forced to RGB).

    Parameters
    ----------
    blobs : sequence of bytes-like
        The clip's frames as JPEG files, in time order.
    c : VideoContract
        The parameters.
    normalize : bool
        As in :func:`preprocess_video`.
    source : str, optional
        The file the clip came from, named in errors.

    Raises
    ------
    DataError
        ``truncated`` for no frames, ``unreadable`` when a frame is not a decodable JPEG.
    """
    if len(blobs) == 0:
        raise DataError(source, "no JPEG frames; expected at least one", kind="truncated",
                        field="video")
    idx = frame_indices(len(blobs), c.n_frames)
    unique = sorted(set(idx.tolist()))
    try:
        data = [torch.from_numpy(np.frombuffer(blobs[i], dtype=np.uint8).copy())
                for i in unique]
        decoded = torchvision.io.decode_jpeg(data, mode=torchvision.io.ImageReadMode.RGB)
    except (RuntimeError, TypeError, ValueError) as err:
        raise DataError(source, f"cannot decode JPEG frames: {err}", kind="unreadable",
                        field="video") from None
    by_index = dict(zip(unique, decoded))
    return {"video": _finish([by_index[i][None] for i in idx.tolist()], c, normalize)}


def normalize_video(frames: np.ndarray, c: VideoContract) -> np.ndarray:
    """``(x / 255 - mean) / std`` of ``(..., 3, H, W)`` uint8 frames, as float32."""
    x = torch.tensor(np.asarray(frames))      # a copy: Arrow-backed arrays are read-only
    mean = torch.tensor(c.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(c.std, dtype=torch.float32).view(3, 1, 1)
    return ((x.float() / 255.0 - mean) / std).numpy()


def _finish(clips: list[torch.Tensor], c: VideoContract, normalize: bool) -> np.ndarray:
    """Crop, resize (and normalise) ``(n, 3, H, W)`` uint8 pieces into one stack.

    Pieces of equal size are processed as one batch (the usual case: a single piece).
    """
    squares = [_centre_square(x) for x in clips]
    if len({tuple(x.shape[-2:]) for x in squares}) == 1:
        squares = [torch.cat(squares)] if len(squares) > 1 else squares
    out = torch.cat([_resize(x, c.size) for x in squares])            # (N, 3, S, S) uint8
    return normalize_video(out.numpy(), c) if normalize else out.numpy()


def _centre_square(x: torch.Tensor) -> torch.Tensor:
    """The central ``min(H, W)`` square of ``(n, 3, H, W)``."""
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return x[..., top:top + s, left:left + s]


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize of square ``(n, 3, s, s)`` uint8 to ``size``."""
    if x.shape[-1] == size:
        return x.contiguous()
    return F.resize(x.contiguous(), [size, size], antialias=True)
