"""The dataset-adapter interface and its registry.

An adapter turns a dataset's on-disk tree into :class:`~emoray.types.TrialSpec` records
(``list_trials``) and reads one trial back into memory (``load_trial``). Listing must be
cheap (headers and label files only); reading happens in Ray tasks during ingest, so an
adapter is rebuilt in each task from ``(name, root, options)`` with :func:`get_adapter`.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from emoray.errors import ConfigError, DataError
from emoray.types import Trial, TrialSpec


@dataclass
class DatasetInfo:
    """What ingest needs to know about a dataset before reading any trial.

    ``eeg_channels``/``eeg_sfreq``/``audio_rate``/``video_fps`` are the dataset's declared
    values; a trial whose file disagrees is rejected (or resampled when ingest is told to).
    ``None`` means "not declared": the first good file decides (manifest datasets).
    """

    name: str
    label_names: list[str] | None
    modalities: list[str]
    eeg_channels: list[str] | None = None
    eeg_sfreq: float | None = None
    audio_rate: int | None = None
    video_fps: float | None = None
    trial_seconds: float | None = None      # expected length; shorter trials are truncated
    label_scale: str = "valence/arousal on [-1, 1], high = value > 0"
    notes: list[str] = field(default_factory=list)   # e.g. which EAV task parity was used

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Rejection:
    """A trial (or file) that could not be used, with the reason."""

    trial_id: str
    files: list[str]
    kind: str
    reason: str
    field: str | None = None

    @classmethod
    def from_error(cls, trial_id: str, files: list[str], err: DataError) -> "Rejection":
        named = [err.path] if err.path else []
        return cls(trial_id, named or files, err.kind, err.reason, err.field)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DatasetAdapter(ABC):
    """Base class: subclasses set ``name`` and implement ``info``, ``list_trials``,
    ``load_trial`` and ``write_example`` (a small dataset from the fake-data twin).

    Constructor keyword arguments are the adapter's options (from the ingest config's
    ``options`` mapping); unknown options raise :class:`ConfigError`.
    """

    name: ClassVar[str]

    #: Read settings that ingest sets on the adapter before ``load_trial``: video is
    #: decoded only at this frame rate and scaled so its longer side is at most
    #: ``video_max_size`` (reading 20 s of 30 fps HD video whole would need gigabytes).
    video_sample_fps: float | None = None
    video_max_size: int | None = None

    def __init__(self, root: str, **options: Any):
        self.root = str(root)
        self.options = options

    def read_video(self, path: str, *, fps_hint: float = 30.0):
        """Read a video file or frame folder with the ingest read settings applied."""
        from emoray.io.video import read_video

        return read_video(path, fps=self.video_sample_fps, max_size=self.video_max_size,
                          frames_fps=fps_hint)

    @classmethod
    @abstractmethod
    def write_example(cls, root: Path) -> tuple[str, dict]:
        """Write a small dataset in this adapter's layout with its fake-data twin and return
        ``(root, options)`` to read it (the registry test lists and loads every adapter's)."""

    @abstractmethod
    def info(self) -> DatasetInfo:
        """Dataset-level metadata (may read one header; must not read whole signals)."""

    @abstractmethod
    def list_trials(self) -> tuple[list[TrialSpec], list[Rejection]]:
        """Every trial found, plus trials already rejected at listing time (bad labels,
        missing files). ``found = len(specs) + len(rejections)``."""

    @abstractmethod
    def load_trial(self, spec: TrialSpec) -> Trial:
        """Read one trial; raise :class:`DataError` naming the file and the reason."""


_REGISTRY: dict[str, type[DatasetAdapter]] = {}


def register_adapter(cls: type[DatasetAdapter]) -> type[DatasetAdapter]:
    """Class decorator: make an adapter available by ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def adapter_names() -> list[str]:
    return sorted(_REGISTRY)


def adapter_class(name: str) -> type[DatasetAdapter]:
    """The adapter class registered as ``name`` (ConfigError naming the known ones)."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown dataset layout {name!r}; expected one of {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def get_adapter(name: str, root: str, options: dict[str, Any] | None = None) -> DatasetAdapter:
    """Build the adapter registered as ``name`` over ``root``.

    Raises :class:`ConfigError` for an unknown name or an option the adapter does not take.
    """
    cls = adapter_class(name)
    options = dict(options or {})
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in list(params.values())[2:])
    allowed = [p for p in params if p not in ("self", "root")]
    unknown = [k for k in options if k not in allowed]
    if unknown and not takes_any:
        raise ConfigError(f"dataset {name!r} does not take option(s) {unknown}; "
                          f"its options are {allowed}")
    return cls(root, **options)
