"""Multipart request bodies (``multipart/form-data``) -> model inputs (see
:mod:`emoray.serving.decode`)."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

from emoray.serving.decode.arrays import (ByteBudget, array_kind, check_form_fields,
                                          decode_array)
from emoray.serving.decode.common import (_FORM_FIELDS, FORMAT_NAMES, MODALITIES,
                                          DecodeLimits, Upload, _bad, _limit, _limit_seconds,
                                          _positive, _show, _sniff, _upload_source)
from emoray.serving.decode.files import _read_file
from emoray.serving.decode.media import decode_frames

# -- multipart ------------------------------------------------------------------------------

def decode_multipart(files: list[Upload], fields: dict[str, str],
                     limits: DecodeLimits = DecodeLimits()) -> dict[str, Any]:
    """Decode multipart file parts and form fields into model inputs.

    Parameters
    ----------
    files : list[Upload]
        File parts in body order, routed by ``Upload.field`` (``eeg``, ``speech``,
        ``video``): files (EDF ... JPEG) or arrays (.npy, .npz, raw bytes;
        :mod:`emoray.serving.decode.arrays`).
    fields : dict[str, str]
        Non-file form fields: ``video_fps`` and what describes an array part
        (``eeg_sfreq``, ``eeg_ch_names``, ``speech_sample_rate``, ``<modality>_dtype``,
        ``<modality>_shape``).
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
    from emoray.predict import VideoInput

    for name in fields:
        if name in MODALITIES:
            raise _bad("request", name, f"sent as a form field (a part without a filename); "
                       f"send {name} as a file part with a filename, e.g. {name}.npy")
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
    kinds = {m: array_kind(parts[m][0], fields) if parts[m] else None for m in MODALITIES}
    check_form_fields(kinds, fields, {m for m in MODALITIES if parts[m] and not kinds[m]})
    if kinds["video"] and len(parts["video"]) > 1:
        raise _bad(_upload_source(parts["video"][1].filename, "video"), "video",
                   f"{len(parts['video'])} parts with a video array among them; expected one "
                   "array (frames, height, width, 3), one MP4 file or JPEG frames")
    out: dict[str, Any] = {m: None for m in MODALITIES}
    budget = ByteBudget(limits)
    for name in MODALITIES:
        if kinds[name]:
            out[name] = decode_array(parts[name][0], kinds[name], fields, limits, budget)
    files_left = any(parts[m] and not kinds[m] for m in MODALITIES)
    with (tempfile.TemporaryDirectory(prefix="emoray-decode-") if files_left   # readers'
          else contextlib.nullcontext("")) as tmp:                        # scratch, if any
        for name in ("eeg", "speech"):
            for up in parts[name] if not kinds[name] else ():
                out[name] = _read_file(up.data, up.filename, name,
                                       _upload_source(up.filename, name), name, Path(tmp),
                                       limits)
        video = parts["video"] if not kinds["video"] else []
        if video:
            sources = [_upload_source(up.filename, "video") for up in video]
            exts = [_sniff(up.data, up.filename, src, "video")[1]
                    for up, src in zip(video, sources)]
            if ".mp4" in exts or len(video) == 1 and exts[0] not in (".jpg", ".jpeg"):
                if len(video) > 1:
                    raise _bad(sources[1], "video", "expected one MP4 file or JPEG frames, "
                               f"got {len(video)} parts with an MP4 among them")
                if fps is not None:
                    raise _bad("request", "video_fps", "applies to JPEG frames and arrays "
                               "only; an MP4 carries its own frame rate")
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
                                       limits.max_video_side,
                                       limits.max_pixels)
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
