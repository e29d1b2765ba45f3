"""DREAMER (Katsigiannis & Ramzan 2018): adapter and fake-data twin.

One MATLAB file holds everything::

    DREAMER.mat
      DREAMER.Data{1..23}                 # one struct per subject
        .Age, .Gender
        .EEG.stimuli{1..18}               # (samples, 14) at 128 Hz, one per film clip
        .EEG.baseline{1..18}              # (samples, 14) neutral clip before each
        .ECG.stimuli / .ECG.baseline      # (samples, 2) at 256 Hz (not read here)
        .ScoreValence / .ScoreArousal / .ScoreDominance   # (18, 1), 1-5
      DREAMER.EEG_SamplingRate, DREAMER.EEG_Electrodes (1 x 14 cell), ...

Trap handled here: the EEG is stored samples x channels; it is transposed to ``(C, T)``.
The file is read whole (it has no per-trial layout), once per process.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from emoray.datasets.base import DatasetAdapter, DatasetInfo, Rejection, register_adapter
from emoray.datasets._matio import loadmat
from emoray.errors import DataError
from emoray.labels import to_common_scale
from emoray.types import EEG, Trial, TrialSpec

DREAMER_CHANNELS: tuple[str, ...] = ("AF3", "F7", "F3", "FC5", "T7", "P7", "O1", "O2", "P8",
                                     "T8", "FC6", "F4", "F8", "AF4")
DREAMER_SFREQ = 128.0
DREAMER_FILE = "DREAMER.mat"
_SCORES = ("ScoreValence", "ScoreArousal", "ScoreDominance")


@register_adapter
class DREAMERAdapter(DatasetAdapter):
    """Read ``DREAMER.mat``: 23 subjects x 18 film clips of Emotiv EPOC EEG.

    Parameters
    ----------
    root : str
        ``DREAMER.mat`` itself or the folder holding it.
    eeg_scale : float
        Factor from file units to volts (the file holds microvolts).
    """

    name = "dreamer"

    @classmethod
    def write_example(cls, root: Path) -> tuple[str, dict]:
        write_fake(Path(root) / "DREAMER.mat", n_subjects=1, n_clips=3, seconds=1.0,
                   rng=np.random.default_rng(0))
        return str(root), {}

    def __init__(self, root: str, *, eeg_scale: float = 1e-6):
        super().__init__(root, eeg_scale=eeg_scale)
        self.eeg_scale = float(eeg_scale)

    def _path(self) -> str:
        root = Path(self.root).absolute()    # specs travel to Ray tasks: absolute paths
        path = root / DREAMER_FILE if root.is_dir() else root
        if not path.is_file() or path.suffix.lower() != ".mat":
            raise DataError(self.root, f"expected {DREAMER_FILE} or a folder holding it",
                            kind="layout")
        return str(path)

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            name=self.name, label_names=None, modalities=["eeg"],
            eeg_channels=list(DREAMER_CHANNELS), eeg_sfreq=DREAMER_SFREQ, trial_seconds=None,
            label_scale="valence/arousal 1-5 mapped to [-1, 1] (3 -> 0), high = value > 0",
            notes=["EEG.stimuli read, EEG.baseline and ECG not read",
                   "dominance, age, gender kept in extra"])

    def list_trials(self) -> tuple[list[TrialSpec], list[Rejection]]:
        path = self._path()
        subjects = _subjects(path)
        specs: list[TrialSpec] = []
        rejections: list[Rejection] = []
        for i, subject in enumerate(subjects):
            sid = f"{i + 1:02d}"
            try:
                stimuli = _field(path, subject, ("EEG", "stimuli"), i)
                scores = [np.asarray(_field(path, subject, (s,), i), dtype=float).ravel()
                          for s in _SCORES]
                extra = {"age": _scalar(subject, "Age"), "gender": _scalar(subject, "Gender")}
            except DataError as err:
                rejections.append(Rejection.from_error(f"dreamer/{sid}", [path], err))
                continue
            for j in range(stimuli.size):
                try:
                    specs.append(self._spec(path, sid, i, j, scores, extra))
                except DataError as err:
                    rejections.append(Rejection.from_error(f"dreamer/{sid}/1/{j + 1:02d}",
                                                           [path], err))
        return specs, rejections

    def _spec(self, path: str, sid: str, i: int, j: int, scores: list[np.ndarray],
              extra: dict) -> TrialSpec:
        values = []
        for name, score in zip(_SCORES, scores):
            if j >= score.size or not 1.0 <= score[j] <= 5.0:     # NaN fails too
                got = score[j] if j < score.size else "missing"
                raise DataError(path, f"DREAMER.Data{{{i + 1}}}.{name}({j + 1}) = {got}; "
                                "expected a rating on 1-5", kind="label", field=name)
            values.append(float(score[j]))
        valence, arousal, dominance = values
        return TrialSpec(
            dataset=self.name, subject=sid, session="1", trial=f"{j + 1:02d}", label=None,
            valence=to_common_scale(valence, 1, 5), arousal=to_common_scale(arousal, 1, 5),
            refs={"eeg": {"path": path, "subject_index": i, "clip_index": j}},
            extra={**extra, "dominance": dominance, "valence_raw": valence,
                   "arousal_raw": arousal})

    def load_trial(self, spec: TrialSpec) -> Trial:
        ref = spec.refs["eeg"]
        path, i, j = str(ref["path"]), int(ref["subject_index"]), int(ref["clip_index"])
        subjects = _subjects(path)
        if not 0 <= i < len(subjects):
            raise DataError(path, f"no DREAMER.Data{{{i + 1}}}: the file has "
                            f"{len(subjects)} subjects", kind="truncated", field="eeg")
        stimuli = _field(path, subjects[i], ("EEG", "stimuli"), i).ravel()
        where = f"DREAMER.Data{{{i + 1}}}.EEG.stimuli{{{j + 1}}}"
        if not 0 <= j < stimuli.size:
            raise DataError(path, f"no {where}: {stimuli.size} clips", kind="truncated",
                            field="eeg")
        data = np.asarray(stimuli[j], dtype=np.float64)          # (T, 14) samples x channels
        sfreq, channels = _header(path)
        if data.ndim != 2 or data.shape[1] != len(channels):
            raise DataError(path, f"{where} has shape {data.shape}; expected (samples, "
                            f"{len(channels)})", kind="missing_channel", field="eeg")
        eeg = EEG(data.T * self.eeg_scale, sfreq, channels, source=path)   # (C, T) volts
        return Trial(spec=spec, eeg=eeg)


# ---------------------------------------------------------------------- .mat access
@functools.lru_cache(maxsize=2)
def _load_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
    """The ``DREAMER`` struct as a (1, 1) record array (squeeze_me off: no shape guessing)."""
    mat = loadmat(path, ["DREAMER"])
    if "DREAMER" not in mat:
        raise DataError(path, "no variable 'DREAMER'; expected the DREAMER struct",
                        kind="unreadable")
    return mat["DREAMER"]


def _root_struct(path: str) -> np.ndarray:
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise DataError(path, f"cannot open: {exc.strerror}", kind="unreadable") from exc
    return _load_cached(path, stat.st_mtime_ns, stat.st_size)


def _get(path: str, struct: np.ndarray, name: str, where: str) -> np.ndarray:
    """``struct.name`` of a (1, 1) MATLAB struct array, with an error naming the field."""
    if not isinstance(struct, np.ndarray) or struct.dtype.names is None \
            or name not in struct.dtype.names or struct.size != 1:
        raise DataError(path, f"no field {where}.{name}", kind="unreadable", field=name)
    return struct.flat[0][name]


def _subjects(path: str) -> list[np.ndarray]:
    data = _get(path, _root_struct(path), "Data", "DREAMER")      # (1, n) cell
    return [cell for cell in np.asarray(data, dtype=object).ravel()]


def _field(path: str, subject: np.ndarray, names: tuple[str, ...], i: int) -> np.ndarray:
    where = f"DREAMER.Data{{{i + 1}}}"
    value = subject
    for name in names:
        value = _get(path, value, name, where)
        where += f".{name}"
    return np.asarray(value)


def _scalar(subject: np.ndarray, name: str):
    """A small field (Age, Gender) as a plain value; None when absent."""
    if subject.dtype.names is None or name not in subject.dtype.names:
        return None
    value = np.asarray(subject.flat[0][name]).ravel()
    if value.size != 1:
        return None
    item = value[0]
    return str(item) if isinstance(item, str) else (item.item() if hasattr(item, "item")
                                                   else item)


def _header(path: str) -> tuple[float, list[str]]:
    """The file's EEG sampling rate and electrode names (declared values as fallback)."""
    from emoray.io.eeg import normalize_channel_name

    root = _root_struct(path)
    names = root.dtype.names or ()
    sfreq = DREAMER_SFREQ
    if "EEG_SamplingRate" in names:
        sfreq = float(np.asarray(root.flat[0]["EEG_SamplingRate"]).ravel()[0])
    channels = list(DREAMER_CHANNELS)
    if "EEG_Electrodes" in names:
        cells = np.asarray(root.flat[0]["EEG_Electrodes"], dtype=object).ravel()
        channels = [normalize_channel_name(str(np.asarray(c).ravel()[0])) for c in cells]
    return sfreq, channels


# ---------------------------------------------------------------------- fake-data twin
def _cell(items: list) -> np.ndarray:
    """A MATLAB column cell array (n x 1) for scipy.io.savemat."""
    cell = np.empty((len(items), 1), dtype=object)
    for k, item in enumerate(items):
        cell[k, 0] = item
    return cell


def write_fake(path: str | os.PathLike, *, n_subjects: int, n_clips: int = 18,
               seconds: float, rng: np.random.Generator) -> None:
    """Write a small ``DREAMER.mat`` with the real struct nesting and random EEG.

    Parameters
    ----------
    path : path
        The ``.mat`` file to write, or a folder (``DREAMER.mat`` is written in it).
    n_subjects, n_clips : int
        Subjects and film clips per subject.
    seconds : float
        Length of every stimulus clip at 128 Hz (baselines are 61 s in the real file;
        here they are ``seconds`` long too).
    rng : np.random.Generator
        Source of signals, ratings, ages and genders.
    """
    import scipy.io

    path = Path(path)
    if path.suffix.lower() != ".mat":
        path = path / DREAMER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    n_samples = int(round(seconds * DREAMER_SFREQ))
    n_ch = len(DREAMER_CHANNELS)

    def eeg() -> np.ndarray:
        return 4200.0 + 20.0 * rng.standard_normal((n_samples, n_ch))   # (T, 14), DC offset

    def ecg() -> np.ndarray:
        return rng.standard_normal((2 * n_samples, 2))                   # (T, 2) at 256 Hz

    subjects = np.empty((1, n_subjects), dtype=object)
    for i in range(n_subjects):
        subjects[0, i] = {
            "Age": float(rng.integers(22, 34)),
            "Gender": str(rng.choice(["male", "female"])),
            "EEG": {"stimuli": _cell([eeg() for _ in range(n_clips)]),
                    "baseline": _cell([eeg() for _ in range(n_clips)])},
            "ECG": {"stimuli": _cell([ecg() for _ in range(n_clips)]),
                    "baseline": _cell([ecg() for _ in range(n_clips)])},
            **{name: rng.integers(1, 6, size=(n_clips, 1)).astype(np.float64)
               for name in _SCORES},
        }
    electrodes = np.empty((1, n_ch), dtype=object)
    for k, name in enumerate(DREAMER_CHANNELS):
        electrodes[0, k] = name
    dreamer = {"Data": subjects, "EEG_SamplingRate": DREAMER_SFREQ, "ECG_SamplingRate": 256.0,
               "EEG_Electrodes": electrodes, "noOfSubjects": float(n_subjects),
               "noOfVideoSequences": float(n_clips), "Disclaimer": "synthetic DREAMER layout",
               "Provider": "emoray", "Version": "1.0.2", "Acknowledgement": "none"}
    scipy.io.savemat(path, {"DREAMER": dreamer})
