"""Request bodies of ``POST /v1/predict`` -> model inputs, refusing bad input by field.

Both decoders return ``{"eeg": EEGInput | None, "speech": SpeechInput | None,
"video": VideoInput | None}`` (:mod:`emoray.infer`) and raise nothing but
:class:`~emoray.errors.DataError`, whose ``field`` is the request field in dotted form
(``eeg.sfreq``, ``video.frames_base64[3]``, ``body``, ``input``) and whose ``path`` is
``"request"`` for JSON or ``"upload 'rec.edf'"`` for a file part (never a temporary path).

JSON (``application/json``)::

    {"eeg":    {"data": [[float, ...], ...] (channels x samples, volts), "sfreq": number > 0,
                "ch_names": [str, ...] (one per row)},
     "speech": {"samples": [float, ...] (mono, [-1, 1]), "sample_rate": int > 0}
               or {"audio_base64": str}   (a whole WAV or FLAC file, base64),
     "video":  {"frames_base64": [str, ...] (one JPEG per frame), "fps": number > 0 | null}}

Any non-empty subset of the three keys; ``null`` is the same as an absent key. Unknown keys,
non-numbers in arrays, ragged or 3-D arrays, NaN/inf, bad rates, non-string or duplicate
(case-insensitive) channel names, bad base64 and blobs of the wrong format are refused.

Multipart (``multipart/form-data``)
    File parts ``eeg`` (one EDF, BDF or FIF), ``speech`` (one WAV or FLAC) and ``video``
    (one MP4, or JPEG frames in part order), plus the optional form field ``video_fps``
    (frame rate of JPEG frames). A part's format comes from its filename extension, else
    from its first bytes (:func:`sniff`); files are read with :mod:`emoray.io` from a
    temporary folder that is removed before returning.

Limits (:class:`DecodeLimits`) bound the duration of each modality, the EEG channel count
and the video frame count; they are checked on headers before samples are decoded where
the format allows. Output arrays: EEG ``(C, T)`` float64 from JSON, float32 from files;
speech ``(T,)`` float32; video ``(N, H, W, 3)`` uint8 RGB, longer side <= ``max_video_side``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import TYPE_CHECKING, Any

import numpy as np

from emoray.errors import DataError
from emoray.serving.media import (MAX_JPEG_PIXELS, check_fif, decode_frames,  # noqa: F401
                                   jpeg_size, short_reason)

if TYPE_CHECKING:
    from emoray.infer import EEGInput, SpeechInput, VideoInput

__all__ = ["DecodeLimits", "Upload", "MODALITY_EXTENSIONS", "decode_json", "decode_object",
           "decode_multipart", "sniff"]

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
_FORM_FIELDS = ("video_fps",)
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


@dataclass
class Upload:
    """One multipart file part."""

    field: str                     # form field name: "eeg" | "speech" | "video"
    filename: str | None
    data: bytes
    content_type: str | None = None


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


# -- JSON -----------------------------------------------------------------------------------

def decode_json(body: bytes | str, limits: DecodeLimits = DecodeLimits()) -> dict[str, Any]:
    """Decode a JSON request body (schema in the module docstring).

    Parameters
    ----------
    body : bytes | str
        The raw body (UTF-8/16/32).
    limits : DecodeLimits
        Size limits.

    Returns
    -------
    dict
        ``{"eeg": EEGInput | None, "speech": SpeechInput | None, "video": VideoInput | None}``
        with at least one modality.

    Raises
    ------
    DataError
        ``field="body"`` when the body is not a JSON object, else the offending field.
    """
    try:
        obj = json.loads(body)
    except (ValueError, TypeError, RecursionError) as exc:  # JSON, encoding, depth, digits
        raise _bad("request", "body", f"not valid JSON ({short_reason(exc)}); expected an "
                   "object with keys eeg, speech, video", "unreadable") from None
    return decode_object(obj, limits)


def decode_object(obj: Any, limits: DecodeLimits = DecodeLimits()) -> dict[str, Any]:
    """Decode an already parsed JSON request (as :func:`decode_json`)."""
    if not isinstance(obj, dict):
        raise _bad("request", "body", f"expected a JSON object with keys {list(MODALITIES)}, "
                   f"got {_jtype(obj)}")
    _unknown_keys(obj, "")
    out: dict[str, Any] = {m: None for m in MODALITIES}
    for name, decode in (("eeg", _json_eeg), ("speech", _json_speech),
                         ("video", _json_video)):
        value = obj.get(name)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise _bad("request", name, f"expected an object with keys {list(_KEYS[name])} "
                       f"or null, got {_jtype(value)}")
        _unknown_keys(value, name)
        out[name] = decode({k: v for k, v in value.items() if v is not None}, limits)
    if all(v is None for v in out.values()):
        raise _bad("request", "input", "no modality given; expected at least one of eeg, "
                   "speech, video")
    return out


def _unknown_keys(obj: dict, prefix: str) -> None:
    allowed = _KEYS[prefix]
    for key in obj:
        if key not in allowed:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise _bad("request", where, f"unknown key {_show(key)}; expected keys "
                       f"{list(allowed)}")


def _need(obj: dict, prefix: str, key: str) -> Any:
    if key not in obj:
        raise _bad("request", f"{prefix}.{key}", f"missing; {prefix} needs {_NEEDS[prefix]}")
    return obj[key]


def _json_eeg(obj: dict, limits: DecodeLimits) -> EEGInput:
    from emoray.infer import EEGInput

    data, sfreq, names = (_need(obj, "eeg", k) for k in _KEYS["eeg"])
    rate = _positive(sfreq, "request", "eeg.sfreq")
    if not isinstance(data, list) or not data or not all(isinstance(r, list) for r in data):
        raise _bad("request", "eeg.data", "expected a non-empty array of channel rows "
                   "(channels x samples)")
    _limit(len(data), limits.max_channels, "channels", "request", "eeg.data")
    n = len(data[0])
    for i, row in enumerate(data):
        if len(row) != n:
            raise _bad("request", "eeg.data", f"ragged array: row {i} has {len(row)} "
                       f"samples, row 0 has {n}; expected equal rows")
    if n == 0:
        raise _bad("request", "eeg.data", "rows have zero samples", "truncated")
    _limit_seconds(n / rate, limits, "request", "eeg.data")
    ch_names = _channel_names(names, len(data), "request", "eeg.ch_names")
    return EEGInput(_numbers(data, "request", "eeg.data", np.float64, True), rate, ch_names)


def _channel_names(names: Any, n_rows: int, source: str, field: str) -> list[str]:
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _bad(source, field, f"expected an array of strings, got {_show(names)}")
    if len(names) != n_rows:
        raise _bad(source, field, f"{len(names)} names for {n_rows} rows of eeg.data; "
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


def _json_speech(obj: dict, limits: DecodeLimits) -> SpeechInput:
    from emoray.infer import SpeechInput

    if "audio_base64" in obj:
        if "samples" in obj or "sample_rate" in obj:
            raise _bad("request", "speech", "give either samples + sample_rate or "
                       "audio_base64, not both")
        blob = _b64(obj["audio_base64"], "request", "speech.audio_base64")
        with tempfile.TemporaryDirectory(prefix="emoray-decode-") as tmp:
            return _read_file(blob, None, "speech", "request", "speech.audio_base64",
                              Path(tmp), limits)
    samples = _need(obj, "speech", "samples")
    rate = _positive(_need(obj, "speech", "sample_rate"), "request", "speech.sample_rate",
                     integer=True)
    if not isinstance(samples, list):
        raise _bad("request", "speech.samples", f"expected an array of numbers (mono), got "
                   f"{_jtype(samples)}")
    if not samples:
        raise _bad("request", "speech.samples", "zero samples", "truncated")
    _limit_seconds(len(samples) / rate, limits, "request", "speech.samples")
    return SpeechInput(_numbers([samples], "request", "speech.samples", np.float32,
                                False),
                       int(rate))


def _json_video(obj: dict, limits: DecodeLimits) -> VideoInput:
    from emoray.infer import VideoInput

    blobs = _need(obj, "video", "frames_base64")
    fps = obj.get("fps")
    fps = None if fps is None else _positive(fps, "request", "video.fps")
    if not isinstance(blobs, list) or not blobs:
        raise _bad("request", "video.frames_base64", "expected a non-empty array of base64 "
                   f"JPEG strings, got {_show(blobs)}")
    _limit(len(blobs), limits.max_frames, "frames", "request", "video.frames_base64")
    fields = [f"video.frames_base64[{i}]" for i in range(len(blobs))]
    data = [_b64(b, "request", f) for b, f in zip(blobs, fields)]
    frames = decode_frames(data, [("request", f) for f in fields], limits.max_video_side)
    if fps is not None:
        _limit_seconds(len(data) / fps, limits, "request", "video.frames_base64")
    return VideoInput(frames, fps)


# -- files ----------------------------------------------------------------------------------

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
    return "; ".join(f"{m}: {', '.join(e)}" for m, e in MODALITY_EXTENSIONS.items())


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


def _scrub(text: str, path: Path, shown: str) -> str:
    """Replace the temporary path in a reader's message by the uploaded name."""
    return text.replace(str(path), shown).replace(str(path.parent), "<upload>")


def _read_file(data: bytes, filename: str | None, modality: str, source: str, field: str,
               tmp: Path, limits: DecodeLimits) -> Any:
    """Sniff, check against ``modality``, write to ``tmp`` and read with emoray.io."""
    from emoray.infer import EEGInput, SpeechInput, VideoInput
    from emoray.io.audio import audio_header, read_audio
    from emoray.io.eeg import eeg_header, read_eeg
    from emoray.io.video import read_video, video_header

    if not data:
        raise _bad(source, field, "empty file", "truncated")
    kind, ext = _sniff(data, filename, source, field)
    if kind != modality or ext in (".jpg", ".jpeg"):
        raise _bad(source, field, f"{FORMAT_NAMES[ext]} is {_A[kind]} format; {field} takes "
                   f"{_TAKES[modality]}", "unknown_format")
    path = tmp / f"{modality}{ext}"
    path.write_bytes(data)
    shown = PureWindowsPath(filename).name if filename else field
    try:
        if modality == "eeg":
            if ext == ".fif":
                check_fif(data)
            names, sfreq, n_times = eeg_header(path)       # limits before loading samples
            _limit(len(names), limits.max_channels, "channels", source, field)
            _limit_seconds(n_times / sfreq, limits, source, field)
            eeg = read_eeg(path)                                             # (C, T) f32
            _channel_names(eeg.ch_names, eeg.data.shape[0], source, field)
            return EEGInput(eeg.data, eeg.sfreq, eeg.ch_names)
        if modality == "speech":
            rate, n_frames = audio_header(path)
            _limit_seconds(n_frames / rate, limits, source, field)
            audio = read_audio(path)                                         # (T,) f32
            return SpeechInput(audio.samples, audio.sample_rate)
        rate, _, _, seconds = video_header(path)
        if seconds * rate > limits.max_frames * 1.02 + 2:      # refuse before decoding
            raise _bad(source, field, f"about {seconds * rate:.0f} frames (from the header); "
                       f"the limit is {limits.max_frames}")
        video = read_video(path, max_size=limits.max_video_side)            # (N, H, W, 3)
        _limit(video.frames.shape[0], limits.max_frames, "frames", source, field)
        _limit_seconds(video.seconds, limits, source, field)
        return VideoInput(video.frames, video.fps)
    except DataError as err:
        raise DataError(source, _scrub(err.reason, path, shown), kind=err.kind,
                        field=field) from None
    except Exception as exc:
        # The one broad catch: MNE, libsndfile and FFmpeg raise any type on garbage bytes
        # (ValueError, OSError, struct.error, IndexError, av errors, MemoryError ...), and a
        # request must never turn that into a 5xx.
        reason = _scrub(short_reason(exc), path, shown)
        raise _bad(source, field, f"cannot read as {FORMAT_NAMES[ext]} (corrupt or "
                   f"truncated file?): {reason}", "unreadable") from None


# -- multipart ------------------------------------------------------------------------------

def decode_multipart(files: list[Upload], fields: dict[str, str],
                     limits: DecodeLimits = DecodeLimits()) -> dict[str, Any]:
    """Decode multipart file parts and form fields into model inputs.

    Parameters
    ----------
    files : list[Upload]
        File parts in body order, routed by ``Upload.field`` (``eeg``, ``speech``,
        ``video``).
    fields : dict[str, str]
        Non-file form fields; only ``video_fps`` is known.
    limits : DecodeLimits
        Size limits.

    Returns
    -------
    dict
        As :func:`decode_json`.

    Raises
    ------
    DataError
        ``field`` is the form field (``eeg``, ``speech``, ``video``, ``video_fps``,
        an unknown name, or ``input`` when no file was sent); ``path`` names the upload.
    """
    from emoray.infer import VideoInput

    for name in fields:
        if name not in _FORM_FIELDS:
            raise _bad("request", str(name), f"unknown form field {_show(name)}; expected "
                       f"file fields {list(MODALITIES)} and form fields {list(_FORM_FIELDS)}")
    fps = _form_fps(fields.get("video_fps"))
    parts: dict[str, list[Upload]] = {m: [] for m in MODALITIES}
    for up in files:
        if up.field not in parts:
            raise _bad(_upload_source(up.filename, up.field), str(up.field),
                       f"unknown file field {_show(up.field)}; expected {list(MODALITIES)}")
        if not up.data:
            raise _bad(_upload_source(up.filename, up.field), up.field, "empty file",
                       "truncated")
        parts[up.field].append(up)
    if not any(parts.values()):
        raise _bad("request", "input", "no modality given; expected at least one file "
                   f"under {list(MODALITIES)}")
    for name in ("eeg", "speech"):
        if len(parts[name]) > 1:
            raise _bad(_upload_source(parts[name][1].filename, name), name,
                       f"{len(parts[name])} files; expected one {name} file")
    if fps is not None and not parts["video"]:
        raise _bad("request", "video_fps", "given without video frames")
    out: dict[str, Any] = {m: None for m in MODALITIES}
    with tempfile.TemporaryDirectory(prefix="emoray-decode-") as tmp:
        for name in ("eeg", "speech"):
            for up in parts[name]:
                out[name] = _read_file(up.data, up.filename, name,
                                       _upload_source(up.filename, name), name, Path(tmp),
                                       limits)
        video = parts["video"]
        if video:
            sources = [_upload_source(up.filename, "video") for up in video]
            exts = [_sniff(up.data, up.filename, src, "video")[1]
                    for up, src in zip(video, sources)]
            if ".mp4" in exts or len(video) == 1 and exts[0] not in (".jpg", ".jpeg"):
                if len(video) > 1:
                    raise _bad(sources[1], "video", "expected one MP4 file or JPEG frames, "
                               f"got {len(video)} parts with an MP4 among them")
                if fps is not None:
                    raise _bad("request", "video_fps", "applies to JPEG frames only; an MP4 "
                               "carries its own frame rate")
                out["video"] = _read_file(video[0].data, video[0].filename, "video",
                                          sources[0], "video", Path(tmp), limits)
            else:
                _limit(len(video), limits.max_frames, "frames", "request", "video")
                for up, src, ext in zip(video, sources, exts):
                    if ext not in (".jpg", ".jpeg"):
                        raise _bad(src, "video", f"{FORMAT_NAMES[ext]} among JPEG frames; "
                                   "expected one MP4 file or JPEG frames", "unknown_format")
                frames = decode_frames([up.data for up in video],
                                       [(src, "video") for src in sources],
                                       limits.max_video_side)
                if fps is not None:
                    _limit_seconds(len(video) / fps, limits, "request", "video")
                out["video"] = VideoInput(frames, fps)
    return out


def _form_fps(text: str | None) -> float | None:
    if text is None or not str(text).strip():
        return None
    try:
        value = float(str(text).strip())
    except ValueError:
        raise _bad("request", "video_fps", f"expected a number > 0, got {_show(text)}",
                   "sample_rate") from None
    return _positive(value, "request", "video_fps")
