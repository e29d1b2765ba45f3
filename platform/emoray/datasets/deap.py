"""DEAP (Koelstra et al. 2012), preprocessed Python data: adapter and fake-data twin.

On-disk layout::

    data_preprocessed_python/s01.dat ... s32.dat
        # Python 2 pickle: {"labels": (40, 4), "data": (40, 40, 8064)} float64

Each trial is 63 s at 128 Hz: a 3 s pre-trial baseline, then the 60 s music video. Channels
0-31 are EEG in the Geneva order, 32-39 peripheral (EOG, EMG, GSR, respiration, plethysmo-
graph, temperature); the peripheral channels are dropped. Ratings are valence, arousal,
dominance, liking on 1-9.

Trap handled here: the files were written by Python 2's ``cPickle``; the arrays' raw bytes
are py2 ``str`` objects, so ``pickle.load(f)`` fails with ``UnicodeDecodeError`` and the
files must be read with ``pickle.load(f, encoding="latin1")``. The fake writer produces the
same byte-level opcodes (``BINSTRING``), so the trap is real in the tests.

The labels live inside the 100 MB data pickles (there is no separate label file), so
listing unpickles every file once; loaded files are cached per process (two at a time).
"""

from __future__ import annotations

import functools
import os
import pickle
import re
import struct
from pathlib import Path

import numpy as np

from emoray.datasets.base import DatasetAdapter, DatasetInfo, Rejection, register_adapter
from emoray.errors import ConfigError, DataError
from emoray.labels import to_common_scale
from emoray.types import EEG, Trial, TrialSpec

DEAP_EEG_CHANNELS: tuple[str, ...] = (
    "Fp1", "AF3", "F3", "F7", "FC5", "FC1", "C3", "T7", "CP5", "CP1", "P3", "P7", "PO3",
    "O1", "Oz", "Pz", "Fp2", "AF4", "Fz", "F4", "F8", "FC6", "FC2", "Cz", "C4", "T8", "CP6",
    "CP2", "P4", "P8", "PO4", "O2",
)
DEAP_PERIPHERAL: tuple[str, ...] = ("hEOG", "vEOG", "zEMG", "tEMG", "GSR", "Respiration",
                                    "Plethysmograph", "Temperature")
DEAP_SFREQ = 128.0
DEAP_TRIAL_SECONDS = 63.0          # including the 3 s baseline
DEAP_RATINGS: tuple[str, ...] = ("valence", "arousal", "dominance", "liking")
DEAP_FOLDER = "data_preprocessed_python"

_SUBJECT_FILE = re.compile(r"^s(\d+)\.dat$")


@register_adapter
class DEAPAdapter(DatasetAdapter):
    """Read DEAP's ``data_preprocessed_python``: 40 one-minute trials per subject.

    Parameters
    ----------
    root : str
        The folder holding ``data_preprocessed_python/`` (or that folder itself).
    baseline_seconds : float
        Seconds of pre-trial baseline at the start of each trial, dropped on load.
    eeg_scale : float
        Factor from file units to volts (the files hold microvolts).
    trial_seconds : float | str
        Expected trial length after the baseline, against which ingest reports truncated
        trials. ``"auto"``: from the longest ``data`` array in the files (60 s in the real
        dataset; a synthetic corpus may be shorter); a number declares it.
    """

    name = "deap"

    @classmethod
    def write_example(cls, root: Path) -> tuple[str, dict]:
        rng = np.random.default_rng(0)
        eeg = 10.0 * rng.standard_normal((2, 32, 4 * 128))                   # (n, 32, T) uV
        write_subject(root, 1, eeg, rng.standard_normal((2, 8, 4 * 128)),
                      np.array([[9.0, 1.0, 5.0, 7.0], [2.0, 8.0, 3.0, 4.0]]))
        return str(root), {}

    def __init__(self, root: str, *, baseline_seconds: float = 3.0, eeg_scale: float = 1e-6,
                 trial_seconds: float | str = "auto"):
        super().__init__(root, baseline_seconds=baseline_seconds, eeg_scale=eeg_scale,
                         trial_seconds=trial_seconds)
        if not 0 <= float(baseline_seconds) < DEAP_TRIAL_SECONDS:
            raise ConfigError(f"deap option baseline_seconds={baseline_seconds!r}; expected "
                              f"0 <= seconds < {DEAP_TRIAL_SECONDS}")
        self.baseline_seconds = float(baseline_seconds)
        self.eeg_scale = float(eeg_scale)
        self.trial_seconds: float | None = None
        if trial_seconds != "auto":
            try:
                self.trial_seconds = float(trial_seconds)
            except (TypeError, ValueError):
                self.trial_seconds = -1.0
            if not self.trial_seconds > 0:
                raise ConfigError(f"deap option trial_seconds={trial_seconds!r}; expected "
                                  "'auto' or seconds > 0")
        self._scans: list[tuple[str, Path, tuple | DataError]] | None = None

    def _files(self) -> list[tuple[int, Path]]:
        root = Path(self.root).absolute()    # specs travel to Ray tasks: absolute paths
        folder = root / DEAP_FOLDER if (root / DEAP_FOLDER).is_dir() else root
        found = sorted((int(m.group(1)), p) for p in folder.glob("s*.dat")
                       if (m := _SUBJECT_FILE.match(p.name))) if folder.is_dir() else []
        if not found:
            raise DataError(self.root, f"no sNN.dat files; expected the DEAP layout "
                            f"{DEAP_FOLDER}/s01.dat ... s32.dat (Python pickles) under this "
                            "folder", kind="layout")
        return found

    def _scanned(self) -> list[tuple[str, Path, tuple | DataError]]:
        """Per file: subject, path and (labels, data shape) or the error (read once)."""
        if self._scans is None:
            self._scans = []
            for num, path in self._files():
                try:
                    result: tuple | DataError = _labels_and_shape(str(path))
                except DataError as err:
                    result = err
                self._scans.append((f"s{num:02d}", path, result))
        return self._scans

    def info(self) -> DatasetInfo:
        notes = [f"first {self.baseline_seconds:g} s baseline dropped; peripheral channels "
                 "32-39 dropped", "dominance/liking kept in extra (1-9)"]
        seconds = self.trial_seconds
        if seconds is None:
            lengths = [r[1][2] for _, _, r in self._scanned() if isinstance(r, tuple)]
            seconds = (max(lengths) / DEAP_SFREQ if lengths else DEAP_TRIAL_SECONDS) \
                - self.baseline_seconds
            notes.append(f"trial_seconds={seconds:g} from the files' length after the "
                         f"baseline (the real DEAP trials are "
                         f"{DEAP_TRIAL_SECONDS - 3.0:g} s)")
        return DatasetInfo(
            name=self.name, label_names=None, modalities=["eeg"],
            eeg_channels=list(DEAP_EEG_CHANNELS), eeg_sfreq=DEAP_SFREQ, trial_seconds=seconds,
            label_scale="valence/arousal 1-9 mapped to [-1, 1] (5 -> 0), high = value > 0",
            notes=notes)

    def list_trials(self) -> tuple[list[TrialSpec], list[Rejection]]:
        specs: list[TrialSpec] = []
        rejections: list[Rejection] = []
        for subject, path, result in self._scanned():
            if isinstance(result, DataError):
                rejections.append(Rejection.from_error(f"deap/{subject}", [str(path)], result))
                continue
            labels, shape = result
            for k in range(shape[0]):
                trial_id = f"deap/{subject}/1/{k + 1:02d}"
                try:
                    specs.append(self._spec(subject, path, k, labels[k]))
                except DataError as err:
                    rejections.append(Rejection.from_error(trial_id, [str(path)], err))
        return specs, rejections

    def _spec(self, subject: str, path: Path, k: int, ratings: np.ndarray) -> TrialSpec:
        bad = [f"{name}={value!r}" for name, value in zip(DEAP_RATINGS, ratings.tolist())
               if not 1.0 <= value <= 9.0]           # NaN fails this test too
        if bad:
            raise DataError(str(path), f"trial {k + 1}: rating(s) {', '.join(bad)} outside "
                            "the 1-9 scale", kind="label", field="labels")
        valence, arousal, dominance, liking = (float(v) for v in ratings)
        return TrialSpec(
            dataset=self.name, subject=subject, session="1", trial=f"{k + 1:02d}", label=None,
            valence=to_common_scale(valence, 1, 9), arousal=to_common_scale(arousal, 1, 9),
            refs={"eeg": {"path": str(path), "index": k}},
            extra={"dominance": dominance, "liking": liking, "valence_raw": valence,
                   "arousal_raw": arousal})

    def load_trial(self, spec: TrialSpec) -> Trial:
        ref = spec.refs["eeg"]
        path, k = str(ref["path"]), int(ref["index"])
        data = _load(path)["data"]                            # (n_trials, 40, T)
        start = int(round(self.baseline_seconds * DEAP_SFREQ))
        if not 0 <= k < data.shape[0]:
            raise DataError(path, f"trial {k + 1} not in 'data' of shape {data.shape}",
                            kind="truncated", field="eeg")
        if data.shape[2] <= start:
            raise DataError(path, f"trial has {data.shape[2]} samples, not more than the "
                            f"{start}-sample baseline", kind="truncated", field="eeg")
        eeg = data[k, :len(DEAP_EEG_CHANNELS), start:] * self.eeg_scale   # (32, T) volts
        return Trial(spec=spec, eeg=EEG(eeg, DEAP_SFREQ, list(DEAP_EEG_CHANNELS),
                                        source=path))


# ---------------------------------------------------------------------- reading
def _labels_and_shape(path: str) -> tuple[np.ndarray, tuple[int, ...]]:
    content = _load(path)
    return content["labels"], content["data"].shape


def _load(path: str) -> dict:
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise DataError(path, f"cannot open: {exc.strerror}", kind="unreadable") from exc
    return _load_cached(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _load_cached(path: str, mtime_ns: int, size: int) -> dict:
    """Unpickle one subject file (latin1: the py2 trap) and check its structure."""
    try:
        with open(path, "rb") as f:
            content = pickle.load(f, encoding="latin1")
    except Exception as exc:   # UnpicklingError, EOFError, ValueError ... on corrupt files
        raise DataError(path, f"not a readable DEAP pickle (read with encoding='latin1'): "
                        f"{exc!r}", kind="unreadable") from exc
    if not isinstance(content, dict) or not {"data", "labels"} <= set(content):
        keys = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise DataError(path, f"expected a dict with 'data' and 'labels', found {keys}",
                        kind="unreadable")
    data = np.asarray(content["data"])
    labels = np.asarray(content["labels"], dtype=np.float64)
    n_eeg = len(DEAP_EEG_CHANNELS)
    if data.ndim != 3 or data.shape[1] < n_eeg:
        raise DataError(path, f"'data' has shape {data.shape}; expected (trials, 40, samples) "
                        f"with at least {n_eeg} EEG channels", kind="missing_channel",
                        field="eeg")
    if labels.shape != (data.shape[0], 4):
        raise DataError(path, f"'labels' has shape {labels.shape}; expected "
                        f"({data.shape[0]}, 4) = valence, arousal, dominance, liking",
                        kind="label", field="labels")
    return {"data": data, "labels": labels}


# ---------------------------------------------------------------------- fake-data twin
class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Pickle as Python 2's cPickle did (protocol 2): every str/bytes becomes a py2 ``str``
    (``SHORT_BINSTRING``/``BINSTRING``) and globals use py2 module names."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: str | bytes) -> None:
        raw = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str

    def save_global(self, obj, name=None):  # noqa: D102 - pickle hook
        module = obj.__module__.replace("numpy._core", "numpy.core")
        name = name or obj.__qualname__
        self.write(pickle.GLOBAL + module.encode() + b"\n" + name.encode() + b"\n")
        self.memoize(obj)


def write_subject(root: str | os.PathLike, subject: int, eeg_uv: np.ndarray,
                  peripheral: np.ndarray, ratings: np.ndarray) -> None:
    """Write ``data_preprocessed_python/sNN.dat`` as DEAP's Python 2 pickle.

    Parameters
    ----------
    root : path
        Dataset root; ``data_preprocessed_python/`` is created under it.
    subject : int
        Subject number (``s01.dat`` for 1).
    eeg_uv : np.ndarray
        ``(n_trials, 32, T)`` EEG in microvolts, baseline included (DEAP: T = 63 s x 128).
    peripheral : np.ndarray
        ``(n_trials, 8, T)`` peripheral channels.
    ratings : np.ndarray
        ``(n_trials, 4)`` valence, arousal, dominance, liking on 1-9.
    """
    n_trials = eeg_uv.shape[0]
    if eeg_uv.shape[1] != len(DEAP_EEG_CHANNELS) or peripheral.shape[:2] != (n_trials, 8) \
            or peripheral.shape[2] != eeg_uv.shape[2] or np.shape(ratings) != (n_trials, 4):
        raise ValueError(f"shapes eeg {eeg_uv.shape}, peripheral {peripheral.shape}, ratings "
                         f"{np.shape(ratings)}; expected (n, 32, T), (n, 8, T), (n, 4)")
    data = np.concatenate([eeg_uv, peripheral], axis=1).astype(np.float64)   # (n, 40, T)
    content = {"labels": np.asarray(ratings, dtype=np.float64), "data": data}
    folder = Path(root) / DEAP_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"s{subject:02d}.dat", "wb") as f:
        _Py2Pickler(f, protocol=2).dump(content)
