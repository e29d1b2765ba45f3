"""Continuous recordings -> trials: one trial per event, cut by the event's window.

The ``manifest`` layout (a row with an ``events`` cell) and the ``bids`` layout describe a
recording as a :class:`Recording`; :func:`event_trials` turns it into one
:class:`~emoray.types.TrialSpec` per event that is a trial, and rejects, naming the file,
the event and the reason, events that cannot be one: a label outside the label space, a
rating off the scale, a window (or baseline interval) that runs past either end of the
recording or of its audio/video, a window overlapping an earlier trial's. Nothing is cut
silently: every event is a trial, a rejection, or (with an ``events.map``) counted as not
a trial in the run's notes.

:func:`load_event_trial` reads only the window (MNE reads the samples ``[start, stop)``
from disk), subtracts the baseline interval's mean with :func:`mne.baseline.rescale`, drops
the recording's bad channels, and cuts the audio and video that run beside the EEG by the
same window (their time 0 is the EEG's first sample).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emoray.datasets.base import Rejection
from emoray.datasets.events import EventSettings, read_events_file, recording_events
from emoray.errors import DataError
from emoray.labels import LabelSpace, to_common_scale
from emoray.types import EEG, Trial, TrialSpec, Video

_TOLERANCE = 1e-6     # seconds: a window ending exactly at the last sample is in range


@dataclass
class Recording:
    """A continuous recording and where its events are (``events_file`` or, when None,
    the recording's own annotations / stim channel as ``source`` says)."""

    dataset: str
    subject: str
    session: str
    name: str                         # trial ids are "<name>-<event number>"
    eeg: str | None = None
    audio: str | None = None
    video: str | None = None
    events_file: str | None = None
    source: str = "file"
    bads: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def trial_id(self) -> str:
        return f"{self.dataset}/{self.subject}/{self.session}/{self.name}"

    @property
    def files(self) -> list[str]:
        return [f for f in (self.eeg, self.events_file, self.audio, self.video) if f]


@dataclass
class Expansion:
    """What :func:`event_trials` found in one recording."""

    specs: list[TrialSpec] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    not_trials: Counter = field(default_factory=Counter)   # description -> count (no map)
    overlaps: int = 0


def _lengths(rec: Recording, video_fps: float) -> tuple[dict[str, float], Any, dict]:
    """Seconds per modality, the EEG's MNE Raw (header only) and the sample rates."""
    from emoray.io.audio import audio_header
    from emoray.io.eeg import open_raw
    from emoray.io.video import video_header

    lengths: dict[str, float] = {}
    rates: dict[str, float] = {}
    raw = None
    if rec.eeg:
        raw = open_raw(rec.eeg)
        rates["eeg"] = float(raw.info["sfreq"])
        lengths["eeg"] = raw.n_times / rates["eeg"]
    if rec.audio:
        rates["audio"], frames = audio_header(rec.audio)
        lengths["audio"] = frames / rates["audio"]
    if rec.video:
        lengths["video"] = video_header(rec.video, frames_fps=video_fps)[3]
    return lengths, raw, rates


def event_trials(rec: Recording, settings: EventSettings, label_space: LabelSpace,
                 va_scale: tuple[float, float], *, video_fps: float = 30.0,
                 label_defaults: tuple[str, ...] = ("label", "trial_type")) -> Expansion:
    """One TrialSpec per event of ``rec`` that is a trial; Rejections for the others.

    A recording whose header or events cannot be read becomes one Rejection (its files
    and the reason); the other recordings of the dataset are not affected.
    """
    out = Expansion()
    try:
        lengths, raw, rates = _lengths(rec, video_fps)
        if rec.events_file:
            events = read_events_file(rec.events_file, settings.label_column,
                                      label_defaults)
        elif raw is None:
            raise DataError(rec.files[0] if rec.files else None, f"events from the "
                            f"recording's {rec.source} need an EEG file", kind="layout",
                            field="events")
        else:
            events = recording_events(raw, rec.source, settings.stim_channel)
    except DataError as err:
        out.rejections.append(Rejection.from_error(rec.trial_id, rec.files, err))
        return out
    except Exception as exc:    # a reader's surprise must not sink the dataset's listing
        out.rejections.append(Rejection(rec.trial_id, rec.files, "unreadable",
                                        f"cannot read the recording's events: "
                                        f"{type(exc).__name__}: {exc}"))
        return out
    where = rec.events_file or rec.eeg or ""
    end = min(lengths.values()) if lengths else 0.0
    shortest = min(lengths, key=lengths.get) if lengths else "recording"
    kept: list[tuple[float, float, str]] = []
    for k, event in sorted(enumerate(events, start=1),
                           key=lambda ke: (math.isnan(ke[1].onset), ke[1].onset)):
        target = settings.target(event.description) if not event.error else {}
        if target is None:
            out.not_trials[event.description] += 1
            continue
        trial = f"{rec.name}-{k:03d}"
        try:
            if event.error:
                raise DataError(where, event.error, kind="invalid_value", field="onset")
            spec = _spec(rec, trial, event, target, settings, label_space, va_scale, rates)
            start, stop = spec.extra["window"]
            for lo, hi, what in [(start, stop, "window"), *(
                    [tuple(spec.refs["eeg"]["baseline"]) + ("baseline interval",)]
                    if rec.eeg and spec.refs["eeg"]["baseline"] else [])]:
                if lo < -_TOLERANCE or hi > end + _TOLERANCE:
                    raise DataError(where, f"{what} [{lo:g}, {hi:g}] s is outside the "
                                    f"{shortest} (0 to {end:g} s)", kind="truncated",
                                    field="onset")
            clash = next((o for o in kept if start < o[1] - _TOLERANCE
                          and stop > o[0] + _TOLERANCE), None)
            if clash is not None:
                out.overlaps += 1
                if settings.overlap == "reject":
                    raise DataError(where, f"window [{start:g}, {stop:g}] s overlaps trial "
                                    f"{clash[2]} [{clash[0]:g}, {clash[1]:g}] s (set "
                                    "events.overlap=keep to keep both)",
                                    kind="invalid_value", field="onset")
        except DataError as err:
            at = "" if math.isnan(event.onset) else f" at {event.onset:g} s"
            reason = f"{event.where}: event {event.description!r}{at}: {err.reason}"
            out.rejections.append(Rejection(f"{rec.trial_id.rsplit('/', 1)[0]}/{trial}",
                                            [where], err.kind, reason, err.field))
            continue
        kept.append((start, stop, trial))
        out.specs.append(spec)
    out.specs.sort(key=lambda s: s.trial)          # event order, as written
    return out


def _rating(value: Any, name: str, va_scale: tuple[float, float]) -> tuple[float, float] | None:
    if value is None:
        return None
    low, high = va_scale
    raw = float(value)
    if not low <= raw <= high:
        raise DataError(None, f"{name} {raw:g} is outside the scale [{low:g}, {high:g}] "
                        "(option va_scale)", kind="invalid_value", field=name)
    return to_common_scale(raw, low, high), raw


def _spec(rec: Recording, trial: str, event, target: dict[str, Any],
          settings: EventSettings, label_space: LabelSpace, va_scale: tuple[float, float],
          rates: dict[str, float]) -> TrialSpec:
    label = target.get("label")
    index = None
    if label not in (None, ""):
        text = str(int(label)) if isinstance(label, float) and label.is_integer() else label
        try:
            index = label_space.index(text)
        except DataError:
            if "/" not in str(text):
                raise
            index = label_space.index(str(text).split("/", 1)[1])   # BrainVision "Comment/x"
    valence = _rating(event.valence if event.valence is not None else target.get("valence"),
                      "valence", va_scale)
    arousal = _rating(event.arousal if event.arousal is not None else target.get("arousal"),
                      "arousal", va_scale)
    if index is None and valence is None and arousal is None:
        raise DataError(None, "event has no label, valence or arousal", kind="label",
                        field="label")
    start = event.onset - settings.pre
    stop = event.onset + (settings.post if settings.post is not None else event.duration)
    if stop - start <= 0:
        raise DataError(None, f"the window is {stop - start:g} s long (duration "
                        f"{event.duration:g} s); set events.post, the seconds kept after "
                        "the onset", kind="invalid_value", field="duration")
    baseline = ([event.onset + settings.baseline[0], event.onset + settings.baseline[1]]
                if settings.baseline else None)
    refs: dict[str, Any] = {}
    if rec.eeg:
        refs["eeg"] = {"path": rec.eeg, "start": start, "stop": stop, "sfreq": rates["eeg"],
                       "baseline": baseline, "bads": list(rec.bads)}
    for modality in ("audio", "video"):
        if getattr(rec, modality):
            refs[modality] = {"path": getattr(rec, modality), "start": start, "stop": stop}
    if rec.audio:
        refs["audio"]["rate"] = rates["audio"]
    if rec.events_file:
        refs["events"] = {"path": rec.events_file}
    extra = dict(rec.extra, **event.extra)
    extra.update(onset=event.onset, event=event.description, event_at=event.where,
                 window=[start, stop])
    if baseline:
        extra["baseline"] = baseline
    if valence:
        extra["valence_raw"] = valence[1]
    if arousal:
        extra["arousal_raw"] = arousal[1]
    return TrialSpec(dataset=rec.dataset, subject=rec.subject, session=rec.session,
                     trial=trial, label=index, valence=valence[0] if valence else None,
                     arousal=arousal[0] if arousal else None, refs=refs, extra=extra)


def load_event_trial(spec: TrialSpec, read_video) -> Trial:
    """Read one event trial: the EEG window (baseline-corrected, bad channels dropped) and
    the same window of its audio and video. ``read_video(path)`` is the adapter's."""
    from mne.baseline import rescale   # a submodule: not loaded by ``import mne``

    from emoray.io.audio import read_audio
    from emoray.io.eeg import normalize_channel_name, read_eeg

    trial = Trial(spec=spec)
    ref = spec.refs.get("eeg")
    if ref:
        sfreq = float(ref["sfreq"])
        start, stop = ref["start"], ref["stop"]
        lo, hi = (min(start, ref["baseline"][0]), max(stop, ref["baseline"][1])) \
            if ref["baseline"] else (start, stop)
        i0, n = int(round(lo * sfreq)), int(round((stop - start) * sfreq))
        eeg = read_eeg(ref["path"], start=i0, stop=int(round(hi * sfreq)))   # (C, T)
        data = eeg.data.astype(np.float64)
        if ref["baseline"]:
            times = (i0 + np.arange(data.shape[1])) / sfreq
            data = rescale(data, times, tuple(ref["baseline"]), mode="mean", copy=False,
                           verbose="error")
        j0 = int(round(start * sfreq)) - i0
        bads = {normalize_channel_name(b) for b in ref.get("bads") or []}
        keep = [i for i, name in enumerate(eeg.ch_names) if name not in bads]
        data = data[keep, j0:j0 + n]                                          # (C', n)
        trial.eeg = EEG(data.astype(np.float32), sfreq, [eeg.ch_names[i] for i in keep],
                        source=eeg.source)
    if "audio" in spec.refs:
        a = spec.refs["audio"]
        rate = a["rate"]
        i0 = int(round(a["start"] * rate))
        trial.audio = read_audio(a["path"], start=i0,
                                 stop=i0 + int(round((a["stop"] - a["start"]) * rate)))
    if "video" in spec.refs:      # decoded whole, then cut (PyAV seeks only to key frames)
        v = spec.refs["video"]
        video = read_video(v["path"])
        i0, i1 = (int(math.floor(t * video.fps + 1e-6)) for t in (v["start"], v["stop"]))
        trial.video = Video(video.frames[i0:i1].copy(), video.fps, video.source)
    return trial
