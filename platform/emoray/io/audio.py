"""Audio reading and writing with soundfile; resampling with torchaudio.

Files of any sample rate are read as mono ``float32`` in ``[-1, 1]`` (multi-channel audio is
mixed down by the channel mean). ``torchaudio.load`` needs torchcodec, which this stack does
not ship, so file I/O goes through soundfile; :func:`resample_audio` uses
``torchaudio.functional.resample`` (band-limited sinc interpolation).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from emoray.errors import DataError
from emoray.types import Audio

SUPPORTED_AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".ogg")

# Extension -> (soundfile format, subtype) used by write_audio.
_WRITE_FORMATS: dict[str, tuple[str, str]] = {
    ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_16"),
}


def _check_path(path: str | os.PathLike) -> str:
    ext = Path(str(path)).suffix.lower()
    if ext not in SUPPORTED_AUDIO_EXTENSIONS:
        raise DataError(str(path), f"unknown audio file extension {ext or '(none)'!r}; "
                        f"expected one of {list(SUPPORTED_AUDIO_EXTENSIONS)}",
                        kind="unknown_format", field="audio")
    if not os.path.isfile(path):
        raise DataError(str(path), "file not found", kind="unreadable", field="audio")
    return ext


def _short_reason(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[-1] if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _info(path: str | os.PathLike):
    import soundfile as sf

    _check_path(path)
    try:
        return sf.info(str(path))
    except Exception as exc:
        raise DataError(str(path), f"cannot read audio: {_short_reason(exc)}",
                        kind="unreadable", field="audio") from None


def read_audio(path: str | os.PathLike, *, start: int = 0, stop: int | None = None) -> Audio:
    """Read an audio file as mono float32.

    Parameters
    ----------
    path : str | os.PathLike
        A ``.wav``, ``.flac`` or ``.ogg`` file at any sample rate.
    start, stop : int
        Read only frames ``[start, stop)`` (a trial's window of a long recording).

    Returns
    -------
    Audio
        ``samples`` ``(T,)`` float32 (channel mean), ``sample_rate``, ``source=str(path)``.

    Raises
    ------
    DataError
        Missing or corrupt file (``unreadable``), unknown extension (``unknown_format``),
        no samples (``truncated``), NaN/inf samples (``invalid_value``).
    """
    import soundfile as sf

    _check_path(path)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True,
                             start=start, stop=stop)                      # (T, ch)
    except Exception as exc:
        raise DataError(str(path), f"cannot read audio: {_short_reason(exc)}",
                        kind="unreadable", field="audio") from None
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise DataError(str(path), "audio has zero samples; expected at least one",
                        kind="truncated", field="audio")
    samples = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    samples = np.ascontiguousarray(samples, dtype=np.float32)  # (T,)
    if not np.isfinite(samples).all():
        bad = int((~np.isfinite(samples)).sum())
        raise DataError(str(path), f"{bad} sample(s) are NaN or infinite; expected finite "
                        "values", kind="invalid_value", field="audio")
    return Audio(samples=samples, sample_rate=int(rate), source=str(path))


def audio_header(path: str | os.PathLike) -> tuple[int, int]:
    """Sample rate and frame count of an audio file, without reading samples.

    Parameters
    ----------
    path : str | os.PathLike
        An audio file (see :func:`read_audio`).

    Returns
    -------
    tuple[int, int]
        ``(sample_rate, n_frames)``.
    """
    info = _info(path)
    if info.frames == 0:
        raise DataError(str(path), "audio has zero samples; expected at least one",
                        kind="truncated", field="audio")
    return int(info.samplerate), int(info.frames)


def write_audio(path: str | os.PathLike, audio: Audio) -> None:
    """Write mono audio as 16-bit WAV or FLAC (by extension), clipping to ``[-1, 1]``.

    Parameters
    ----------
    path : str | os.PathLike
        Output ``.wav`` or ``.flac`` file; parent folders are created.
    audio : Audio
        ``samples`` ``(T,)`` (or ``(T, ch)``) float in ``[-1, 1]``.
    """
    import soundfile as sf

    ext = Path(str(path)).suffix.lower()
    if ext not in _WRITE_FORMATS:
        raise DataError(str(path), f"cannot write audio as {ext or '(none)'!r}; expected "
                        f"one of {list(_WRITE_FORMATS)}", kind="unknown_format",
                        field="audio")
    samples = np.asarray(audio.samples, dtype=np.float32)
    if not np.isfinite(samples).all():
        raise DataError(str(path), "samples contain NaN or infinite values; expected "
                        "finite", kind="invalid_value", field="audio")
    samples = np.clip(samples, -1.0, 1.0)  # (T,) or (T, ch)
    fmt, subtype = _WRITE_FORMATS[ext]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        sf.write(str(path), samples, int(audio.sample_rate), format=fmt, subtype=subtype)
    except Exception as exc:
        raise DataError(str(path), f"cannot write audio: {_short_reason(exc)}",
                        kind="unreadable", field="audio") from None


def resample_audio(samples: np.ndarray, sr_from: int, sr_to: int) -> np.ndarray:
    """Resample audio with :func:`torchaudio.functional.resample`.

    Parameters
    ----------
    samples : np.ndarray
        ``(T,)`` or ``(..., T)`` signal.
    sr_from, sr_to : int
        Source and target sample rates in Hz.

    Returns
    -------
    np.ndarray
        float32 ``(..., ceil(T * sr_to / sr_from))``.
    """
    import torch
    import torchaudio.functional as AF

    if int(sr_from) <= 0 or int(sr_to) <= 0:
        raise ValueError(f"sample rates must be positive, got {sr_from} -> {sr_to}")
    arr = np.asarray(samples, dtype=np.float32)
    if int(sr_from) == int(sr_to):
        return arr.copy()
    with torch.no_grad():
        out = AF.resample(torch.from_numpy(np.ascontiguousarray(arr)), int(sr_from),
                          int(sr_to))
    return out.numpy().astype(np.float32, copy=False)  # (..., T')
