"""Inference from raw signals with a checkpoint bundle: the path serving builds on.

:class:`Predictor` loads a bundle (:mod:`emoray.train.checkpoint`) and turns raw signals
into predictions. :meth:`Predictor.prepare` repeats the training transform exactly, from
the bundle's :class:`~emoray.data.contract.PreprocessContract` alone: each input is cut
into segments as ingest cuts trials (:mod:`emoray.data.segment`), each segment goes
through the same per-modality functions as ``emoray preprocess``, and the rows become
tensors through :func:`~emoray.data.features.batch_to_tensors`, the function the training
workers use. ``prepare`` knows nothing about the model; ``predict`` runs the model split as
:mod:`emoray.heads` splits it (attention fusion, or the JMML classifier bundle whose
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emoray.data.contract import PreprocessContract
from emoray.data.features import batch_to_tensors
from emoray.data.segment import SegmentSettings, _cut
from emoray.errors import ConfigError, DataError
from emoray.labels import EAV_VA

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


@dataclass
class ModalityPrediction:
    """The prediction from one modality alone."""

    label: str
    probabilities: dict[str, float]


@dataclass
class Incongruence:
    """Speech against EEG for one input (both present): ``score`` is the Jensen-Shannon
    divergence in bits of their own class distributions; ``flag`` when their labels differ
    and ``score >= threshold`` (:mod:`emoray.heads`)."""

    flag: bool
    score: float
    threshold: float
    speech: str
    eeg: str


@dataclass
class Prediction:
    """The prediction for one input (averaged over its segments).

    ``modalities`` took part; ``ignored`` were given but the model has no encoder for them.
    ``attention_mass`` (fusion) covers every modality of the model (0 for unused ones).
    ``valence``/``arousal`` are the expected circumplex position ``sum_c p_c * VA_c``
    when the labels are EAV classes (JMML: ``2 P(high) - 1``), else None.
    ``incongruence`` compares speech with EEG when both are present; ``path`` is the JMML
    inference path (``combined``, ``speech_only``, ``eeg_only``).
    """

    stage: str
    label: str
    probabilities: dict[str, float]
    modalities: list[str]
    per_modality: dict[str, ModalityPrediction] = field(default_factory=dict)
    attention_mass: dict[str, float] | None = None
    valence: float | None = None
    arousal: float | None = None
    n_segments: int = 1
    ignored: list[str] = field(default_factory=list)
    incongruence: Incongruence | None = None
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (plain floats, strings and lists)."""
        return asdict(self)


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
    columns = sorted({c for row in rows for c in row})
    batch = {}
    for c in columns:
        values = np.empty(len(rows), dtype=object)                     # (B,) flat or None
        values[:] = [row.get(c) for row in rows]
        batch[c] = values
    meta = {"feature_shapes": {k: list(v) for k, v in contract.output_shapes(n_chans).items()},
            "video_storage": "uint8", "contract": contract.model_dump(mode="json")}
    out = batch_to_tensors(batch, meta, device)
    out["sample_index"] = torch.tensor(owner, dtype=torch.int64, device=device)
    return out


def _sample_rows(contract: PreprocessContract, sample: Mapping[str, Any],
                 where: str) -> list[dict[str, np.ndarray]]:
    """Validate one sample, cut it into segments and preprocess each: feature rows."""
    if not isinstance(sample, Mapping):
        raise ConfigError(f"{where}: expected a dict of inputs by modality, got "
                          f"{type(sample).__name__}")
    unknown = sorted(set(sample) - set(MODALITIES))
    if unknown:
        raise ConfigError(f"{where}: unknown modality {unknown[0]!r}; expected {MODALITIES}")
    eeg, speech, video = (sample.get(m) for m in MODALITIES)
    if eeg is None and speech is None and video is None:
        raise DataError(where, "no modality given; expected at least one of eeg, speech, "
                        "video", kind="layout", field="input")
    seg = float(contract.segment_seconds)
    lengths = {}
    if eeg is not None:
        eeg, lengths["eeg"] = _check_eeg(eeg, contract, where)
    if speech is not None:
        speech, lengths["speech"] = _check_speech(speech, where)
    if video is not None:
        video, seconds = _check_video(video, where)
        if seconds is not None:
            lengths["video"] = seconds
    # imported here: serving's encoder replicas load this module but never preprocess, and
    # the transforms pull in MNE, torchaudio and torchvision (seconds per replica start)
    from emoray.data.transforms import preprocess_audio, preprocess_eeg, preprocess_video

    usable = min(lengths.values()) if lengths else seg
    if video is not None and video.fps is None:      # spans the others' time (or a segment)
        video = VideoInput(video.frames, fps=video.frames.shape[0] / usable)
    rows = []
    for k in range(max(1, int(math.floor(usable / seg + 1e-9)))):
        start, row = k * seg, {}
        if eeg is not None:
            piece = _cut(eeg.data, eeg.sfreq, start, seg, axis=1)             # (C, T)
            row.update(_run("eeg", where, preprocess_eeg, piece, eeg.sfreq,
                            list(eeg.ch_names), contract.eeg, source=where))
        if speech is not None:
            piece = _cut(speech.samples, speech.sample_rate, start, seg, axis=0)  # (T,)
            row.update(_run("speech", where, preprocess_audio, piece, speech.sample_rate,
                            contract.audio, source=where))
        if video is not None:
            piece = _cut(video.frames, video.fps, start, seg, axis=0)        # (N, H, W, 3)
            row.update(_run("video", where, preprocess_video, piece, contract.video,
                            normalize=False, source=where))               # uint8, as stored
        rows.append({k: np.asarray(v).ravel() for k, v in row.items()})
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


def _signal(value: Any, where: str, name: str, ndim: int, shape_doc: str) -> np.ndarray:
    """A finite real array of ``ndim`` dimensions, else a DataError naming ``name``."""
    arr = np.asarray(value)
    if arr.ndim != ndim or arr.dtype.kind not in "fiu":
        raise _bad(where, name, f"expected a real {shape_doc} array, got shape {arr.shape} "
                   f"dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        raise _bad(where, name, f"{int((~np.isfinite(arr)).sum())} NaN/inf values; expected "
                   "finite values", kind="invalid_value")
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
    if not isinstance(x, VideoInput):
        raise _bad(where, "video", f"expected a VideoInput, got {type(x).__name__}")
    frames = x.frames
    if isinstance(frames, (list, tuple)) and frames \
            and all(isinstance(f, (bytes, bytearray, memoryview)) for f in frames):
        from emoray.io.video import decode_jpeg

        try:      # the same decoder (torchvision, RGB) as preprocess_video_jpeg
            frames = decode_jpeg([bytes(f) for f in frames])                # (N, H, W, 3)
        except (RuntimeError, TypeError, ValueError) as err:
            raise _bad(where, "video.frames", f"cannot decode JPEG frames: {err}",
                       kind="unreadable") from None
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise _bad(where, "video.frames", f"expected (frames, height, width, 3) uint8 RGB or "
                   f"JPEG blobs, got shape {arr.shape} dtype {arr.dtype}")
    if min(arr.shape[:3]) == 0:
        raise _bad(where, "video.frames", f"empty clip of shape {arr.shape}",
                   kind="truncated")
    fps = None if x.fps is None else _rate(x.fps, where, "video.fps")
    seconds = None if fps is None else arr.shape[0] / fps
    if seconds is not None:
        _check_length(seconds, where, "video.frames")
    return VideoInput(arr, fps), seconds


# -- prediction -----------------------------------------------------------------------------

class Predictor:
    """A model of a bundle and its contract: raw signals in, :class:`Prediction` out.

    The model runs as :mod:`emoray.heads` splits it (each present modality's encoder, then
    the combining head), exactly as the Serve deployments run it.

    Parameters
    ----------
    model : torch.nn.Module
        The bundle's model (put in eval mode here).
    meta : dict
        The bundle metadata (``stage``, ``contract``, ``label_names`` ...).
    incongruence_threshold : float | None
        JS divergence (bits) from which differing speech/EEG labels are flagged
        (None: :data:`emoray.heads.INCONGRUENCE_THRESHOLD`).
    """

    def __init__(self, model: torch.nn.Module, meta: dict[str, Any],
                 incongruence_threshold: float | None = None):
        from emoray.heads import INCONGRUENCE_THRESHOLD, model_parts

        contract = meta.get("contract")
        if not isinstance(contract, PreprocessContract):
            contract = PreprocessContract.model_validate(contract)
        self.parts = model_parts(model, meta, INCONGRUENCE_THRESHOLD
                                 if incongruence_threshold is None else incongruence_threshold)
        self.model = self.parts.model
        self.meta = meta
        self.stage: str = self.parts.stage
        self.contract = contract
        self.label_names: list[str] = self.parts.label_names
        self.device = self.parts.device

    @classmethod
    def from_bundle(cls, path: str | Path, device: str | torch.device | None = None,
                    incongruence_threshold: float | None = None):
        """Load a bundle folder; ``device`` None picks CUDA when available, else CPU."""
        from emoray.train.checkpoint import load_bundle, read_bundle_meta

        stage = read_bundle_meta(path).get("stage")
        if stage not in PREDICTABLE_STAGES:
            raise ConfigError(f"checkpoint {path}: stage {stage!r} has no predictor; serve "
                              f"the last stage of a plan (one of {list(PREDICTABLE_STAGES)})")
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, meta = load_bundle(path, map_location=device)
        return cls(model, meta, incongruence_threshold)

    def prepare(self, eeg=None, speech=None, video=None) -> dict[str, torch.Tensor]:
        """Batch tensors of one sample (inputs) or several (equal-length lists of inputs,
        None where a sample lacks a modality); see :func:`prepare_inputs`."""
        return prepare_inputs(self.contract, _as_samples(eeg, speech, video), self.device)

    def predict(self, eeg: EEGInput | None = None, speech: SpeechInput | None = None,
                video: VideoInput | None = None) -> Prediction:
        """The prediction for one sample from any non-empty subset of modalities."""
        return self.predict_batch([{"eeg": eeg, "speech": speech, "video": video}])[0]

    def predict_batch(self, samples: Sequence[Mapping[str, Any]]) -> list[Prediction]:
        """Predictions for several samples (dicts of inputs by modality) in one batch."""
        batch = prepare_inputs(self.contract, samples, self.device)
        parts = self.parts
        present = {m: batch[f"{m}_present"].cpu().numpy() for m in parts.modalities
                   if f"{m}_present" in batch}
        encoded = {m: parts.encode(m, batch) for m in present}
        owner = batch["sample_index"].cpu().numpy()
        results = parts.combine(encoded, present, owner, len(samples))
        given = {m: batch[f"{m}_present"].cpu().numpy() for m in MODALITIES
                 if m not in parts.modalities and f"{m}_present" in batch}
        for i, r in enumerate(results):
            r.ignored = [m for m, p in given.items() if p[owner == i].any()]
        return results


#: Bundle stages :class:`Predictor` (and Serve) can load: the last stage of each plan.
PREDICTABLE_STAGES = ("fusion", "classifier")


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


def valence_arousal(names: list[str], probs: np.ndarray) -> tuple[float | None, float | None]:
    """The expected (valence, arousal) ``sum_c p_c VA_c`` for EAV classes, else (None, None)."""
    if not names or not all(n in EAV_VA for n in names):
        return None, None
    va = np.array([EAV_VA[n] for n in names])                            # (K, 2)
    v, a = probs @ va
    return float(v), float(a)


def named(names: list[str], probs: np.ndarray) -> tuple[str, dict[str, float]]:
    """The arg-max label and ``{class: probability}``."""
    return names[int(np.argmax(probs))], {n: float(p) for n, p in zip(names, probs)}
