"""One uploaded file (a multipart part or ``speech.audio_base64``) -> a model input, read
with :mod:`emoray.io` from a temporary folder that is removed before returning."""

from __future__ import annotations

from pathlib import PureWindowsPath

from pathlib import Path
from typing import Any


from emoray.errors import DataError
from emoray.serving.decode.common import (FORMAT_NAMES, _A, _TAKES, DecodeLimits,
                                          _channel_names)
from emoray.serving.decode.common import (_bad, _limit, _limit_seconds, _sniff)
from emoray.serving.decode.common import short_reason
from emoray.serving.decode.media import check_fif, check_pixels

def _scrub(text: str, path: Path, shown: str) -> str:
    """Replace the temporary path in a reader's message by the uploaded name."""
    return text.replace(str(path), shown).replace(str(path.parent), "<upload>")


def _read_file(data: bytes, filename: str | None, modality: str, source: str, field: str,
               tmp: Path, limits: DecodeLimits) -> Any:
    """Sniff, check against ``modality``, write to ``tmp`` and read with emoray.io."""
    from emoray.predict import EEGInput, SpeechInput, VideoInput
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
        rate, width, height, seconds = video_header(path)
        if seconds * rate > limits.max_frames * 1.02 + 2:      # refuse before decoding
            raise _bad(source, field, f"about {seconds * rate:.0f} frames (from the header); "
                       f"the limit is {limits.max_frames}")
        check_pixels(int(seconds * rate), width, height, limits.max_pixels, source, field)
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
