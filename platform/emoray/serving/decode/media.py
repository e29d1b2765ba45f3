"""Format guards and JPEG frames for the Serve request decoders (:mod:`emoray.serving.decode`).

Checks made on an upload's bytes before a reader sees them: FIF files whose tag chain or
split-file references would make MNE loop or open other files, JPEG frames whose header
declares more pixels than :data:`MAX_JPEG_PIXELS` (decompression bombs) or frames of
different sizes; and the fast JPEG decode of a clip into one preallocated array.
"""

from __future__ import annotations

import struct

import numpy as np

from emoray.errors import DataError
from emoray.serving.decode.common import FORMAT_NAMES, _magic, short_reason  # noqa: F401

MAX_JPEG_PIXELS = 1 << 26


def _bad(source: str, field: str, reason: str, kind: str = "layout") -> DataError:
    return DataError(source, reason, kind=kind, field=field)



_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_FIF_SPLIT_KINDS = (117, 118)      # FIFF_REF_FILE_NUM, FIFF_REF_FILE_NAME: a split file


def check_fif(data: bytes) -> None:
    """Refuse FIF content MNE would loop on or that names other files (ValueError).

    MNE follows the tag chain (``next`` pointers) until it ends, and follows a split
    file's reference to the *next file* by name; a crafted upload could make either loop
    forever or open a server path. Real tags do not overlap, so a chain of more than
    ``len(data) / 16`` tags, or one that jumps back to a tag twice, is corrupt.
    """
    n, pos, steps, back_targets = len(data), 0, 0, set()
    while pos is not None and 0 <= pos <= n - 16:
        steps += 1
        if steps > n // 16:
            raise ValueError("corrupt FIF: its tag chain is longer than the file")
        kind, _, size, nxt = struct.unpack_from(">iIii", data, pos)
        if kind in _FIF_SPLIT_KINDS:
            raise ValueError("split FIF files (references to other files) are not "
                             "accepted; upload one self-contained recording")
        nxt_pos = pos + 16 + size if nxt == 0 else (nxt if nxt > 0 else None)
        if pos == 0 and nxt_pos is not None and 0 < nxt_pos <= n - 20:
            ptr_kind, _, _, _, dir_pos = struct.unpack_from(">iIiii", data, nxt_pos)
            if ptr_kind == 101 and 0 < dir_pos <= n - 16:      # FIFF_DIR_POINTER
                _check_fif_directory(data, dir_pos)
        if nxt_pos is not None and nxt_pos <= pos:     # every loop has a backward step
            if nxt_pos in back_targets:
                raise ValueError("corrupt FIF: its tag chain loops")
            back_targets.add(nxt_pos)
        pos = nxt_pos


def _check_fif_directory(data: bytes, at: int) -> None:
    _, type_, size, _ = struct.unpack_from(">iIii", data, at)
    if type_ != 32 or size <= 0:                # FIFFT_DIR_ENTRY_STRUCT
        return
    count = min(size, len(data) - at - 16) // 16
    kinds = np.frombuffer(data, ">i4", count=4 * count, offset=at + 16)[::4]
    if np.isin(kinds, _FIF_SPLIT_KINDS).any():
        raise ValueError("split FIF files (references to other files) are not accepted; "
                         "upload one self-contained recording")


def jpeg_size(blob: bytes, source: str, field: str) -> tuple[int, int]:
    """``(width, height)`` from a JPEG's frame header, without decoding."""
    if blob[:3] != b"\xff\xd8\xff":
        found = FORMAT_NAMES.get(_magic(blob) or "", "unrecognised content")
        raise _bad(source, field, f"not a JPEG ({found}); expected one JPEG image per frame",
                   "unknown_format")
    i, n = 2, len(blob)
    while i + 4 <= n:
        if blob[i] != 0xFF:
            break
        marker = blob[i + 1]
        if marker == 0xFF:                               # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:     # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):                       # end / scan before a frame header
            break
        length = int.from_bytes(blob[i + 2:i + 4], "big")
        if marker in _SOF and i + 9 <= n:
            height = int.from_bytes(blob[i + 5:i + 7], "big")
            width = int.from_bytes(blob[i + 7:i + 9], "big")
            if width and height:
                return width, height
            break
        if length < 2:
            break
        i += 2 + length
    raise _bad(source, field, "truncated or corrupt JPEG: no valid frame header",
               "unreadable")


def decode_frames(blobs: list[bytes], where: list[tuple[str, str]],
                  max_side: int, max_pixels: int | None = None) -> np.ndarray:
    """JPEG blobs -> ``(N, H, W, 3)`` uint8 RGB, scaled so the longer side <= ``max_side``.

    ``where[i]`` is the ``(source, field)`` named when frame ``i`` is bad; more than
    ``max_pixels`` source pixels over all frames are refused before any is decoded.
    """
    import torch
    import torchvision.io as tvio

    sizes = [jpeg_size(b, *w) for b, w in zip(blobs, where)]
    width, height = sizes[0]
    for (w, h), (source, field) in zip(sizes, where):
        if (w, h) != (width, height):
            raise _bad(source, field, f"frame size {w}x{h} differs from the first frame's "
                       f"{width}x{height}; expected frames of one size")
    if width * height > MAX_JPEG_PIXELS:
        raise _bad(where[0][0], where[0][1], f"frames of {width}x{height} pixels; the limit is "
                   f"{MAX_JPEG_PIXELS} pixels per frame")
    check_pixels(len(blobs), width, height, max_pixels, *where[0])
    out_w, out_h = fit_size(width, height, max_side)
    resize = (out_w, out_h) != (width, height)
    out = np.empty((len(blobs), out_h, out_w, 3), dtype=np.uint8)       # (N, H', W', 3)
    for i, (blob, (source, field)) in enumerate(zip(blobs, where)):
        try:   # torchvision's decoder, as emoray.io.video.decode_jpeg (whose stacking is slow)
            image = tvio.decode_jpeg(torch.frombuffer(bytearray(blob), dtype=torch.uint8),
                                     mode=tvio.ImageReadMode.RGB)          # (3, H, W)
            frame = image.numpy().transpose(1, 2, 0)                       # (H, W, 3) view
            if frame.shape[:2] != (height, width):
                raise ValueError(f"decoded size {frame.shape[1]}x{frame.shape[0]} differs "
                                 f"from the header's {width}x{height}")
            out[i] = _resize(frame, out_h, out_w) if resize else frame
        except Exception as exc:   # libjpeg errors surface as RuntimeError/ValueError
            raise _bad(source, field, f"cannot decode JPEG: {short_reason(exc)}",
                       "unreadable") from None
    return out


def check_pixels(n: int, width: int, height: int, max_pixels: int | None, source: str,
                 field: str) -> None:
    """Refuse ``n`` frames of ``width x height`` over the request's pixel budget."""
    if max_pixels is not None and n * width * height > max_pixels:
        raise _bad(source, field, f"{n} frames of {width}x{height} are "
                   f"{n * width * height / 1e6:.0f} million pixels to decode; the limit is "
                   f"{max_pixels / 1e6:.0f} million per request (serve.max_pixels): send "
                   "fewer or smaller frames")


def fit_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """``(width, height)`` scaled so the longer side is at most ``max_side``."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    import torch
    from torchvision.transforms.v2 import functional as TF

    with torch.no_grad():
        image = TF.resize(torch.from_numpy(frame.transpose(2, 0, 1)), [height, width],
                          antialias=True)                                  # (3, H', W')
    return image.numpy().transpose(1, 2, 0)                                # (H', W', 3)
