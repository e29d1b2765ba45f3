"""SEED (Zheng & Lu 2015), preprocessed EEG: adapter and fake-data twin.

On-disk layout::

    Preprocessed_EEG/<subject>_<YYYYMMDD>.mat   # <initials>_eeg1 ... _eeg15: (62, ~47000) @ 200 Hz
    Preprocessed_EEG/label.mat                  # `label`: (1, 15) in {-1, 0, 1}

Each subject took part in three sessions (one file each); the sessions are the subject's
files sorted by date. Every session shows the same 15 film clips, whose labels
(negative -1, neutral 0, positive 1) are in ``label.mat``. The variable prefix (the
subject's initials) differs between subjects, so clips are found by the ``_eegN`` suffix.
Listing reads only the variables' headers; loading reads one clip's variable.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from pathlib import Path

import numpy as np

from emoray.datasets.base import DatasetAdapter, DatasetInfo, Rejection, register_adapter
from emoray.datasets._matio import loadmat, variables
from emoray.errors import DataError
from emoray.io.eeg import normalize_channel_name
from emoray.types import EEG, Trial, TrialSpec

# The 62 ESI NeuroScan cap channels in SEED's channel order (as in its channel-order.xlsx).
_SEED_RAW_CHANNELS: tuple[str, ...] = (
    "FP1", "FPZ", "FP2", "AF3", "AF4", "F7", "F5", "F3", "F1", "FZ", "F2", "F4", "F6", "F8",
    "FT7", "FC5", "FC3", "FC1", "FCZ", "FC2", "FC4", "FC6", "FT8", "T7", "C5", "C3", "C1",
    "CZ", "C2", "C4", "C6", "T8", "TP7", "CP5", "CP3", "CP1", "CPZ", "CP2", "CP4", "CP6",
    "TP8", "P7", "P5", "P3", "P1", "PZ", "P2", "P4", "P6", "P8", "PO7", "PO5", "PO3", "POZ",
    "PO4", "PO6", "PO8", "CB1", "O1", "OZ", "O2", "CB2",
)
SEED_CHANNELS: tuple[str, ...] = tuple(normalize_channel_name(n) for n in _SEED_RAW_CHANNELS)
SEED_SFREQ = 200.0
SEED_CLASSES: tuple[str, ...] = ("negative", "neutral", "positive")
SEED_FOLDER = "Preprocessed_EEG"
#: The label sequence of SEED's 15 clips (the same in every session).
SEED_LABELS: tuple[int, ...] = (1, 0, -1, -1, 0, 1, -1, 0, 1, 1, 0, -1, 0, 1, -1)

_SESSION_FILE = re.compile(r"^([^_]+)_(\d{8})\.mat$")
_CLIP_VAR = re.compile(r"^(.+)_eeg(\d+)$")


@register_adapter
class SEEDAdapter(DatasetAdapter):
    """Read SEED's ``Preprocessed_EEG``: 15 subjects x 3 sessions x 15 film clips.

    Parameters
    ----------
    root : str
        The folder holding ``Preprocessed_EEG/`` (or that folder itself).
    eeg_scale : float
        Factor from file units to volts (the files hold microvolts).
    """

    name = "seed"

    @classmethod
    def write_example(cls, root: Path) -> tuple[str, dict]:
        write_fake(root, n_subjects=1, n_sessions=1, n_clips=3, seconds=1.0,
                   rng=np.random.default_rng(0))
        return str(root), {}

    def __init__(self, root: str, *, eeg_scale: float = 1e-6):
        super().__init__(root, eeg_scale=eeg_scale)
        self.eeg_scale = float(eeg_scale)

    def _folder(self) -> Path:
        root = Path(self.root).absolute()    # specs travel to Ray tasks: absolute paths
        for folder in (root / SEED_FOLDER, root):
            if (folder / "label.mat").is_file():
                return folder
        raise DataError(self.root, f"no {SEED_FOLDER}/label.mat here; expected the SEED "
                        f"layout {SEED_FOLDER}/<subject>_<YYYYMMDD>.mat and "
                        f"{SEED_FOLDER}/label.mat", kind="layout")

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            name=self.name, label_names=list(SEED_CLASSES), modalities=["eeg"],
            eeg_channels=list(SEED_CHANNELS), eeg_sfreq=SEED_SFREQ, trial_seconds=None,
            label_scale="valence = clip label in {-1, 0, 1}; arousal not rated (NaN)",
            notes=["class index = label + 1 (negative, neutral, positive)",
                   "sessions are each subject's files sorted by date"])

    def _labels(self, folder: Path) -> np.ndarray:
        path = folder / "label.mat"
        mat = loadmat(str(path), ["label"])
        if "label" not in mat:
            raise DataError(str(path), "no variable 'label'; expected (1, 15) in {-1, 0, 1}",
                            kind="layout", field="label")
        return np.asarray(mat["label"]).ravel()

    def _sessions(self, folder: Path) -> list[tuple[str, str, Path]]:
        """(subject, session, path) for every session file, sessions numbered by date."""
        by_subject: dict[str, list[tuple[str, Path]]] = {}
        for path in folder.iterdir():
            m = _SESSION_FILE.match(path.name)
            if m:
                by_subject.setdefault(m.group(1), []).append((m.group(2), path))
        if not by_subject:
            raise DataError(str(folder), "no <subject>_<YYYYMMDD>.mat files next to "
                            "label.mat; expected the SEED layout", kind="layout")
        out = []
        for subject in sorted(by_subject, key=lambda s: (not s.isdigit(), s.zfill(8))):
            name = f"{int(subject):02d}" if subject.isdigit() else subject
            for n, (_, path) in enumerate(sorted(by_subject[subject]), start=1):
                out.append((name, str(n), path))
        return out

    def list_trials(self) -> tuple[list[TrialSpec], list[Rejection]]:
        folder = self._folder()
        labels = self._labels(folder)
        specs: list[TrialSpec] = []
        rejections: list[Rejection] = []
        for subject, session, path in self._sessions(folder):
            try:
                clips = _clip_headers(str(path))
            except DataError as err:
                rejections.append(Rejection.from_error(f"seed/{subject}/{session}",
                                                       [str(path)], err))
                continue
            for k in range(1, max([len(labels), *clips]) + 1):
                trial_id = f"seed/{subject}/{session}/{k:02d}"
                try:
                    specs.append(self._spec(subject, session, path, k, clips, labels))
                except DataError as err:
                    rejections.append(Rejection.from_error(trial_id, [str(path)], err))
        return specs, rejections

    def _spec(self, subject: str, session: str, path: Path, k: int,
              clips: dict[int, tuple[str, tuple[int, ...]]], labels: np.ndarray) -> TrialSpec:
        if k not in clips:
            raise DataError(str(path), f"no variable <initials>_eeg{k} for clip {k} "
                            f"(label.mat has {len(labels)} clips)", kind="unreadable",
                            field="eeg")
        var, shape = clips[k]
        if len(shape) != 2 or shape[0] != len(SEED_CHANNELS):
            raise DataError(str(path), f"variable {var!r} has shape {shape}; expected "
                            f"({len(SEED_CHANNELS)}, samples)", kind="missing_channel",
                            field="eeg")
        if k > len(labels):
            raise DataError(str(path), f"clip {k} has no label: label.mat holds "
                            f"{len(labels)}", kind="label", field="label")
        value = labels[k - 1]
        if value not in (-1, 0, 1):
            raise DataError(str(path), f"clip {k} label {value!r} outside {{-1, 0, 1}}",
                            kind="label", field="label")
        return TrialSpec(dataset=self.name, subject=subject, session=session,
                         trial=f"{k:02d}", label=int(value) + 1, valence=float(value),
                         arousal=float("nan"), refs={"eeg": {"path": str(path), "var": var}},
                         extra={"date": _SESSION_FILE.match(path.name).group(2)})  # type: ignore

    def load_trial(self, spec: TrialSpec) -> Trial:
        ref = spec.refs["eeg"]
        path, var = str(ref["path"]), str(ref["var"])
        mat = loadmat(path, [var])
        if var not in mat:
            raise DataError(path, f"no variable {var!r}", kind="unreadable", field="eeg")
        data = np.asarray(mat[var], dtype=np.float64)           # (62, T) microvolts
        if data.ndim != 2 or data.shape[0] != len(SEED_CHANNELS):
            raise DataError(path, f"variable {var!r} has shape {data.shape}; expected "
                            f"({len(SEED_CHANNELS)}, samples)", kind="missing_channel",
                            field="eeg")
        eeg = EEG(data * self.eeg_scale, SEED_SFREQ, list(SEED_CHANNELS), source=path)
        return Trial(spec=spec, eeg=eeg)


# ---------------------------------------------------------------------- .mat access
def _clip_headers(path: str) -> dict[int, tuple[str, tuple[int, ...]]]:
    """Clip number -> (variable, shape) from the file's variable headers."""
    clips: dict[int, tuple[str, tuple[int, ...]]] = {}
    found = variables(path, field="eeg")
    for name, shape in sorted(found.items()):
        m = _CLIP_VAR.match(name)
        if m and int(m.group(2)) not in clips:
            clips[int(m.group(2))] = (name, tuple(shape))
    if not clips:
        raise DataError(path, f"no <initials>_eegN variables (found {sorted(found)})",
                        kind="unreadable", field="eeg")
    return clips


# ---------------------------------------------------------------------- fake-data twin
def write_fake(root: str | os.PathLike, *, n_subjects: int, n_sessions: int = 3,
               n_clips: int = 15, seconds: float, rng: np.random.Generator) -> None:
    """Write a small SEED ``Preprocessed_EEG`` folder with random EEG.

    Parameters
    ----------
    root : path
        Dataset root; ``Preprocessed_EEG/`` is created under it.
    n_subjects, n_sessions, n_clips : int
        Subjects (files ``1_<date>.mat`` ...), sessions per subject, clips per session.
    seconds : float
        Length of every clip at 200 Hz.
    rng : np.random.Generator
        Source of the signals, the subjects' initials and the session dates.
    """
    import scipy.io

    folder = Path(root) / SEED_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.array([SEED_LABELS[k % len(SEED_LABELS)] for k in range(n_clips)])
    scipy.io.savemat(folder / "label.mat", {"label": labels[None, :].astype(np.int16)})
    n_samples = int(round(seconds * SEED_SFREQ))
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    start = _dt.date(2013, 10, 1)
    for s in range(1, n_subjects + 1):
        initials = "".join(rng.choice(letters, size=int(rng.integers(2, 4))))
        day = start + _dt.timedelta(days=int(rng.integers(0, 60)))
        for _ in range(n_sessions):
            arrays = {f"{initials}_eeg{k}": 20.0 * rng.standard_normal(
                (len(SEED_CHANNELS), n_samples)) for k in range(1, n_clips + 1)}   # (62, T)
            scipy.io.savemat(folder / f"{s}_{day:%Y%m%d}.mat", arrays)
            day += _dt.timedelta(days=int(rng.integers(7, 15)))
