"""Turning one read trial into shard records: conform to the dataset, check, segment.

This runs inside ingest's Ray tasks (and in the benchmark's sequential loop): it is the
per-trial unit of work. Every problem raises :class:`~emoray.errors.DataError` naming the
file and what was expected; the caller turns it into a counted rejection.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from emoray.datasets.base import DatasetInfo
from emoray.errors import DataError
from emoray.labels import binary
from emoray.types import Trial


@dataclass
class SegmentSettings:
    segment_seconds: float = 5.0
    short_trials: str = "pad"          # "pad" | "reject"
    min_trial_seconds: float = 1.0
    resample_mismatched: bool = False
    jpeg_quality: int = 90


def conform(trial: Trial, info: DatasetInfo, settings: SegmentSettings) -> Trial:
    """Check a trial against the dataset's declared channels and rates (in place)."""
    from emoray.io.audio import resample_audio
    from emoray.io.eeg import pick_channels, resample_eeg

    if trial.eeg is not None:
        eeg = trial.eeg
        if info.eeg_channels:
            eeg = pick_channels(eeg, info.eeg_channels)
        if _must_resample(eeg.sfreq, info.eeg_sfreq, eeg.source, "eeg", settings):
            eeg.data = resample_eeg(eeg.data, eeg.sfreq, info.eeg_sfreq)
            eeg.sfreq = float(info.eeg_sfreq)
        _check_finite(eeg.data, eeg.source, "eeg")
        trial.eeg = eeg
    if trial.audio is not None:
        audio = trial.audio
        if _must_resample(audio.sample_rate, info.audio_rate, audio.source, "audio", settings):
            audio.samples = resample_audio(audio.samples, audio.sample_rate, info.audio_rate)
            audio.sample_rate = int(info.audio_rate)
        _check_finite(audio.samples, audio.source, "audio")
    return trial


def _must_resample(rate: float, expected: float | None, source: str | None, field: str,
                   settings: SegmentSettings) -> bool:
    """True when a signal must be resampled to the dataset's rate; raise if not allowed."""
    if not expected or math.isclose(rate, expected, rel_tol=1e-6):
        return False
    if not settings.resample_mismatched:
        name = "EEG" if field == "eeg" else field
        raise DataError(source, f"{name} sample rate {rate:g} Hz, expected {expected:g} Hz "
                        "(the dataset's rate); set ingest.resample_mismatched=true to "
                        "resample", kind="sample_rate", field=field)
    return True


def _check_finite(x: np.ndarray, source: str | None, field: str) -> None:
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise DataError(source, f"{bad} NaN/inf samples; expected finite values",
                        kind="invalid_value", field=field)


def _check_labels(trial: Trial, info: DatasetInfo) -> None:
    spec = trial.spec
    where = spec.files[0] if spec.files else spec.trial_id
    if spec.label is not None:
        n = len(info.label_names or [])
        if not 0 <= spec.label < n:
            raise DataError(where, f"class index {spec.label} is outside the label space "
                            f"{info.label_names}", kind="label", field="label")
    for name in ("valence", "arousal"):
        value = getattr(spec, name)
        if value is not None and not math.isnan(value) and not -1.0 <= value <= 1.0:
            raise DataError(where, f"{name} {value:.3f} is outside the common scale [-1, 1]",
                            kind="label", field=name)
    if spec.label is None and _missing(spec.valence) and _missing(spec.arousal):
        raise DataError(where, "trial has no label: expected a class or valence/arousal",
                        kind="label", field="label")


def _missing(v: float | None) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def trial_seconds(trial: Trial, info: DatasetInfo, settings: SegmentSettings) -> float:
    """The usable length of a trial; raise ``truncated`` for short or unequal modalities."""
    lengths = {m: getattr(trial, m).seconds for m in trial.modalities()}
    if not lengths:
        raise DataError(trial.spec.files[0] if trial.spec.files else trial.spec.trial_id,
                        "trial has no modality", kind="truncated")
    expected = info.trial_seconds or max(lengths.values())
    tolerance = max(0.25, 0.02 * expected)
    for modality, seconds in lengths.items():
        if seconds < expected - tolerance:
            src = getattr(trial, modality).source
            raise DataError(src, f"{modality} is {seconds:.2f} s long, expected {expected:.2f} s "
                            "(truncated recording)", kind="truncated", field=modality)
    usable = min(lengths.values())
    if usable < settings.min_trial_seconds:
        src = getattr(trial, min(lengths, key=lengths.get)).source
        raise DataError(src, f"trial is {usable:.2f} s long, shorter than the minimum "
                        f"{settings.min_trial_seconds:g} s", kind="truncated")
    if usable < settings.segment_seconds and settings.short_trials == "reject":
        raise DataError(trial.spec.files[0] if trial.spec.files else None,
                        f"trial is {usable:.2f} s long, shorter than one "
                        f"{settings.segment_seconds:g} s segment", kind="truncated")
    return usable


def cut(x: np.ndarray, rate: float, start: float, length: float, axis: int) -> np.ndarray:
    """Samples [start, start+length) s along ``axis``, zero-padded at the end if short."""
    n = int(round(length * rate))
    i0 = int(round(start * rate))
    index = [slice(None)] * x.ndim
    index[axis] = slice(i0, min(i0 + n, x.shape[axis]))
    piece = np.array(x[tuple(index)])              # a copy, as np.take made (10x faster)
    if piece.shape[axis] < n:
        pad = [(0, 0)] * x.ndim
        pad[axis] = (0, n - piece.shape[axis])
        piece = np.pad(piece, pad)
    return piece


def segment_trial(trial: Trial, info: DatasetInfo, settings: SegmentSettings) -> list[dict]:
    """All records of one trial (after :func:`conform`), as dicts of the record schema."""
    from emoray.io.video import encode_jpeg

    _check_labels(trial, info)
    usable = trial_seconds(trial, info, settings)
    seg = settings.segment_seconds
    n_segments = max(1, int(math.floor(usable / seg + 1e-9)))
    spec = trial.spec
    label_name = (info.label_names[spec.label]
                  if spec.label is not None and info.label_names else None)
    base = {
        "dataset": spec.dataset, "subject": spec.subject, "session": spec.session,
        "trial": spec.trial, "label": spec.label, "label_name": label_name,
        "valence": None if _missing(spec.valence) else float(spec.valence),
        "arousal": None if _missing(spec.arousal) else float(spec.arousal),
        "valence_high": binary(spec.valence), "arousal_high": binary(spec.arousal),
        "extra": json.dumps(spec.extra, sort_keys=True, default=str),
    }
    records = []
    for k in range(n_segments):
        start = k * seg
        rec = dict(base, segment=k, start_seconds=start,
                   valid_seconds=float(min(seg, usable - start)),
                   record_id=f"{spec.trial_id}/{k}")
        if trial.eeg is not None:
            piece = cut(trial.eeg.data, trial.eeg.sfreq, start, seg, axis=1)   # (C, T)
            rec.update(eeg=piece.astype(np.float32).ravel(), eeg_shape=list(piece.shape),
                       eeg_sfreq=float(trial.eeg.sfreq))
        if trial.audio is not None:
            piece = cut(trial.audio.samples, trial.audio.sample_rate, start, seg, axis=0)
            rec.update(audio=piece.astype(np.float32), audio_rate=int(trial.audio.sample_rate))
        if trial.video is not None:
            v = trial.video
            piece = cut(v.frames, v.fps, start, seg, axis=0)                 # (T, H, W, 3)
            rec.update(video=encode_jpeg(piece, quality=settings.jpeg_quality),
                       video_fps=float(v.fps))
        records.append(rec)
    return records
