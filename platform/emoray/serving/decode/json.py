"""JSON request bodies (``application/json``) -> model inputs (see :mod:`emoray.serving.decode`)."""

from __future__ import annotations

import tempfile

from pathlib import Path

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from emoray.serving.decode.common import (MODALITIES, DecodeLimits, _channel_names, short_reason)
from emoray.serving.decode.files import (_read_file)
from emoray.serving.decode.common import (_KEYS, _NEEDS, _b64, _bad, _jtype,
                                              _limit, _limit_seconds, _numbers, _positive,
                                              _show)
from emoray.serving.decode.media import decode_frames

if TYPE_CHECKING:
    from emoray.predict import EEGInput, SpeechInput, VideoInput

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
    from emoray.predict import EEGInput

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
    return EEGInput(_numbers(data, "request", "eeg.data", np.float32, True), rate, ch_names)


def _json_speech(obj: dict, limits: DecodeLimits) -> SpeechInput:
    from emoray.predict import SpeechInput

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
    from emoray.predict import VideoInput

    blobs = _need(obj, "video", "frames_base64")
    fps = obj.get("fps")
    fps = None if fps is None else _positive(fps, "request", "video.fps")
    if not isinstance(blobs, list) or not blobs:
        raise _bad("request", "video.frames_base64", "expected a non-empty array of base64 "
                   f"JPEG strings, got {_show(blobs)}")
    _limit(len(blobs), limits.max_frames, "frames", "request", "video.frames_base64")
    fields = [f"video.frames_base64[{i}]" for i in range(len(blobs))]
    data = [_b64(b, "request", f) for b, f in zip(blobs, fields)]
    frames = decode_frames(data, [("request", f) for f in fields], limits.max_video_side,
                           limits.max_pixels)
    if fps is not None:
        _limit_seconds(len(data) / fps, limits, "request", "video.frames_base64")
    return VideoInput(frames, fps)
