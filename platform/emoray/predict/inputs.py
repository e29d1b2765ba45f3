"""Raw signals -> contract tensors, model-independent: the first half of prediction.

:class:`Predictor` loads a bundle (:mod:`emoray.bundle`) and turns raw signals
into predictions. :meth:`Predictor.prepare` repeats the training transform exactly, from
the bundle's :class:`~emoray.config.contract.PreprocessContract` alone: each input is cut
into segments as ingest cuts trials (:mod:`emoray.data.segment`), each segment goes
through the same per-modality functions as ``emoray preprocess``, and the rows become
tensors through :func:`~emoray.data.features.batch_to_tensors`, the function the training
workers use. ``prepare`` knows nothing about the model; ``predict`` runs the model split as
:mod:`emoray.predict.heads` splits it (attention fusion, or the JMML classifier bundle whose
speech-only path needs no EEG).

Segments
    An input of ``L`` seconds (the shortest of its modalities) gives
    ``max(1, floor(L / segment_seconds))`` consecutive segments, as ingest does; a rest
    shorter than a segment is dropped, an input shorter than one segment is zero-padded to
    it (ingest's ``short_trials: pad``), and one shorter than 1 s is refused. Every segment
    is predicted and the class probabilities, per-modality probabilities and attention
    masses are averaged over the segments of the input.

EEG channels
    Rows are picked by name (case-insensitive) into the contract's channel order, so any
    channel order works; extra channels are dropped, missing contract channels are an error.

Video
    ``VideoInput.frames`` is ``(N, H, W, 3)`` uint8 RGB or one JPEG per frame. Without
    ``fps`` the clip is taken to span the other modalities' time (one segment when alone).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from emoray.config.contract import PreprocessContract
from emoray.data.features import batch_to_tensors
from emoray.data.segment import SegmentSettings, cut
from emoray.errors import ConfigError, DataError

MODALITIES = ("eeg", "speech", "video")
#: Inputs shorter than this are refused (ingest's default ``min_trial_seconds``).
MIN_SECONDS = SegmentSettings.min_trial_seconds
#: Transform error kind -> the input field it concerns, per modality.
_FIELDS = {"eeg": {"sample_rate": "eeg.sfreq", "missing_channel": "eeg.ch_names"},
           "speech": {"sample_rate": "speech.sample_rate"}, "video": {}}
_DATA_FIELD = {"eeg": "eeg.data", "speech": "speech.samples", "video": "video.frames"}


@dataclass
class EEGInput:
    """One EEG recording: ``data`` ``(C, T)`` in volts, ``sfreq`` Hz, ``C`` channel names."""

    data: np.ndarray
    sfreq: float
    ch_names: Sequence[str]


@dataclass
class SpeechInput:
    """One mono waveform: ``samples`` ``(T,)`` in [-1, 1] (or integer PCM), ``sample_rate`` Hz."""

    samples: np.ndarray
    sample_rate: int


@dataclass
class VideoInput:
    """One clip: ``frames`` ``(N, H, W, 3)`` uint8 RGB or a sequence of JPEG blobs."""

    frames: np.ndarray | Sequence[bytes]
    fps: float | None = None


# -- preparation (model-independent) --------------------------------------------------------

def prepare_inputs(contract: PreprocessContract, samples: Sequence[Mapping[str, Any]],
                   device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Batch tensors of raw samples, made exactly as the training features were.

    Parameters
    ----------
    contract : PreprocessContract
        The bundle's contract.
    samples : sequence of dict
        Per sample ``{"eeg": EEGInput | None, "speech": SpeechInput | None,
        "video": VideoInput | None}``; at least one modality each.
    device : str | torch.device
        Where the tensors go.

    Returns
    -------
    dict[str, Tensor]
        As :func:`batch_to_tensors`: ``eeg`` ``(B, C, T')``, ``eeg_de``/``eeg_bp``
        ``(B, C, n_bands)``, ``logmel`` ``(B, n_mels, F)``, ``audio_stats`` ``(B, S)``,
        ``video`` ``(B, n_frames, 3, size, size)`` normalised float32 (only modalities some
        sample has), ``<modality>_present`` ``(B,)`` bool; plus ``sample_index`` ``(B,)``
        int64, the sample each row (segment) belongs to.
    """
    if not samples:
        raise DataError("input", "no samples given", kind="layout", field="input")
    rows, owner = [], []
    for i, sample in enumerate(samples):
        where = "input" if len(samples) == 1 else f"input[{i}]"
        for row in _sample_rows(contract, sample, where):
            rows.append(row)
            owner.append(i)
    # contract channels (always set by `emoray preprocess`); else the inputs' own count
    n_chans = len(contract.eeg.channels or []) or next(
        (np.shape(s["eeg"].data)[0] for s in samples if s.get("eeg") is not None), 0)
    out = rows_to_tensors(contract, rows, n_chans, device)
    out["sample_index"] = torch.tensor(owner, dtype=torch.int64, device=device)
    return out


#: keys of a sample that describe it rather than hold a signal (the subject recorded:
#: whose statistics standardise the inputs, :mod:`emoray.data.subject_norm`)
SAMPLE_METADATA = ("subject",)


@dataclass
class SamplePlan:
    """One sample checked and laid on its time grid, before any transform: what the
    serving router decides (cheap) before each modality's deployment applies the contract.

    ``inputs`` holds the checked inputs by modality (video JPEG blobs still undecoded, and
    ``fps`` set when it was missing); every modality is cut into ``n_segments`` segments
    of the contract's length over its first ``usable`` seconds."""

    inputs: dict[str, Any]
    usable: float
    n_segments: int


def plan_sample(contract: PreprocessContract, sample: Mapping[str, Any],
                where: str = "input") -> SamplePlan:
    """Validate one sample (shapes, rates, channels, lengths) and fix its segments."""
    if not isinstance(sample, Mapping):
        raise ConfigError(f"{where}: expected a dict of inputs by modality, got "
                          f"{type(sample).__name__}")
    unknown = sorted(set(sample) - set(MODALITIES) - set(SAMPLE_METADATA))
    if unknown:
        raise ConfigError(f"{where}: unknown modality {unknown[0]!r}; expected {MODALITIES}"
                          f" (and optionally {SAMPLE_METADATA})")
    eeg, speech, video = (sample.get(m) for m in MODALITIES)
    if eeg is None and speech is None and video is None:
        raise DataError(where, "no modality given; expected at least one of eeg, speech, "
                        "video", kind="layout", field="input")
    seg = float(contract.segment_seconds)
    lengths, inputs = {}, {}
    if eeg is not None:
        inputs["eeg"], lengths["eeg"] = _check_eeg(eeg, contract, where)
    if speech is not None:
        inputs["speech"], lengths["speech"] = _check_speech(speech, where)
    if video is not None:
        inputs["video"], seconds = _check_video(video, where)
        if seconds is not None:
            lengths["video"] = seconds
    usable = min(lengths.values()) if lengths else seg
    video = inputs.get("video")
    if video is not None and video.fps is None:      # spans the others' time (or a segment)
        inputs["video"] = VideoInput(video.frames, fps=len(video.frames) / usable)
    return SamplePlan(inputs, usable, max(1, int(math.floor(usable / seg + 1e-9))))


def modality_rows(contract: PreprocessContract, modality: str, value: Any, n_segments: int,
                  where: str = "input") -> list[dict[str, np.ndarray]]:
    """The contract applied to one modality of a planned sample (:func:`plan_sample`):
    one flat feature row per segment."""
    # imported here: serving's router loads this module but only checks requests (the
    # modality deployments preprocess), and the transforms pull in MNE, torchaudio and
    # torchvision (seconds per process start)
    from emoray.data.transforms import preprocess_eeg, preprocess_speech, preprocess_video

    seg = float(contract.segment_seconds)
    if modality == "video":
        value = VideoInput(_decoded_frames(value.frames, where), value.fps)
    rows = []
    for k in range(n_segments):
        start = k * seg
        if modality == "eeg":
            piece = cut(value.data, value.sfreq, start, seg, axis=1)          # (C, T)
            row = _run("eeg", where, preprocess_eeg, piece, value.sfreq,
                       list(value.ch_names), contract.eeg, source=where)
        elif modality == "speech":
            piece = cut(value.samples, value.sample_rate, start, seg, axis=0)  # (T,)
            row = _run("speech", where, preprocess_speech, piece, value.sample_rate,
                       contract.audio, source=where)
        else:
            piece = cut(value.frames, value.fps, start, seg, axis=0)         # (N, H, W, 3)
            row = _run("video", where, preprocess_video, piece, contract.video,
                       normalize=False, source=where)                      # uint8, as stored
        rows.append({k: np.asarray(v).ravel() for k, v in row.items()})
    return rows


def rows_to_tensors(contract: PreprocessContract, rows: Sequence[Mapping[str, np.ndarray]],
                    n_chans: int, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Feature rows (some modalities each) -> the tensors the training workers make."""
    columns = sorted({c for row in rows for c in row})
    batch = {}
    for c in columns:
        values = np.empty(len(rows), dtype=object)                     # (B,) flat or None
        values[:] = [row.get(c) for row in rows]
        batch[c] = values
    meta = {"feature_shapes": {k: list(v) for k, v in contract.output_shapes(n_chans).items()},
            "video_storage": "uint8", "contract": contract.model_dump(mode="json")}
    return batch_to_tensors(batch, meta, device)


def _sample_rows(contract: PreprocessContract, sample: Mapping[str, Any],
                 where: str) -> list[dict[str, np.ndarray]]:
    """Validate one sample, cut it into segments and preprocess each: feature rows."""
    plan = plan_sample(contract, sample, where)
    rows: list[dict[str, np.ndarray]] = [{} for _ in range(plan.n_segments)]
    for m, value in plan.inputs.items():
        for row, part in zip(rows, modality_rows(contract, m, value, plan.n_segments, where)):
            row.update(part)
    return rows


def _run(modality: str, where: str, fn: Callable, *args, **kwargs) -> dict[str, np.ndarray]:
    """Call a transform; re-raise its DataError naming the input field."""
    try:
        return fn(*args, **kwargs)
    except DataError as err:
        name = _FIELDS[modality].get(err.kind, _DATA_FIELD[modality])
        raise DataError(where, err.reason, kind=err.kind, field=name) from None


def _bad(where: str, name: str, reason: str, kind: str = "layout") -> DataError:
    return DataError(where, reason, kind=kind, field=name)


#: The largest magnitude an input may hold (float inputs; integer PCM is bounded by its
#: type): EEG in volts (1 V is far beyond any scalp EEG, even a DC-coupled amplifier's
#: offset; microvolts sent as volts land here), speech as a waveform in [-1, 1] (some
#: headroom for float recordings that overshoot). Served in ``GET /v1/model``.
MAX_ABS = {"eeg.data": 1.0, "speech.samples": 10.0}
_UNITS = {"eeg.data": "volts (microvolts must be scaled by 1e-6)",
          "speech.samples": "a float waveform in [-1, 1] (integer PCM: send int16, or divide "
                            "by 32768)"}


def _signal(value: Any, where: str, name: str, ndim: int, shape_doc: str) -> np.ndarray:
    """A finite real array of ``ndim`` dimensions within :data:`MAX_ABS`, else a DataError
    naming ``name``."""
    arr = np.asarray(value)
    if arr.ndim != ndim or arr.dtype.kind not in "fiu":
        raise _bad(where, name, f"expected a real {shape_doc} array, got shape {arr.shape} "
                   f"dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        raise _bad(where, name, f"{int((~np.isfinite(arr)).sum())} NaN/inf values; expected "
                   "finite values", kind="invalid_value")
    if arr.dtype.kind == "f" and name in MAX_ABS and arr.size:
        peak = float(np.abs(arr).max())
        if peak > MAX_ABS[name]:
            raise _bad(where, name, f"values up to {peak:.3g}; expected {_UNITS[name]}, at "
                       f"most {MAX_ABS[name]:g} in magnitude", kind="invalid_value")
    return arr


def _rate(value: Any, where: str, name: str) -> float:
    ok = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)) or float(value) <= 0:
        raise _bad(where, name, f"expected a positive rate in Hz, got {value!r}",
                   kind="sample_rate")
    return float(value)


def _check_length(seconds: float, where: str, name: str) -> None:
    if seconds < MIN_SECONDS:
        raise _bad(where, name, f"{seconds:.3g} s long; expected at least {MIN_SECONDS:g} s",
                   kind="truncated")


def _check_eeg(x: Any, contract: PreprocessContract, where: str) -> tuple[EEGInput, float]:
    if not isinstance(x, EEGInput):
        raise _bad(where, "eeg", f"expected an EEGInput, got {type(x).__name__}")
    data = _signal(x.data, where, "eeg.data", 2, "(channels, samples)")
    sfreq = _rate(x.sfreq, where, "eeg.sfreq")
    names = x.ch_names
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence) \
            or not all(isinstance(n, str) for n in names):
        raise _bad(where, "eeg.ch_names", f"expected a list of channel names, got {names!r}")
    if len(names) != data.shape[0]:
        raise _bad(where, "eeg.ch_names", f"{len(names)} names for {data.shape[0]} channels "
                   "in eeg.data; expected one name per row")
    have = {n.lower() for n in names}
    missing = [c for c in contract.eeg.channels or [] if c.lower() not in have]
    if missing:
        raise _bad(where, "eeg.ch_names", f"channels {missing} missing; the model needs "
                   f"{contract.eeg.channels} (any order, extra channels are dropped)",
                   kind="missing_channel")
    _check_length(data.shape[1] / sfreq, where, "eeg.data")
    return EEGInput(data, sfreq, list(names)), data.shape[1] / sfreq


def _check_speech(x: Any, where: str) -> tuple[SpeechInput, float]:
    if not isinstance(x, SpeechInput):
        raise _bad(where, "speech", f"expected a SpeechInput, got {type(x).__name__}")
    samples = _signal(x.samples, where, "speech.samples", 1, "mono (samples,)")
    rate = _rate(x.sample_rate, where, "speech.sample_rate")
    if rate != int(rate):
        raise _bad(where, "speech.sample_rate", f"expected a whole number of Hz, got {rate}",
                   kind="sample_rate")
    _check_length(samples.shape[0] / rate, where, "speech.samples")
    return SpeechInput(samples, int(rate)), samples.shape[0] / rate


def _check_video(x: Any, where: str) -> tuple[VideoInput, float | None]:
    """Check a clip's frames and rate; JPEG blobs are counted here and decoded where the
    contract runs (:func:`modality_rows`: the video deployment when serving)."""
    if not isinstance(x, VideoInput):
        raise _bad(where, "video", f"expected a VideoInput, got {type(x).__name__}")
    frames = x.frames
    if _is_jpeg_list(frames):
        frames, n = [bytes(f) for f in frames], len(frames)
    else:
        frames = _frame_array(frames, where)
        n = frames.shape[0]
    fps = None if x.fps is None else _rate(x.fps, where, "video.fps")
    seconds = None if fps is None else n / fps
    if seconds is not None:
        _check_length(seconds, where, "video.frames")
    return VideoInput(frames, fps), seconds


def _is_jpeg_list(frames: Any) -> bool:
    return isinstance(frames, (list, tuple)) and bool(frames) \
        and all(isinstance(f, (bytes, bytearray, memoryview)) for f in frames)


def _frame_array(frames: Any, where: str) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise _bad(where, "video.frames", f"expected (frames, height, width, 3) uint8 RGB or "
                   f"JPEG blobs, got shape {arr.shape} dtype {arr.dtype}")
    if min(arr.shape[:3]) == 0:
        raise _bad(where, "video.frames", f"empty clip of shape {arr.shape}",
                   kind="truncated")
    return arr


def _decoded_frames(frames: Any, where: str) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 frames of a checked clip (JPEG blobs decoded)."""
    if not _is_jpeg_list(frames):
        return frames
    from emoray.io.video import decode_jpeg

    try:      # the same decoder (torchvision, RGB) as preprocess_video_jpeg
        return _frame_array(decode_jpeg(list(frames)), where)              # (N, H, W, 3)
    except (RuntimeError, TypeError, ValueError) as err:
        raise _bad(where, "video.frames", f"cannot decode JPEG frames: {err}",
                   kind="unreadable") from None


def _as_samples(eeg, speech, video) -> list[dict[str, Any]]:
    given = {"eeg": eeg, "speech": speech, "video": video}
    lists = {m: len(v) for m, v in given.items() if isinstance(v, (list, tuple))}
    if not lists:
        return [given]
    if len(set(lists.values())) != 1 or len(lists) != sum(v is not None for v in given.values()):
        raise ConfigError(f"prepare: give single inputs or equal-length lists for every "
                          f"modality, got lengths {lists} (others single)")
    n = next(iter(lists.values()))
    return [{m: (v[i] if v is not None else None) for m, v in given.items()} for i in range(n)]
