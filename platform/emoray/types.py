"""The in-memory types that flow from readers/adapters into ingest.

Shapes are written where the arrays are made: EEG ``(C, T)`` in volts, audio ``(T,)`` mono
float32 in [-1, 1], video ``(T, H, W, 3)`` uint8 RGB.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

MODALITIES: tuple[str, ...] = ("eeg", "audio", "video")


@dataclass
class EEG:
    data: np.ndarray            # (C, T) float, volts
    sfreq: float
    ch_names: list[str]
    source: str | None = None   # the file it came from

    @property
    def seconds(self) -> float:
        return self.data.shape[1] / self.sfreq


@dataclass
class Audio:
    samples: np.ndarray         # (T,) float32 mono in [-1, 1]
    sample_rate: int
    source: str | None = None

    @property
    def seconds(self) -> float:
        return self.samples.shape[0] / self.sample_rate


@dataclass
class Video:
    frames: np.ndarray          # (T, H, W, 3) uint8 RGB
    fps: float
    source: str | None = None

    @property
    def seconds(self) -> float:
        return self.frames.shape[0] / self.fps


@dataclass
class TrialSpec:
    """One trial an adapter found: ids, labels and where its modalities live.

    Cheap and serialisable (plain values only) so it can be shipped to Ray tasks. The
    adapter that listed it reads it back with ``adapter.load_trial(spec)``.

    ``refs`` maps a modality name to an adapter-specific, JSON-able description of where
    the signal is (a path, or a path plus an index into a ``.mat``/``.dat`` file).
    ``valence``/``arousal`` are on the common [-1, 1] scale (see :mod:`emoray.labels`).
    """

    dataset: str
    subject: str
    session: str
    trial: str
    label: int | None
    valence: float | None
    arousal: float | None
    refs: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)   # e.g. task, speaker, acted flag

    @property
    def trial_id(self) -> str:
        return f"{self.dataset}/{self.subject}/{self.session}/{self.trial}"

    @property
    def files(self) -> list[str]:
        """Every file path named in ``refs`` (for reports)."""
        out = []
        for ref in self.refs.values():
            path = ref.get("path") if isinstance(ref, dict) else ref
            if path:
                out.append(str(path))
        return out


@dataclass
class Trial:
    """A trial read into memory: the spec plus whichever modalities it has."""

    spec: TrialSpec
    eeg: EEG | None = None
    audio: Audio | None = None
    video: Video | None = None

    def modalities(self) -> list[str]:
        return [m for m in MODALITIES if getattr(self, m) is not None]
