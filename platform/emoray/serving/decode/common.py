"""What the request decoders share: accepted formats, limits, uploads, the small checks
of numbers, rates and base64, and format sniffing from a part's first bytes."""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np

from emoray.errors import DataError

MODALITIES = ("eeg", "speech", "video")
#: Accepted file formats per modality (multipart parts, ``speech.audio_base64``).
MODALITY_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "eeg": (".edf", ".bdf", ".fif"), "speech": (".wav", ".flac"),
    "video": (".mp4", ".jpg", ".jpeg")}
FORMAT_NAMES = {".edf": "EDF", ".bdf": "BDF", ".fif": "FIF", ".wav": "WAV", ".flac": "FLAC",
                ".mp4": "MP4", ".jpg": "JPEG", ".jpeg": "JPEG"}
#: A JPEG frame of more pixels is refused before decoding (a tiny file can declare 65535^2).
_KEYS = {"": MODALITIES, "eeg": ("data", "sfreq", "ch_names"),
         "speech": ("samples", "sample_rate", "audio_base64"),
         "video": ("frames_base64", "fps")}
#: Form fields of a multipart request: the frame rate of JPEG frames, and what describes an
#: array part (:mod:`emoray.serving.decode.arrays`).
_FORM_FIELDS = ("video_fps", "eeg_sfreq", "eeg_ch_names", "eeg_dtype", "eeg_shape",
                "speech_sample_rate", "speech_dtype", "speech_shape", "video_dtype",
                "video_shape")
_NEEDS = {"eeg": "data + sfreq + ch_names", "speech": "samples + sample_rate, or "
          "audio_base64", "video": "frames_base64 (+ fps)"}
_A = {"eeg": "an EEG", "speech": "a speech", "video": "a video"}
_TAKES = {"eeg": "an EDF, BDF or FIF file", "speech": "a WAV or FLAC file",
          "video": "one MP4 file or JPEG frames"}
_EXT_MODALITY = {ext: m for m, exts in MODALITY_EXTENSIONS.items() for ext in exts}
_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
               float: "number", type(None): "null"}


@dataclass(frozen=True)
class DecodeLimits:
    """What one request may hold (a modality over a limit is refused, ``kind="layout"``)."""

    max_seconds: float = 120.0     # longest recording per modality accepted
    max_channels: int = 256
    max_frames: int = 3000         # video frames after decoding
    max_video_side: int = 1024     # decoded frames are scaled so the longer side <= this
    max_array_bytes: int = 32 << 20   # array parts once decoded (an .npz inflates)
    #: source pixels decoded per request, all frames together (caps bound size, this bounds
    #: work: 60 progressive 8000 x 8000 JPEGs fit the body cap and take ~40 s to decode)
    max_pixels: int = 500_000_000


@dataclass
class Upload:
    """One multipart file part."""

    field: str                     # form field name: "eeg" | "speech" | "video"
    filename: str | None
    data: bytes
    content_type: str | None = None


_CPP_PREFIX = re.compile(r"^.*?\.(cpp|cc|c|h):\d+,?\s*")


def short_reason(exc: BaseException) -> str:
    """The first line of an exception's message (no C++ source path), at most 200 chars."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = _CPP_PREFIX.sub("", lines[0]) if lines else ""
    text = text or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# -- small helpers --------------------------------------------------------------------------

def _bad(source: str, field: str, reason: str, kind: str = "layout") -> DataError:
    return DataError(source, reason, kind=kind, field=field)


def _jtype(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _show(value: Any, width: int = 60) -> str:
    """A short rendering of a user value for messages."""
    if isinstance(value, (list, dict)):
        return f"{_jtype(value)} of {len(value)} item(s)"
    try:
        text = repr(value)
    except ValueError:                       # ints beyond Python's str() digit limit
        return "a number too large to show"
    return text if len(text) <= width else text[:width - 3] + "..."


def _positive(value: Any, source: str, field: str, *, kind: str = "sample_rate",
              integer: bool = False) -> float:
    """A finite number > 0 (a whole number when ``integer``); bools are refused."""
    what = "a whole number > 0" if integer else "a number > 0"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        got = _show(value) if isinstance(value, (list, dict)) else \
            f"{_jtype(value)} {_show(value)}"
        raise _bad(source, field, f"expected {what}, got {got}", kind)
    try:
        x = float(value)
    except OverflowError:
        raise _bad(source, field, f"expected {what}, got a number too large",
                   kind) from None
    if not math.isfinite(x) or x <= 0 or (integer and x != int(x)):
        raise _bad(source, field, f"expected {what}, got {_show(value)}", kind)
    return x


def _limit_seconds(seconds: float, limits: DecodeLimits, source: str, field: str) -> None:
    if seconds > limits.max_seconds:
        raise _bad(source, field, f"{seconds:.1f} s long; the limit is "
                   f"{limits.max_seconds:g} s per modality")


def _limit(count: int, most: int, what: str, source: str, field: str) -> None:
    if count > most:
        raise _bad(source, field, f"{count} {what}; the limit is {most}")


def _numbers(rows: list[list], source: str, field: str, dtype: type,
             matrix: bool) -> np.ndarray:
    """Rows of JSON numbers (checked to be equal-length lists) -> a finite ``dtype`` array,
    ``(len(rows), n)`` when ``matrix`` else ``(n,)`` from the one row."""
    for i, row in enumerate(rows):
        odd = set(map(type, row)) - {int, float}   # C-speed scan; catches bool, str, null...
        if odd:
            where = f" (row {i})" if matrix else ""
            names = sorted({_JSON_TYPES.get(t, t.__name__) for t in odd})
            raise _bad(source, field, f"expected numbers only, found {', '.join(names)}"
                       f"{where}", "invalid_value")
    try:
        arr = np.array(rows if matrix else rows[0], dtype=np.float64)
    except (OverflowError, ValueError, TypeError) as exc:    # ints beyond float range
        raise _bad(source, field, f"numbers out of range ({short_reason(exc)})",
                   "invalid_value") from None
    if dtype is not np.float64:
        with np.errstate(over="ignore"):
            arr = arr.astype(dtype)                   # beyond float32 -> inf, refused below
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise _bad(source, field, f"{bad} NaN/inf or out-of-range value(s); expected finite "
                   "numbers", "invalid_value")
    return arr


def _channel_names(names: Any, n_rows: int, source: str, field: str,
                   data_field: str = "eeg.data") -> list[str]:
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _bad(source, field, f"expected an array of strings, got {_show(names)}")
    if len(names) != n_rows:
        raise _bad(source, field, f"{len(names)} names for {n_rows} rows of {data_field}; "
                   "expected one name per row")
    seen: dict[str, str] = {}
    for name in names:
        key = name.strip().lower()
        if not key:
            raise _bad(source, field, "empty channel name")
        if key in seen:
            raise _bad(source, field, f"duplicate channel names {_show(seen[key])} and "
                       f"{_show(name)} (names are compared case-insensitively)")
        seen[key] = name
    return list(names)


def _b64(value: Any, source: str, field: str) -> bytes:
    if not isinstance(value, str):
        raise _bad(source, field, f"expected a base64 string, got {_jtype(value)}")
    try:
        blob = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad(source, field, f"not valid base64: {exc}", "unreadable") from None
    if not blob:
        raise _bad(source, field, "empty data; expected a whole file", "truncated")
    return blob


# -- format sniffing ----------------------------------------------------------------------------------

def _magic(data: bytes) -> str | None:
    """The extension of a format recognised by its first bytes, else None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return ".wav"
    if data[:4] == b"fLaC":
        return ".flac"
    if data[:8] == b"\xffBIOSEMI":
        return ".bdf"
    if data[:8] == b"0       ":
        return ".edf"
    if data[:12] == b"\x00\x00\x00\x64\x00\x00\x00\x1f\x00\x00\x00\x14":  # FIFF_FILE_ID tag
        return ".fif"
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[4:8] == b"ftyp":
        return ".mp4"
    return None


def _extension(filename: str | None) -> str:
    if not filename:
        return ""
    name = PureWindowsPath(filename).name     # browsers may send C:\dir\rec.edf
    return Path(name).suffix.lower() if "." in name else ""


def _accepted() -> str:
    return ("; ".join(f"{m}: {', '.join(e)}" for m, e in MODALITY_EXTENSIONS.items())
            + "; or an array: .npy, .npz, or raw bytes with <modality>_dtype and "
            "<modality>_shape")


def _sniff(data: bytes, filename: str | None, source: str,
           field: str | None) -> tuple[str, str]:
    ext, magic = _extension(filename), _magic(data)
    if ext in _EXT_MODALITY:
        if magic is not None and FORMAT_NAMES[magic] != FORMAT_NAMES[ext]:
            raise DataError(source, f"named {ext} but the content is {FORMAT_NAMES[magic]}",
                            kind="unknown_format", field=field)
        return _EXT_MODALITY[ext], ext
    if magic is None:
        told = f"extension {ext!r}" if ext else "no extension"
        raise DataError(source, f"unknown file format ({told}, unrecognised content); "
                        f"expected {_accepted()}", kind="unknown_format", field=field)
    return _EXT_MODALITY[magic], magic


def sniff(data: bytes, filename: str | None) -> tuple[str, str]:
    """The modality and format of a file: by its known extension, else by its first bytes.

    Parameters
    ----------
    data : bytes
        The file's content.
    filename : str | None
        Its name as uploaded.

    Returns
    -------
    tuple[str, str]
        ``(modality, extension)``, e.g. ``("eeg", ".edf")``; JPEG is ``.jpg`` or ``.jpeg``.

    Raises
    ------
    DataError
        ``unknown_format``: neither the extension nor the content is known, or the
        content is another known format than the extension says.
    """
    return _sniff(data, filename, _upload_source(filename, "file"), None)


def _upload_source(filename: str | None, field: str) -> str:
    if filename:
        return f"upload {PureWindowsPath(filename).name!r}"
    return f"upload in field {field!r}"
