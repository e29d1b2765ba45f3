"""The EAV dataset's on-disk layout: its constants, the scan of a subject's folder
(labels, EEG variables, media files and their parity) and the ``.mat`` access; the
adapter itself is :mod:`emoray.datasets.eav`."""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emoray.datasets._matio import loadmat, variables
from emoray.datasets.base import Rejection
from emoray.errors import DataError
from emoray.labels import EAV_CLASSES

# The EAV paper describes a 30-channel 10-20 cap, but neither its loaders nor its README
# name the channels. This is the standard 30-electrode 10-20 subset of the 32-channel
# actiCAP/BrainCap layout (without the mastoid sites TP9/TP10); not checked against the paper.
EAV_CHANNELS: tuple[str, ...] = (
    "Fp1", "Fp2", "F7", "F3", "Fz", "F4", "F8", "FC5", "FC1", "FC2", "FC6", "T7", "C3",
    "Cz", "C4", "T8", "CP5", "CP1", "CP2", "CP6", "P7", "P3", "Pz", "P4", "P8", "PO9",
    "O1", "Oz", "O2", "PO10",
)
EAV_SFREQ = 500.0
EAV_TRIAL_SECONDS = 20.0
EAV_VIDEO_FPS = 30.0
#: Variables that hold the EEG; the dataset's loader takes `seg1` when it is 3-D.
EEG_VARIABLES: tuple[str, ...] = ("seg1", "seg")

_SUBJECT_DIR = re.compile(r"^subject(\d+)$")
_MEDIA = (("video", "Video", ".mp4"), ("audio", "Audio", ".wav"))
_TASKS = ("speaking", "listening")


# ---------------------------------------------------------------------- scanning
@dataclass
class _TrialScan:
    """What listing learned about one trial (label row, media files, problems)."""

    index: int                        # 0-based index into the EEG/label arrays
    row: int | None                   # argmax row of the label column; None if not one-hot
    label_path: Path
    media: dict[str, Path] = field(default_factory=dict)          # modality -> file
    name_task: dict[str, str] = field(default_factory=dict)       # modality -> task word
    name_emotion: dict[str, str] = field(default_factory=dict)    # modality -> field 5
    problems: list[DataError] = field(default_factory=list)

    def task(self, parity: int) -> str | None:
        if self.row is not None:
            return "listening" if self.row % 2 == parity else "speaking"
        words = set(self.name_task.values())
        return words.pop() if len(words) == 1 else None

    def files(self, scan: _SubjectScan) -> list[str]:
        return [str(self.label_path), str(scan.eeg_path)] + [str(p) for p in
                                                             self.media.values()]

    def check(self, parity: int) -> None:
        """Raise the first problem: a bad label column, a clash with the file names."""
        if self.problems:
            raise self.problems[0]
        assert self.row is not None
        emotion = EAV_CLASSES[self.row // 2]
        task = self.task(parity)
        for modality, path in sorted(self.media.items()):
            word = self.name_emotion[modality]
            if word.lower() != emotion:
                raise DataError(str(path), f"emotion {word!r} (file-name field 5) disagrees "
                                f"with the label matrix: column {self.index + 1} has its 1 in "
                                f"row {self.row} = {emotion!r}", kind="label", field="label")
            said = self.name_task.get(modality)
            if said is not None and said != task:
                raise DataError(str(path), f"file name says {said!r} but label row "
                                f"{self.row} means {task!r} with listening_parity={parity}",
                                kind="label", field="label")


@dataclass
class _SubjectScan:
    subject: str                      # "NN"
    eeg_path: Path
    eeg_var: str | None
    trials: list[_TrialScan]
    rejections: list[Rejection]
    n_samples: int | None = None      # T of the EEG array (all trials share it)


def _trial_id(subject: str, index: int) -> str:
    return f"eav/{subject}/1/{index + 1:03d}"


def _scan_subject(num: int, folder: Path) -> _SubjectScan:
    subject = f"{num:02d}"
    eeg_path = folder / "EEG" / f"{folder.name}_eeg.mat"
    label_path = folder / "EEG" / f"{folder.name}_eeg_label.mat"
    try:
        labels = _read_labels(label_path)                 # (10, n)
    except DataError as err:
        return _SubjectScan(subject, eeg_path, None, [], [Rejection.from_error(
            f"eav/{subject}", [str(label_path)], err)])
    n_labels = labels.shape[1]
    try:
        var, shape = _eeg_header(str(eeg_path))
        if shape[1] != len(EAV_CHANNELS):
            raise DataError(str(eeg_path), f"variable {var!r} has shape {shape}: "
                            f"{shape[1]} channels, expected {len(EAV_CHANNELS)} (T, C, trials)",
                            kind="missing_channel", field="eeg")
    except DataError as err:
        rejected = [Rejection.from_error(_trial_id(subject, i), [str(eeg_path)], err)
                    for i in range(n_labels)]
        return _SubjectScan(subject, eeg_path, None, [], rejected)
    n_eeg = shape[2]
    trials = [_trial_from_column(i, labels, label_path) for i in range(min(n_labels, n_eeg))]
    rejections = _attach_media(folder, subject, trials)
    for i in range(min(n_labels, n_eeg), max(n_labels, n_eeg)):
        if i >= n_eeg:
            err = DataError(str(eeg_path), f"variable {var!r} holds {n_eeg} trials but the "
                            f"label file has {n_labels} columns", kind="truncated", field="eeg")
        else:
            err = DataError(str(label_path), f"no label column {i + 1}: the label file has "
                            f"{n_labels} columns for {n_eeg} EEG trials", kind="label",
                            field="label")
        rejections.append(Rejection.from_error(_trial_id(subject, i), [err.path or ""], err))
    return _SubjectScan(subject, eeg_path, var, trials, rejections, n_samples=shape[0])


def _trial_from_column(i: int, labels: np.ndarray, label_path: Path) -> _TrialScan:
    column = labels[:, i]
    hot = np.flatnonzero(column != 0)
    if len(hot) == 1 and column[hot[0]] == 1:
        return _TrialScan(i, int(hot[0]), label_path)
    trial = _TrialScan(i, None, label_path)
    trial.problems.append(DataError(str(label_path), f"label column {i + 1} is not one-hot "
                                    f"({len(hot)} non-zero entries); expected exactly one 1 "
                                    "among the 10 rows", kind="label", field="label"))
    return trial


def _attach_media(folder: Path, subject: str, trials: list[_TrialScan]) -> list[Rejection]:
    """Find each trial's video/audio by the trial number that starts the file name."""
    rejections: list[Rejection] = []
    for modality, sub, ext in _MEDIA:
        media_dir = folder / sub
        if not media_dir.is_dir():
            continue
        for path in sorted(media_dir.iterdir()):
            if path.name.startswith(".") or path.suffix.lower() != ext:
                continue
            try:
                index, task, emotion = _parse_media_name(path)
                if index >= len(trials):
                    raise DataError(str(path), f"trial number {index + 1} in the file name, "
                                    f"but the EEG/label files hold {len(trials)} trials",
                                    kind="invalid_value", field=modality)
            except DataError as err:
                rejections.append(Rejection.from_error(
                    f"eav/{subject}/1/{path.name}", [str(path)], err))
                continue
            trial = trials[index]
            if modality in trial.media:
                trial.problems.append(DataError(str(path), f"two {modality} files for trial "
                                                f"{index + 1}: {trial.media[modality].name} "
                                                "and this one", kind="invalid_value",
                                                field=modality))
                continue
            trial.media[modality] = path
            trial.name_emotion[modality] = emotion
            if task is not None:
                trial.name_task[modality] = task
    return rejections


def _parse_media_name(path: Path) -> tuple[int, str | None, str]:
    fields = path.stem.split("_")
    if len(fields) < 5 or not fields[0].isdigit() or int(fields[0]) < 1:
        raise DataError(str(path), "file name does not parse; expected '_'-separated fields "
                        "starting with the trial number and the emotion as the fifth, e.g. "
                        "007_Trial_04_Speaking_Anger_aud.wav", kind="invalid_value",
                        field="label")
    words = {w.lower() for w in fields}
    tasks = [task for task in _TASKS if task in words]
    return int(fields[0]) - 1, (tasks[0] if len(tasks) == 1 else None), fields[4]


def _choose_parity(scans: list[_SubjectScan], option: str) -> tuple[dict[str, int], str]:
    """Listening parity per subject and a sentence saying how it was chosen.

    ``auto``: each subject takes the parity most of its media file names agree with; a
    subject whose names say nothing takes the pooled majority (1 when that is a tie too).
    """
    votes: dict[str, list[int]] = {}     # subject -> media files agreeing with parity 0 / 1
    for scan in scans:
        votes[scan.subject] = count = [0, 0]
        for trial in scan.trials:
            if trial.row is None:
                continue
            for said in trial.name_task.values():
                count[trial.row % 2 if said == "listening" else 1 - trial.row % 2] += 1
    pooled = [sum(v[0] for v in votes.values()), sum(v[1] for v in votes.values())]
    total = sum(pooled)
    if option in ("0", "1"):
        parity = int(option)
        return ({s: parity for s in votes}, f"listening_parity={parity} set by option; the "
                f"Speaking/Listening words of {pooled[parity]} of {total} media file names "
                "agree")
    default = 1 if pooled[0] == pooled[1] else int(pooled[1] > pooled[0])
    chosen = {s: default if v[0] == v[1] else int(v[1] > v[0]) for s, v in votes.items()}
    if total == 0:
        return chosen, ("listening_parity=1 by default: no media file names with "
                        "Speaking/Listening to infer it from (the EAV loaders keep rows "
                        "1, 3, 5, 7, 9 as listening)")
    agree = sum(v[chosen[s]] for s, v in votes.items())
    values = set(chosen.values())
    if len(values) == 1:
        return chosen, (f"listening_parity={values.pop()} inferred from the Speaking/"
                        f"Listening words of media file names: {agree} of {total} agree")
    groups = {p: [s for s in sorted(chosen) if chosen[s] == p] for p in (0, 1)}
    return chosen, (f"listening_parity inferred per subject from media file names ({agree} "
                    f"of {total} agree): 0 for subjects {groups[0]}, 1 for {groups[1]}")


# ---------------------------------------------------------------------- .mat access
def _read_labels(path: Path) -> np.ndarray:
    """The one-hot label matrix as ``(10, n_trials)``."""
    if not path.is_file():
        raise DataError(str(path), "label file missing; expected variable 'label' one-hot "
                        "(10, n_trials)", kind="unreadable", field="label")
    mat = loadmat(str(path), ["label"])
    if "label" not in mat:
        raise DataError(str(path), "no variable 'label'; expected one-hot (10, n_trials)",
                        kind="unreadable", field="label")
    label = np.asarray(mat["label"])
    if label.ndim == 2 and label.shape[0] != 10 and label.shape[1] == 10:
        label = label.T                                   # stored (n_trials, 10)
    if label.ndim != 2 or label.shape[0] != 10:
        raise DataError(str(path), f"'label' has shape {label.shape}; expected one-hot "
                        "(10, n_trials) = 5 emotions x 2 tasks", kind="label", field="label")
    return label


def _eeg_header(path: str) -> tuple[str, tuple[int, ...]]:
    """The EEG variable name (`seg1` or `seg`) and its shape, without reading the data."""
    if not os.path.isfile(path):
        raise DataError(path, "EEG file missing; expected variable 'seg' or 'seg1' of shape "
                        "(T, C, trials)", kind="unreadable", field="eeg")
    found = variables(path, field="eeg")
    for var in EEG_VARIABLES:
        if var in found and len(found[var]) == 3:
            return var, tuple(found[var])
    present = {v: found[v] for v in EEG_VARIABLES if v in found}
    if present:
        raise DataError(path, f"EEG variable(s) {present} are not 3-D; expected (T, C, "
                        "trials)", kind="invalid_value", field="eeg")
    raise DataError(path, f"no EEG variable 'seg' or 'seg1' (found {sorted(found)})",
                    kind="unreadable", field="eeg")


@functools.lru_cache(maxsize=2)
def _eeg_array(path: str, mtime_ns: int, size: int, var: str) -> np.ndarray:
    """The whole ``(T, C, n)`` array of one subject, cached (200 trials per file)."""
    mat = loadmat(path, [var])
    if var not in mat:
        raise DataError(path, f"no variable {var!r}", kind="unreadable", field="eeg")
    return mat[var]


def _eeg_trial(path: str, var: str, index: int) -> np.ndarray:
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise DataError(path, f"cannot open EEG file: {exc.strerror}", kind="unreadable",
                        field="eeg") from exc
    array = _eeg_array(path, stat.st_mtime_ns, stat.st_size, var)    # (T, C, n)
    if array.ndim != 3 or not 0 <= index < array.shape[2]:
        raise DataError(path, f"trial {index + 1} not in variable {var!r} of shape "
                        f"{array.shape}; expected (T, C, trials)", kind="truncated",
                        field="eeg")
    return np.asarray(array[:, :, index].T, dtype=np.float64)        # (C, T)
