"""EEG-BIDS datasets (``--layout bids``) through mne-bids: one trial per event.

Layout (what ``mne_bids.write_raw_bids`` writes)::

    participants.tsv                                   # participant_id, age, sex, ...
    sub-01/[ses-1/]eeg/sub-01_[ses-1_]task-emo_[run-1_]eeg.edf   # or .bdf/.vhdr/.set
    sub-01/[ses-1/]eeg/sub-01_[ses-1_]task-emo_[run-1_]events.tsv
    sub-01/[ses-1/]eeg/sub-01_[ses-1_]task-emo_[run-1_]channels.tsv   # status: good/bad
    sub-01/[ses-1/]eeg/sub-01_[ses-1_]task-emo_[run-1_]audio.wav  # emoray's convention
    sub-01/[ses-1/]eeg/sub-01_[ses-1_]task-emo_[run-1_]video.mp4  # emoray's convention

mne-bids finds the recordings (``find_matching_paths``) and their entities: the subject
and session become the record's ids, the task/acquisition/run its trial name
(``task-emo_run-1-003`` for the third event). ``read_raw_bids`` reads ``channels.tsv``:
channels whose ``status`` is ``bad`` in any recording are left out of the dataset's
channel list (the run's notes name them), so every record keeps the same channels.

Trials come from ``*_events.tsv`` (:mod:`emoray.datasets.events`): the label from
``trial_type`` (or the column ``events.label_column`` names), mapped by ``events.map`` when
given, optional ``valence``/``arousal`` columns on ``va_scale``; every other column
(``value``, ``sample``, ``stim_file`` ...) is kept in the record's ``extra``. So is the
subject's row of ``participants.tsv`` (under ``participant``), read with ``csv`` because
mne-bids keeps only a few of its fields (``subject_info``).

BIDS has no standard for recordings of the participant's speech or face. emoray's
convention: a continuous ``_audio`` / ``_video`` file beside the EEG with the same
entities, starting with the EEG's first sample, cut by the same event windows. (BIDS's
``stim_file`` names the stimulus *shown*, e.g. a film clip, not a recording of the
participant: it stays in ``extra``.) Add ``*_audio.*`` and ``*_video.*`` to the tree's
``.bidsignore`` so the BIDS validator accepts them.
"""

from __future__ import annotations

import csv
import warnings
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from emoray.datasets._userdata import check_options
from emoray.datasets.base import DatasetAdapter, DatasetInfo, Rejection, register_adapter
from emoray.datasets.event_trials import Recording, event_trials, load_event_trial
from emoray.datasets.events import EventSettings
from emoray.errors import ConfigError, DataError
from emoray.io.audio import SUPPORTED_AUDIO_EXTENSIONS, audio_header
from emoray.io.eeg import eeg_header, normalize_channel_name
from emoray.io.video import SUPPORTED_VIDEO_EXTENSIONS, video_header
from emoray.labels import LabelSpace
from emoray.types import Trial, TrialSpec

BIDS_EEG_EXTENSIONS: tuple[str, ...] = (".edf", ".bdf", ".vhdr", ".set")


@register_adapter
class BIDSAdapter(DatasetAdapter):
    """Read an EEG-BIDS tree (see the module docstring).

    Parameters
    ----------
    root : str
        The BIDS root (holding ``dataset_description.json`` and ``sub-*/``).
    label_names, va_scale, eeg_channels, dataset, video_fps
        As for the ``manifest`` layout.
    events : dict | None
        :class:`~emoray.datasets.events.EventSettings` (``map``, ``pre``, ``post``,
        ``baseline``, ``overlap``, ``label_column``); ``source: annotations`` or ``stim``
        reads the recordings' own events instead of ``*_events.tsv``.
    tasks : list[str] | None
        Only these BIDS tasks (None: all).
    """

    name = "bids"

    @classmethod
    def write_example(cls, root: Path) -> tuple[str, dict]:
        import mne
        from mne_bids import BIDSPath, write_raw_bids

        rng = np.random.default_rng(0)
        info = mne.create_info(["Fp1", "Fp2", "Cz", "Pz"], 128.0, "eeg")
        raw = mne.io.RawArray(1e-5 * rng.standard_normal((4, 128 * 12)), info, verbose="error")
        raw.set_annotations(mne.Annotations([1.0, 6.0], [4.0, 4.0], ["anger", "calmness"]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            write_raw_bids(raw, BIDSPath(subject="01", task="emo", datatype="eeg",
                                         root=Path(root) / "bids"),
                           allow_preload=True, format="EDF", overwrite=True, verbose="error")
        return str(Path(root) / "bids"), {}

    def __init__(self, root: str, *, label_names: list[str] | None = None,
                 va_scale: tuple[float, float] = (-1.0, 1.0),
                 eeg_channels: list[str] | None = None, dataset: str = "bids",
                 video_fps: float = 30.0, events: dict[str, Any] | None = None,
                 tasks: list[str] | None = None):
        super().__init__(root, label_names=label_names, va_scale=va_scale,
                         eeg_channels=eeg_channels, dataset=dataset, video_fps=video_fps,
                         events=events, tasks=tasks)
        (self.label_names, self.va_scale, self.eeg_channels, self.dataset,
         self.video_fps) = check_options(label_names, va_scale, eeg_channels, dataset,
                                         video_fps)
        self.events = EventSettings.from_option(events)
        if tasks is not None and (isinstance(tasks, str) or not all(
                isinstance(t, str) for t in tasks)):
            raise ConfigError(f"bids option tasks={tasks!r}: expected a list of task names")
        self.tasks = list(tasks) if tasks is not None else None
        self.label_space = LabelSpace(self.dataset, self.label_names)
        self._notes: list[str] = []

    # ------------------------------------------------------------------ the tree
    def _paths(self) -> list[Any]:
        from mne_bids import find_matching_paths

        root = Path(self.root).absolute()     # specs travel to Ray tasks: absolute paths
        if not root.is_dir() or not any(root.glob("sub-*")):
            raise DataError(str(root), "no sub-* folders; expected a BIDS root (sub-01/"
                            "[ses-1/]eeg/sub-01_task-X_eeg.edf ...)", kind="layout")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            paths = find_matching_paths(root, tasks=self.tasks, datatypes="eeg",
                                        suffixes="eeg", extensions=list(BIDS_EEG_EXTENSIONS))
        if not paths:
            raise DataError(str(root), f"no EEG recordings (*_eeg with one of "
                            f"{list(BIDS_EEG_EXTENSIONS)}"
                            + (f", tasks {self.tasks}" if self.tasks else "") + ")",
                            kind="layout")
        return sorted(paths, key=lambda p: str(p.fpath))

    @cached_property
    def _participants(self) -> dict[str, dict[str, str]]:
        path = Path(self.root) / "participants.tsv"
        if not path.is_file():
            return {}
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                rows = list(csv.DictReader(f, delimiter="\t"))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(str(path), f"cannot read participants.tsv: {exc}",
                            kind="layout") from None
        return {(r.get("participant_id") or "").strip(): {
            k.strip(): v.strip() for k, v in r.items() if k and k != "participant_id"
            and v and v.strip().lower() != "n/a"} for r in rows}

    def _recording(self, bp: Any) -> Recording:
        from mne_bids import read_raw_bids

        ent = bp.entities
        name = "_".join(f"{key}-{ent[e]}" for key, e in (
            ("task", "task"), ("acq", "acquisition"), ("run", "run")) if ent.get(e))
        events = bp.copy().update(suffix="events", extension=".tsv").fpath
        use_file = self.events.source in (None, "file")
        stem = bp.fpath.name[:-len(bp.fpath.name.split("_")[-1]) - 1]    # without _eeg.ext
        media = {m: next((str(p) for p in sorted(bp.fpath.parent.glob(f"{stem}_{m}.*"))
                          if p.name.lower().endswith(exts)), None)
                 for m, exts in (("audio", SUPPORTED_AUDIO_EXTENSIONS),
                                 ("video", SUPPORTED_VIDEO_EXTENSIONS))}
        extra = {"task": ent.get("task"), "run": ent.get("run"), "bids": bp.fpath.name,
                 "participant": self._participants.get(f"sub-{ent['subject']}", {})}
        rec = Recording(self.dataset, ent["subject"], ent.get("session") or "1", name or "rec",
                        eeg=str(bp.fpath), events_file=str(events) if use_file else None,
                        source=self.events.source or "file", extra=extra, **media)
        if use_file and not events.is_file():
            raise DataError(str(bp.fpath), f"no events file {events.name} beside the "
                            "recording; expected BIDS *_events.tsv (or set events.source to "
                            "annotations/stim)", kind="layout", field="events")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rec.bads = list(read_raw_bids(bp, verbose="error").info["bads"])
        except Exception as exc:   # mne-bids raises many types on a broken sidecar
            raise DataError(str(bp.fpath), f"mne-bids cannot read this recording: "
                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                            kind="unreadable", field="eeg") from None
        return rec

    @cached_property
    def _listing(self) -> tuple[list[TrialSpec], list[Rejection], list[Recording]]:
        specs: list[TrialSpec] = []
        rejections: list[Rejection] = []
        recordings: list[Recording] = []
        for bp in self._paths():
            ent = bp.entities
            rid = f"{self.dataset}/{ent['subject']}/{ent.get('session') or '1'}/" \
                  f"{bp.fpath.name}"
            try:
                rec = self._recording(bp)
            except DataError as err:
                rejections.append(Rejection.from_error(rid, [str(bp.fpath)], err))
                continue
            found = event_trials(rec, self.events, self.label_space, self.va_scale,
                                 video_fps=self.video_fps,
                                 label_defaults=("trial_type", "label"))
            specs.extend(found.specs)
            rejections.extend(found.rejections)
            recordings.append(rec)
            if found.not_trials:
                self._notes.append(f"{rec.trial_id}: events not in events.map (not "
                                   "trials): " + ", ".join(
                                       f"{d!r} x{n}" for d, n in sorted(found.not_trials.items())))
            if found.overlaps and self.events.overlap == "keep":
                self._notes.append(f"{rec.trial_id}: {found.overlaps} trial window(s) "
                                   "overlap an earlier one (events.overlap=keep)")
        return specs, rejections, recordings

    # ------------------------------------------------------------------ adapter interface
    def list_trials(self) -> tuple[list[TrialSpec], list[Rejection]]:
        specs, rejections, _ = self._listing
        return specs, rejections

    @cached_property
    def _channels(self) -> tuple[list[str] | None, float | None, list[str]]:
        """(dataset channels without any recording's bads, sample rate, the bads)."""
        specs, _, recordings = self._listing
        bads = sorted({normalize_channel_name(b) for r in recordings for b in r.bads})
        for spec in specs:
            try:
                names, sfreq, _ = eeg_header(spec.refs["eeg"]["path"])
            except DataError:
                continue      # rejected when its trials are loaded
            channels = self.eeg_channels or names
            return [c for c in channels if c not in bads], sfreq, bads
        return self.eeg_channels, None, bads

    def info(self) -> DatasetInfo:
        specs, _, recordings = self._listing
        channels, sfreq, bads = self._channels
        modalities = ["eeg"] + [m for m in ("audio", "video")
                                if any(getattr(r, m) for r in recordings)]
        audio = next((audio_header(r.audio) for r in recordings if r.audio), None)
        video = next((video_header(r.video, frames_fps=self.video_fps)
                      for r in recordings if r.video), None)
        video_fps = video[0] if video else None
        if video_fps and self.video_sample_fps is not None:
            video_fps = min(float(self.video_sample_fps), video_fps)
        notes = [f"BIDS {self.root}: {len(recordings)} recording(s)"]
        if bads:
            notes.append(f"channels marked bad in channels.tsv, left out: {bads}")
        return DatasetInfo(name=self.dataset, label_names=list(self.label_names),
                           modalities=modalities, eeg_channels=channels, eeg_sfreq=sfreq,
                           audio_rate=audio[0] if audio else None, video_fps=video_fps,
                           notes=notes + self._notes)

    def load_trial(self, spec: TrialSpec) -> Trial:
        """The event's window; bad channels dropped (ingest then picks the dataset's
        channels, so loading does not list the tree again in every Ray task)."""
        return load_event_trial(spec, lambda p: self.read_video(p, fps_hint=self.video_fps))
