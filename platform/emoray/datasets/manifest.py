"""The generic manifest CSV adapter: users' own data, one row per trial.

A manifest is a CSV file (or a folder holding ``manifest.csv``) with the columns

=========== ==========================================================================
``subject`` required
``label``   class name (case-insensitive) or class index        } at least one
``valence`` rating on ``va_scale``                               } of these three
``arousal`` rating on ``va_scale``                               }
``session`` optional, default ``"1"``
``trial``   optional, default the row number (1-based, data rows only)
``eeg``     path to an EEG file (any :data:`~emoray.io.eeg.SUPPORTED_EEG_EXTENSIONS`)
``audio``   path to an audio file (WAV/FLAC/OGG)
``video``   path to a video file or a folder of frames
``events``  optional: the row is a continuous recording cut into one trial per event:
            a CSV/TSV events file, or ``annotations`` (the EEG file's own EDF+/BDF+
            annotations, BrainVision markers, FIF annotations) or ``stim`` (its stim
            channel); labels then come from the events (:mod:`emoray.datasets.events`)
=========== ==========================================================================

Paths are relative to the CSV's folder (absolute paths are kept); an empty cell means the
trial has no such modality. Any other column is copied into ``TrialSpec.extra``. Rows that
cannot be used (label outside the label space, rating off the scale, file missing, no
modality) are returned as :class:`~emoray.datasets.base.Rejection` naming the CSV line;
events that cannot be trials, as Rejections naming the events file (or annotation) and the
event.
"""

from __future__ import annotations

import csv
import math
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from emoray.datasets._userdata import check_options
from emoray.datasets._userdata import write_manifest  # noqa: F401  (public here)
from emoray.datasets.base import DatasetAdapter, DatasetInfo, Rejection, register_adapter
from emoray.datasets.event_trials import Recording, event_trials, load_event_trial
from emoray.datasets.events import SOURCES, EventSettings
from emoray.errors import DataError
from emoray.io.audio import SUPPORTED_AUDIO_EXTENSIONS, audio_header, read_audio
from emoray.io.eeg import SUPPORTED_EEG_EXTENSIONS, eeg_header, pick_channels, read_eeg
from emoray.io.video import SUPPORTED_VIDEO_EXTENSIONS, video_header
from emoray.labels import LabelSpace, to_common_scale
from emoray.types import EEG, MODALITIES, Audio, Trial, TrialSpec

MANIFEST_NAME = "manifest.csv"
ID_COLUMNS: tuple[str, ...] = ("subject", "session", "trial")
LABEL_COLUMNS: tuple[str, ...] = ("label", "valence", "arousal")
COLUMNS: tuple[str, ...] = (*ID_COLUMNS, *LABEL_COLUMNS, *MODALITIES, "events")


class _RowError(Exception):
    """A row-level problem that becomes a Rejection."""

    def __init__(self, kind: str, reason: str, field: str | None = None,
                 files: list[str] | None = None):
        super().__init__(reason)
        self.kind, self.reason, self.field, self.files = kind, reason, field, files or []


@register_adapter
class ManifestAdapter(DatasetAdapter):
    """Trials listed in a manifest CSV (see the module docstring for the columns).

    Parameters
    ----------
    root : str
        The CSV file, or a folder holding ``manifest.csv``.
    label_names : list[str] | None
        Class names of the ``label`` column (None: the five EAV classes).
    va_scale : tuple[float, float]
        The ``(low, high)`` scale of the valence/arousal columns, mapped onto [-1, 1].
    eeg_channels : list[str] | None
        Channels every trial's EEG is picked to (None: the first EEG file's channels).
    dataset : str
        Dataset name written into the records.
    video_fps : float
        Frame rate of frame folders that have no ``fps.txt``.
    events : dict | None
        How rows with an ``events`` cell become trials (:class:`EventSettings`: ``map``,
        ``pre``, ``post``, ``baseline``, ``overlap``, ``label_column``, ``stim_channel``;
        ``source`` applies to rows whose ``events`` cell is empty).
    """

    name = "manifest"

    @classmethod
    def write_example(cls, root: Path) -> tuple[str, dict]:
        from emoray.io.audio import write_audio
        from emoray.io.eeg import write_eeg

        rng = np.random.default_rng(0)
        root = Path(root)
        names = ["Fp1", "Fp2", "Cz", "Pz"]
        write_eeg(root / "s1" / "t1_raw.fif", EEG(
            (1e-5 * rng.standard_normal((4, 400))).astype(np.float32), 200.0, names))
        write_audio(root / "s1" / "t1.wav", Audio(
            rng.uniform(-0.2, 0.2, 32000).astype(np.float32), 16000))
        write_manifest(root / "manifest.csv", [
            {"subject": "s1", "trial": "1", "label": "anger", "eeg": root / "s1" / "t1_raw.fif",
             "audio": root / "s1" / "t1.wav"}])
        return str(root / "manifest.csv"), {}

    def __init__(self, root: str, *, label_names: list[str] | None = None,
                 va_scale: tuple[float, float] = (-1.0, 1.0),
                 eeg_channels: list[str] | None = None, dataset: str = "manifest",
                 video_fps: float = 30.0, events: dict[str, Any] | None = None):
        super().__init__(root, label_names=label_names, va_scale=va_scale,
                         eeg_channels=eeg_channels, dataset=dataset, video_fps=video_fps,
                         events=events)
        self.events = EventSettings.from_option(events)
        (self.label_names, self.va_scale, self.eeg_channels, self.dataset,
         self.video_fps) = check_options(label_names, va_scale, eeg_channels, dataset,
                                          video_fps)
        self.label_space = LabelSpace(self.dataset, self.label_names)
        root_path = Path(root)
        self.csv_path = root_path / MANIFEST_NAME if root_path.is_dir() else root_path
        self._listing: tuple[list[TrialSpec], list[Rejection]] | None = None
        self._info: DatasetInfo | None = None
        self._notes: list[str] = []

    # ------------------------------------------------------------------ reading the CSV
    @cached_property
    def _rows(self) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
        """(header, [(line number, row)]) with lower-cased, stripped column names."""
        where = str(self.csv_path)
        if not self.csv_path.is_file():
            raise DataError(where, f"manifest not found; expected a CSV file or a folder "
                            f"holding {MANIFEST_NAME}", kind="layout")
        try:
            with open(self.csv_path, newline="", encoding="utf-8-sig") as f:
                reader = csv.reader(f)
                header = [h.strip().lower() for h in next(reader, [])]
                rows = []
                for values in reader:
                    if not any(v.strip() for v in values):
                        continue   # blank line
                    if len(values) > len(header):
                        raise DataError(where, f"line {reader.line_num} has {len(values)} "
                                        f"cells but the header has {len(header)}",
                                        kind="layout")
                    cells = {h: v.strip() for h, v in zip(header, values)}
                    rows.append((reader.line_num, cells))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(where, f"cannot read manifest CSV: {exc}", kind="layout") from None
        missing = [c for c in ("subject",) if c not in header]
        if not any(c in header for c in LABEL_COLUMNS) and "events" not in header and \
                not self.events.source:
            missing.append("label|valence|arousal")
        if missing:
            raise DataError(where, f"missing column(s) {missing}; expected 'subject' and at "
                            f"least one of {list(LABEL_COLUMNS)} (columns found: {header})",
                            kind="layout")
        dupes = sorted({h for h in header if header.count(h) > 1 and h})
        if dupes:
            raise DataError(where, f"duplicate column(s) {dupes}", kind="layout")
        return header, rows

    def _rating(self, cells: dict[str, str], column: str) -> tuple[float | None, float | None]:
        """(common-scale value, raw value) of a valence/arousal cell; (None, None) if empty."""
        text = cells.get(column, "")
        if not text:
            return None, None
        try:
            raw = float(text)
        except ValueError:
            raw = math.nan
        low, high = self.va_scale
        if not math.isfinite(raw):
            raise _RowError("invalid_value", f"{column} {text!r} is not a number; expected "
                            f"a value in [{low:g}, {high:g}]", column)
        if not low <= raw <= high:
            raise _RowError("invalid_value", f"{column} {raw:g} is outside the scale "
                            f"[{low:g}, {high:g}] (option va_scale)", column)
        return to_common_scale(raw, low, high), raw

    def _label(self, cells: dict[str, str]) -> int | None:
        text = cells.get("label", "")
        if not text:
            return None
        try:
            as_float = float(text)
            if as_float.is_integer():
                text = str(int(as_float))   # "2.0" as written by pandas -> "2"
        except ValueError:
            pass
        try:
            return self.label_space.index(text)
        except DataError as err:
            raise _RowError("label", err.reason, "label") from None

    def _path(self, modality: str, text: str) -> str:
        path = Path(text).expanduser()
        path = path if path.is_absolute() else self.csv_path.parent / path
        path = Path(os.path.normpath(path))
        if modality == "video" and path.is_dir():
            return str(path)
        ext = str(path).lower()
        supported = {"eeg": SUPPORTED_EEG_EXTENSIONS, "audio": SUPPORTED_AUDIO_EXTENSIONS,
                     "video": SUPPORTED_VIDEO_EXTENSIONS, "events": ()}[modality]
        if path.exists() and not any(ext.endswith(e) for e in supported) and \
                modality != "events":
            raise _RowError("unknown_format", f"{modality} file {text!r} has an unsupported "
                            f"extension; expected one of {list(supported)}", modality,
                            [str(path)])
        if not path.exists():
            raise _RowError("unreadable", f"{modality} file {text!r} not found "
                            f"(looked for {path})", modality, [str(path)])
        return str(path)

    def _spec(self, index: int, cells: dict[str, str]) -> TrialSpec:
        subject = cells.get("subject", "")
        if not subject:
            raise _RowError("invalid_value", "subject is empty; expected a subject id",
                            "subject")
        label = self._label(cells)
        valence, valence_raw = self._rating(cells, "valence")
        arousal, arousal_raw = self._rating(cells, "arousal")
        if label is None and valence is None and arousal is None:
            raise _RowError("label", "row has no label, valence or arousal", "label")
        refs = {m: {"path": self._path(m, cells[m])} for m in MODALITIES if cells.get(m)}
        if not refs:
            raise _RowError("invalid_value", f"row names no {'/'.join(MODALITIES)} file; "
                            "expected at least one modality")
        extra: dict[str, Any] = {k: v for k, v in cells.items() if k not in COLUMNS and k and v}
        if valence_raw is not None:
            extra["valence_raw"] = valence_raw
        if arousal_raw is not None:
            extra["arousal_raw"] = arousal_raw
        return TrialSpec(dataset=self.dataset, subject=subject,
                         session=cells.get("session") or "1",
                         trial=cells.get("trial") or str(index), label=label,
                         valence=valence, arousal=arousal, refs=refs, extra=extra)

    # ------------------------------------------------------------------ adapter interface
    def list_trials(self) -> tuple[list[TrialSpec], list[Rejection]]:
        """One TrialSpec per good row; bad rows become Rejections naming the CSV line."""
        if self._listing is not None:
            return self._listing
        _, rows = self._rows
        specs: list[TrialSpec] = []
        rejections: list[Rejection] = []
        seen: dict[str, int] = {}
        for index, (line, cells) in enumerate(rows, start=1):
            trial_id = (f"{self.dataset}/{cells.get('subject', '')}/"
                        f"{cells.get('session') or '1'}/{cells.get('trial') or index}")
            try:
                if cells.get("events") or self.events.source:
                    found, rejected = self._event_specs(index, cells)
                    rejections.extend(rejected)
                else:
                    found = [self._spec(index, cells)]
                for spec in found:
                    if spec.trial_id in seen:
                        raise _RowError("invalid_value", f"duplicate trial id "
                                        f"{spec.trial_id!r} (first at line "
                                        f"{seen[spec.trial_id]})", "trial")
            except _RowError as err:
                files = err.files or [str(self.csv_path)]
                rejections.append(Rejection(trial_id, files, err.kind,
                                            f"{self.csv_path}:{line}: {err.reason}",
                                            err.field))
                continue
            for spec in found:
                seen[spec.trial_id] = line
                spec.extra["manifest_line"] = line
                specs.append(spec)
        self._listing = (specs, rejections)
        return self._listing

    def _event_specs(self, index: int, cells: dict[str, str]):
        """A row naming a continuous recording: one spec per event (module docstring)."""
        where = cells.get("events") or self.events.source
        if where.lower() in SOURCES[1:]:
            events_file, source = None, where.lower()
        elif where.lower() == "file":
            raise _RowError("invalid_value", "events.source is 'file' but the row's events "
                            "cell is empty; expected an events file path", "events")
        else:
            events_file, source = self._path("events", where), "file"
        if not cells.get("subject"):
            raise _RowError("invalid_value", "subject is empty; expected a subject id",
                            "subject")
        paths = {m: self._path(m, cells[m]) for m in MODALITIES if cells.get(m)}
        if not paths:
            raise _RowError("invalid_value", f"row names no {'/'.join(MODALITIES)} file; "
                            "expected the recording the events belong to")
        extra = {k: v for k, v in cells.items() if k not in COLUMNS and k and v}
        rec = Recording(self.dataset, cells["subject"], cells.get("session") or "1",
                        cells.get("trial") or str(index), events_file=events_file,
                        source=source, extra=extra, **paths)
        found = event_trials(rec, self.events, self.label_space, self.va_scale,
                             video_fps=self.video_fps)
        if found.not_trials:
            self._notes.append(f"{rec.trial_id}: events not in events.map (not trials): "
                               + ", ".join(f"{d!r} x{n}" for d, n in
                                           sorted(found.not_trials.items())))
        if found.overlaps and self.events.overlap == "keep":
            self._notes.append(f"{rec.trial_id}: {found.overlaps} trial window(s) overlap "
                               "an earlier one (events.overlap=keep)")
        return found.specs, found.rejections

    def _first_header(self, modality: str, read):
        """The header of the first listed file of ``modality`` that can be read."""
        for spec in self.list_trials()[0]:
            if modality in spec.refs:
                try:
                    return read(spec.refs[modality]["path"])
                except DataError:
                    continue   # a corrupt file is rejected when its trial is loaded
        return None

    @cached_property
    def _eeg_header(self) -> tuple[list[str], float, int] | None:
        return self._first_header("eeg", eeg_header)

    def info(self) -> DatasetInfo:
        """Modalities present, and rates/channels from the first readable file headers."""
        if self._info is not None:
            return self._info
        _, rows = self._rows
        self.list_trials()      # fills the event notes
        modalities = [m for m in MODALITIES if any(cells.get(m) for _, cells in rows)]
        eeg = self._eeg_header if "eeg" in modalities else None
        audio = self._first_header("audio", audio_header) if "audio" in modalities else None
        video = (self._first_header("video", lambda p: video_header(
            p, frames_fps=self.video_fps)) if "video" in modalities else None)
        video_fps = video[0] if video else None
        if self.video_sample_fps is not None:
            video_fps = (min(float(self.video_sample_fps), video_fps) if video_fps
                         else float(self.video_sample_fps))
        channels = self.eeg_channels or (list(eeg[0]) if eeg else None)
        self._info = DatasetInfo(
            name=self.dataset, label_names=list(self.label_names), modalities=modalities,
            eeg_channels=channels, eeg_sfreq=eeg[1] if eeg else None,
            audio_rate=audio[0] if audio else None, video_fps=video_fps,
            notes=[f"manifest {self.csv_path}", *self._notes])
        return self._info

    def load_trial(self, spec: TrialSpec) -> Trial:
        """Read every modality the spec names; EEG is picked to the dataset's channels."""
        if "window" in spec.extra:      # one event of a continuous recording
            # ingest picks the dataset's channels; the first header would list every
            # recording's events again in each Ray task
            trial = load_event_trial(spec, lambda p: self.read_video(p, fps_hint=self.video_fps))
            if trial.eeg is not None and self.eeg_channels:
                trial.eeg = pick_channels(trial.eeg, self.eeg_channels)
            return trial
        trial = Trial(spec=spec)
        if "eeg" in spec.refs:
            eeg = read_eeg(spec.refs["eeg"]["path"])
            channels = self.eeg_channels or (self._eeg_header[0] if self._eeg_header else None)
            trial.eeg = pick_channels(eeg, channels) if channels else eeg
        if "audio" in spec.refs:
            trial.audio = read_audio(spec.refs["audio"]["path"])
        if "video" in spec.refs:
            trial.video = self.read_video(spec.refs["video"]["path"], fps_hint=self.video_fps)
        return trial
