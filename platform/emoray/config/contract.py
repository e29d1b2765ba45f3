"""The preprocessing contract: every parameter of the per-record feature transform.

A :class:`PreprocessContract` is saved next to every checkpoint (as JSON), so that a
serving replica rebuilds exactly the transform the model was trained with (timm's
``PretrainedCfg`` idea). The defaults follow the EAV reference preprocessing
(``research/METHODS.md``): EEG band-passed 0.5-45 Hz and resampled to 100 Hz, 5 s
segments, audio at 16 kHz as 128-bin log-mel, video as 25 frames of 224 x 224.

The functions that apply a contract live in :mod:`emoray.data.transforms`.

Examples
--------
>>> c = PreprocessContract()
>>> c.output_shapes(30)["eeg"]
(30, 500)
>>> PreprocessContract.from_json(c.to_json()) == c
True
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from emoray.errors import ConfigError

#: The newest contract layout this code reads; a contract written by newer code is refused.
CONTRACT_VERSION = 1

_DEFAULT_BANDS: dict[str, tuple[float, float]] = {
    "delta": (1.0, 4.0),
    "theta": (4.0, 8.0),
    "alpha": (8.0, 13.0),
    "beta": (13.0, 30.0),
    "gamma": (30.0, 45.0),
}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


#: Names of the prosody statistics at the end of ``audio_stats`` (after the log-mel stats).
SPEECH_STAT_NAMES: tuple[str, ...] = (
    "rms_db_mean",        # frame RMS energy (n_fft windows, hop_length hop), dB re full scale
    "rms_db_std",
    "f0_st_mean",         # F0 of voiced frames, semitones re 100 Hz
    "f0_st_std",
    "f0_st_p10",
    "f0_st_p90",
    "voiced_fraction",    # voiced frames / all pitch frames
    "rate_peaks_per_s",   # speaking-rate proxy: energy-envelope peaks per second
    "jitter",             # mean |F0[i+1] - F0[i]| / F0[i] over consecutive voiced frames
)

def speech_stat_names(n_mels: int) -> list[str]:
    """The full ``audio_stats`` layout for a contract with ``n_mels`` mel bins."""
    return ([f"logmel_mean_{i}" for i in range(n_mels)]
            + [f"logmel_std_{i}" for i in range(n_mels)] + list(SPEECH_STAT_NAMES))


def n_speech_stats(n_mels: int) -> int:
    """Length of ``audio_stats`` for ``n_mels`` mel bins."""
    return 2 * n_mels + len(SPEECH_STAT_NAMES)


def resampled_length(n_in: int, rate_in: float, rate_out: float) -> int:
    """Number of samples ``n_in`` samples at ``rate_in`` become at ``rate_out``.

    Rounds half up (with a small tolerance for floating-point error), so that a segment of
    ``seconds`` always gives ``round(seconds * rate_out)`` samples, whatever ``rate_in``.
    """
    return int(math.floor(n_in * float(rate_out) / float(rate_in) + 0.5 + 1e-9))


class EEGContract(BaseModel):
    """EEG transform: notch, band-pass, blink removal, resample, band features, normalise.

    ``channels`` is the channel order the model expects (``None``: keep the input order);
    input channels are picked by name into that order. ``notch`` lists mains frequencies;
    their harmonics below the input Nyquist are notched too. ``normalize`` is per segment:
    per channel ``zscore`` (mean/std) or ``robust`` (median and IQR/1.349, which equals the
    std for Gaussian data), or ``global`` (one mean and std over all channels, which keeps
    the channels' relative power: topography and asymmetry); ``clip`` bounds the normalised
    values. ``bands`` name the
    frequency bands (Hz, ``[low, high)``) of the band-power and differential-entropy features,
    in feature-column order.
    """

    model_config = ConfigDict(extra="forbid")

    channels: list[str] | None = None
    sfreq: float = Field(100.0, gt=0)
    l_freq: float = Field(0.5, gt=0)
    h_freq: float = Field(45.0, gt=0)
    notch: list[float] = Field(default_factory=lambda: [50.0])
    blink_removal: bool = True
    blink_channels: list[str] = Field(
        default_factory=lambda: ["Fp1", "Fp2", "AF3", "AF4", "F7", "F8"])
    normalize: Literal["zscore", "robust", "global", "none"] = "zscore"
    clip: float | None = Field(20.0, gt=0)
    bands: dict[str, tuple[float, float]] = Field(default_factory=lambda: dict(_DEFAULT_BANDS))

    @model_validator(mode="after")
    def _check(self) -> "EEGContract":
        nyq = self.sfreq / 2.0
        if self.l_freq >= self.h_freq:
            raise ValueError(f"l_freq {self.l_freq} Hz must be below h_freq {self.h_freq} Hz")
        if self.h_freq > nyq:
            raise ValueError(f"h_freq {self.h_freq} Hz is above the output Nyquist frequency "
                             f"{nyq} Hz (sfreq {self.sfreq} Hz)")
        if any(f <= 0 for f in self.notch):
            raise ValueError(f"notch frequencies must be positive, got {self.notch}")
        if not self.bands:
            raise ValueError("bands must name at least one frequency band")
        for name, (lo, hi) in self.bands.items():
            if not 0 <= lo < hi <= nyq:
                raise ValueError(f"band {name!r} ({lo}, {hi}) Hz must satisfy "
                                 f"0 <= low < high <= {nyq} Hz (output Nyquist)")
        if self.channels is not None and len(set(self.channels)) != len(self.channels):
            raise ValueError(f"channels has duplicate names: {self.channels}")
        return self


class SpeechContract(BaseModel):
    """Speech transform: resample, pre-emphasis, log-mel, utterance normalisation, stats.

    The modality is *speech*; its signal is *audio* (the file format, the record shards'
    ``audio``/``audio_rate``/``audio_stats`` columns and this section's key ``audio`` in
    a saved contract keep that word, so that contracts and shards written before stay
    readable).
    """

    model_config = ConfigDict(extra="forbid")

    sample_rate: int = Field(16000, gt=0)
    n_mels: int = Field(128, gt=0)
    n_fft: int = Field(400, gt=0)            # 25 ms at 16 kHz
    hop_length: int = Field(160, gt=0)       # 10 ms at 16 kHz
    f_min: float = Field(20.0, ge=0)
    f_max: float | None = 8000.0
    log_eps: float = Field(1e-6, gt=0)
    pre_emphasis: float = Field(0.97, ge=0, lt=1)
    #: ``utterance``: each mel bin over the segment (removes energy and spectral tilt);
    #: ``global``: one mean and std over the whole log-mel (keeps the tilt); ``none``
    normalize: Literal["utterance", "global", "none"] = "utterance"

    @model_validator(mode="after")
    def _check(self) -> "SpeechContract":
        top = self.sample_rate / 2.0 if self.f_max is None else self.f_max
        if top > self.sample_rate / 2.0:
            raise ValueError(f"f_max {self.f_max} Hz is above the Nyquist frequency "
                             f"{self.sample_rate / 2.0} Hz")
        if self.f_min >= top:
            raise ValueError(f"f_min {self.f_min} Hz must be below f_max {top} Hz")
        return self


class VideoContract(BaseModel):
    """Video transform: ``n_frames`` evenly spaced frames, centre-cropped, resized, normalised."""

    model_config = ConfigDict(extra="forbid")

    n_frames: int = Field(25, gt=0)
    size: int = Field(224, gt=0)
    mean: tuple[float, float, float] = _IMAGENET_MEAN
    std: tuple[float, float, float] = _IMAGENET_STD

    @model_validator(mode="after")
    def _check(self) -> "VideoContract":
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")
        return self


class PreprocessContract(BaseModel):
    """All preprocessing parameters; saved as JSON next to every checkpoint."""

    model_config = ConfigDict(extra="forbid")

    version: int = CONTRACT_VERSION
    segment_seconds: float = Field(5.0, gt=0)
    eeg: EEGContract = Field(default_factory=EEGContract)
    audio: SpeechContract = Field(default_factory=SpeechContract)
    video: VideoContract = Field(default_factory=VideoContract)

    @model_validator(mode="after")
    def _check_version(self) -> "PreprocessContract":
        if not 1 <= self.version <= CONTRACT_VERSION:
            raise ValueError(f"contract version {self.version} is not supported "
                             f"(this emoray reads versions 1..{CONTRACT_VERSION})")
        return self

    # -- serialisation ---------------------------------------------------------------------
    def to_json(self) -> str:
        """The contract as indented JSON (tuples become lists; :meth:`from_json` restores them)."""
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, s: str | bytes, *, source: str | None = None) -> "PreprocessContract":
        """Parse and validate a contract; ``source`` names the file in error messages.

        Raises
        ------
        ConfigError
            If ``s`` is not JSON or does not describe a valid contract (the message lists
            each bad field by its dotted name).
        """
        try:
            return cls.model_validate_json(s)
        except ValidationError as err:
            where = source or "<contract JSON>"
            raise ConfigError(f"{where}: invalid preprocessing contract: "
                              f"{_describe(err)}") from None

    def save(self, path: str | Path) -> Path:
        """Write the contract as JSON to ``path`` (parent folders are created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json() + "\n", encoding="utf-8")
        tmp.replace(path)   # atomic: a reader never sees half a contract
        return path

    @classmethod
    def load(cls, path: str | Path) -> "PreprocessContract":
        """Read a contract written by :meth:`save`.

        Raises
        ------
        ConfigError
            If the file cannot be read or holds no valid contract; the message names it.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: cannot read preprocessing contract: {err}") from None
        return cls.from_json(text, source=str(path))

    # -- identity and shapes ---------------------------------------------------------------
    def fingerprint(self) -> str:
        """A short stable hash (16 hex digits) of the contract's content.

        Equal contracts give equal fingerprints across processes and Python versions; any
        changed value changes it, including the order of ``eeg.bands`` (it is the order of
        the band-feature columns).
        """
        return hashlib.sha256(self._canonical().encode("utf-8")).hexdigest()[:16]

    def _canonical(self) -> str:
        data: dict[str, Any] = self.model_dump(mode="json")
        # A dict's key order is lost by sort_keys; the band order is meaningful, keep it.
        data["eeg"]["bands"] = [[k, *v] for k, v in data["eeg"]["bands"].items()]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def output_shapes(self, n_chans: int) -> dict[str, tuple[int, ...]]:
        """Feature shapes that one ``segment_seconds`` segment produces.

        Parameters
        ----------
        n_chans : int
            Number of EEG channels (``len(eeg.channels)`` when the contract names them).

        Returns
        -------
        dict
            ``eeg`` (C, T'), ``eeg_de`` and ``eeg_bp`` (C, n_bands), ``logmel``
            (n_mels, frames), ``audio_stats`` (F,), ``video`` (n_frames, 3, size, size).
        """
        sec = self.segment_seconds
        n_bands = len(self.eeg.bands)
        n_audio = _samples(sec, self.audio.sample_rate)
        v = self.video
        return {
            "eeg": (n_chans, _samples(sec, self.eeg.sfreq)),
            "eeg_de": (n_chans, n_bands),
            "eeg_bp": (n_chans, n_bands),
            # MelSpectrogram pads by n_fft // 2 on both sides (center=True).
            "logmel": (self.audio.n_mels, 1 + n_audio // self.audio.hop_length),
            "audio_stats": (n_speech_stats(self.audio.n_mels),),
            "video": (v.n_frames, 3, v.size, v.size),
        }


def _samples(seconds: float, rate: float) -> int:
    """``round(seconds * rate)``, rounding half up like :func:`resampled_length`."""
    return int(math.floor(seconds * rate + 0.5 + 1e-9))


def _describe(err: ValidationError) -> str:
    """One line per problem: ``dotted.field: what is wrong``."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            parts.append(f"{loc}: unknown field (not part of the contract)")
        elif e["type"] == "json_invalid":
            parts.append(f"not valid JSON ({e['msg']})")
        elif e["type"] == "value_error":     # our own checks: the message says it all
            parts.append(f"{loc}: {e['msg'].removeprefix('Value error, ')}")
        else:
            got = repr(e.get("input"))
            got = got if len(got) <= 80 else got[:77] + "..."
            parts.append(f"{loc}: {e['msg']} (got {got})")
    return "; ".join(parts)
