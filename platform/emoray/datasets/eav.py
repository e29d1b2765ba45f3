"""EAV (EEG, audio, video; Lee et al., Scientific Data 2024): adapter and fake-data twin.

On-disk layout, one folder per subject::

    subjectNN/EEG/subjectNN_eeg.mat        # `seg` or `seg1`: (T, C, n) = (10000, 30, 200)
    subjectNN/EEG/subjectNN_eeg_label.mat  # `label`: one-hot (10, n), row 2*e + t
    subjectNN/Audio/*.wav                  # speaking trials only
    subjectNN/Video/*.mp4                  # every trial

Media file names are ``_``-separated: the first field is the trial number (1-based index
into the EEG/label arrays), the fifth the emotion (``name.split('_')[4]``, as the dataset's
own loaders read it), and the words ``Speaking``/``Listening`` give the task, e.g.
``007_Trial_04_Speaking_Anger_aud.wav``.

Traps handled here: the EEG variable is ``seg`` in some files and ``seg1`` in others; the
label matrix interleaves task within emotion (row ``2*e + t``) and which parity ``t`` means
listening is ambiguous in the source, so it is an option (``listening_parity``), inferred by
default from the task words in the media file names and reported in ``info().notes``; the
emotion in the label matrix must agree with the file names (else the trial is rejected).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from emoray.datasets.base import DatasetAdapter, DatasetInfo, Rejection, register_adapter
from emoray.errors import ConfigError, DataError
from emoray.labels import EAV_CLASSES, EAV_VA
from emoray.types import EEG, Audio, Trial, TrialSpec, Video
from emoray.datasets.eav_layout import (EAV_CHANNELS, EAV_SFREQ, EAV_TRIAL_SECONDS, EAV_VIDEO_FPS, _SUBJECT_DIR, _SubjectScan, _TrialScan)
from emoray.datasets.eav_layout import (_choose_parity,
                                        _eeg_header, _eeg_trial, _scan_subject,
                                        _trial_id)


@register_adapter
class EAVAdapter(DatasetAdapter):
    """Read an EAV tree: 200 trials of 20 s per subject, EEG for all, audio when speaking.

    Parameters
    ----------
    root : str
        The folder holding ``subjectNN/`` folders (or one ``subjectNN`` folder itself).
    task : str
        ``"speaking"`` (EEG, audio, video), ``"listening"`` (EEG, video) or ``"both"``.
    listening_parity : str | int
        Which label-row parity is listening (0 or 1); ``"auto"`` infers it from the
        ``Speaking``/``Listening`` words in the media file names (1 when they say nothing:
        the dataset's loaders keep rows 1, 3, 5, 7, 9 as listening).
    eeg_scale : float
        Factor from file units to volts (the files hold microvolts).
    trial_seconds : float | str
        Expected trial length, against which ingest reports truncated trials. ``"auto"``:
        the longest EEG array in the files (20 s in the real dataset, whose trials all share
        one length; a synthetic corpus may be shorter); a number declares it.
    """

    name = "eav"

    @classmethod
    def write_example(cls, root: Path) -> tuple[str, dict]:
        rng = np.random.default_rng(0)
        eeg_uv = 20.0 * rng.standard_normal((2, len(EAV_CHANNELS), 250))      # (n, C, T)
        audio = {1: Audio(rng.uniform(-0.2, 0.2, 1600).astype(np.float32), 16000)}
        video = {i: Video(rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8), 30.0)
                 for i in range(2)}
        write_subject(root, 1, eeg_uv, [0, 3], ["listening", "speaking"], audio, video)
        return str(root), {}

    def __init__(self, root: str, *, task: str = "speaking",
                 listening_parity: str | int = "auto", eeg_scale: float = 1e-6,
                 trial_seconds: float | str = "auto"):
        super().__init__(root, task=task, listening_parity=listening_parity,
                         eeg_scale=eeg_scale, trial_seconds=trial_seconds)
        if task not in ("speaking", "listening", "both"):
            raise ConfigError(f"eav option task={task!r}; expected 'speaking', 'listening' "
                              "or 'both'")
        if str(listening_parity) not in ("auto", "0", "1"):
            raise ConfigError(f"eav option listening_parity={listening_parity!r}; expected "
                              "'auto', 0 or 1")
        self.task = task
        self.listening_parity = str(listening_parity)
        self.eeg_scale = float(eeg_scale)
        self.trial_seconds = _seconds_option(trial_seconds)
        self._scans: list[_SubjectScan] | None = None
        self._parity: tuple[dict[str, int], str] | None = None

    # ------------------------------------------------------------------ listing
    def _subject_dirs(self) -> list[tuple[int, Path]]:
        root = Path(self.root).absolute()    # specs travel to Ray tasks: absolute paths
        expected = ("expected the EAV layout subjectNN/EEG/subjectNN_eeg.mat, "
                    "subjectNN/EEG/subjectNN_eeg_label.mat, subjectNN/Audio/*.wav, "
                    "subjectNN/Video/*.mp4")
        if not root.is_dir():
            raise DataError(self.root, f"not a folder; {expected}", kind="layout")
        single = _SUBJECT_DIR.match(root.name)
        if single and (root / "EEG").is_dir():
            return [(int(single.group(1)), root)]
        found = sorted((int(m.group(1)), p) for p in root.iterdir()
                       if p.is_dir() and (m := _SUBJECT_DIR.match(p.name)))
        if not found:
            raise DataError(self.root, f"no subjectNN folders here; {expected}",
                            kind="layout")
        return found

    def _scanned(self) -> list[_SubjectScan]:
        if self._scans is None:
            self._scans = [_scan_subject(num, folder) for num, folder in self._subject_dirs()]
        return self._scans

    def parity(self) -> tuple[dict[str, int], str]:
        """The listening parity per subject (``"NN"`` -> 0/1) and how it was chosen."""
        if self._parity is None:
            self._parity = _choose_parity(self._scanned(), self.listening_parity)
        return self._parity

    def info(self) -> DatasetInfo:
        parities, how = self.parity()
        notes = [f"task={self.task}", how]
        if len(set(parities.values())) == 1:
            p = next(iter(parities.values()))
            notes.append(f"label rows {p}, {p + 2}, ..., {p + 8} read as listening, rows "
                         f"{1 - p}, {3 - p}, ..., {9 - p} as speaking")
        seconds = self.trial_seconds
        if seconds is None:
            lengths = [s.n_samples for s in self._scanned() if s.n_samples]
            seconds = max(lengths) / EAV_SFREQ if lengths else EAV_TRIAL_SECONDS
            notes.append(f"trial_seconds={seconds:g} from the EEG files' length (the real EAV "
                         f"trials are {EAV_TRIAL_SECONDS:g} s)")
        modalities = ["eeg", "video"] if self.task == "listening" else ["eeg", "audio", "video"]
        return DatasetInfo(
            name=self.name, label_names=list(EAV_CLASSES), modalities=modalities,
            eeg_channels=list(EAV_CHANNELS), eeg_sfreq=EAV_SFREQ, audio_rate=None,
            video_fps=EAV_VIDEO_FPS, trial_seconds=seconds, notes=notes)

    def list_trials(self) -> tuple[list[TrialSpec], list[Rejection]]:
        parities, _ = self.parity()
        specs: list[TrialSpec] = []
        rejections: list[Rejection] = []
        for scan in self._scanned():
            rejections.extend(scan.rejections)
            parity = parities[scan.subject]
            for trial in scan.trials:
                task = trial.task(parity)
                if self.task != "both" and task is not None and task != self.task:
                    continue
                try:
                    specs.append(self._spec(scan, trial, parity, task))
                except DataError as err:
                    rejections.append(Rejection.from_error(
                        _trial_id(scan.subject, trial.index), trial.files(scan), err))
        return specs, rejections

    def _spec(self, scan: _SubjectScan, trial: _TrialScan, parity: int,
              task: str | None) -> TrialSpec:
        trial.check(parity)                        # raises DataError on any disagreement
        emotion = EAV_CLASSES[trial.row // 2]      # type: ignore[operator]
        valence, arousal = EAV_VA[emotion]
        refs: dict = {"eeg": {"path": str(scan.eeg_path), "index": trial.index,
                              "var": scan.eeg_var}}
        for modality, path in sorted(trial.media.items()):
            refs[modality] = {"path": str(path)}
        return TrialSpec(dataset=self.name, subject=scan.subject, session="1",
                         trial=f"{trial.index + 1:03d}", label=trial.row // 2,  # type: ignore
                         valence=valence, arousal=arousal, refs=refs,
                         extra={"task": task, "label_row": trial.row,
                                "listening_parity": parity})

    # ------------------------------------------------------------------ loading
    def load_trial(self, spec: TrialSpec) -> Trial:
        from emoray.io.audio import read_audio

        ref = spec.refs["eeg"]
        path = str(ref["path"])
        var = ref.get("var") or _eeg_header(path)[0]
        data = _eeg_trial(path, var, int(ref["index"]))   # (C, T) microvolts
        if data.shape[0] != len(EAV_CHANNELS):
            raise DataError(path, f"variable {var!r} has {data.shape[0]} channels, expected "
                            f"{len(EAV_CHANNELS)} (T, C, trials)", kind="missing_channel",
                            field="eeg")
        eeg = EEG(data * self.eeg_scale, EAV_SFREQ, list(EAV_CHANNELS), source=path)
        audio: Audio | None = None
        video: Video | None = None
        # A spec that went through Arrow (Ray Data) has absent modalities as None refs.
        if spec.refs.get("audio"):
            audio = read_audio(spec.refs["audio"]["path"])
        if spec.refs.get("video"):
            video = self.read_video(spec.refs["video"]["path"], fps_hint=EAV_VIDEO_FPS)
        return Trial(spec=spec, eeg=eeg, audio=audio, video=video)


def _seconds_option(value: float | str) -> float | None:
    """``"auto"`` -> None, else a positive number of seconds (ConfigError otherwise)."""
    if value == "auto":
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds > 0:
        raise ConfigError(f"option trial_seconds={value!r}; expected 'auto' or seconds > 0")
    return seconds


# ---------------------------------------------------------------------- fake-data twin
def write_subject(root: str | os.PathLike, subject: int, eeg_uv: np.ndarray,
                  classes: list[int], tasks: list[str], audio: dict[int, Audio],
                  video: dict[int, Video], *, var_name: str = "seg",
                  listening_parity: int = 1) -> None:
    """Write one subject in the exact EAV layout.

    Parameters
    ----------
    root : path
        Dataset root; ``subjectNN/`` is created under it.
    subject : int
        Subject number (``subject01`` for 1).
    eeg_uv : np.ndarray
        ``(n_trials, C, T)`` EEG in microvolts; stored as ``(T, C, n_trials)``.
    classes : list[int]
        Per trial, the emotion index into :data:`emoray.labels.EAV_CLASSES`.
    tasks : list[str]
        Per trial, ``"speaking"`` or ``"listening"``.
    audio, video : dict
        Trial index -> signal, for the trials that have that modality (audio: speaking).
        Files are named ``{i+1:03d}_Trial_{k:02d}_{Task}_{Emotion}_{aud|vid}.{wav|mp4}``
        with ``k`` the listen/speak pair number.
    var_name : str
        The EEG variable name (``seg`` or ``seg1`` in the real files).
    listening_parity : int
        Label-row parity that means listening (row ``2*e + t``).
    """
    import scipy.io

    from emoray.io.audio import write_audio
    from emoray.io.video import write_mp4

    n_trials = eeg_uv.shape[0]
    if len(classes) != n_trials or len(tasks) != n_trials:
        raise ValueError(f"{n_trials} EEG trials but {len(classes)} classes, {len(tasks)} tasks")
    folder = Path(root) / f"subject{subject:02d}"
    for sub in ("EEG", "Audio", "Video"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    label = np.zeros((10, n_trials))                      # (10, n) one-hot
    for i, (emotion, task) in enumerate(zip(classes, tasks)):
        listening = task.lower() == "listening"
        label[2 * int(emotion) + (listening_parity if listening else 1 - listening_parity),
              i] = 1.0
    seg = np.ascontiguousarray(np.transpose(eeg_uv, (2, 1, 0)))   # (T, C, n)
    scipy.io.savemat(folder / "EEG" / f"{folder.name}_eeg.mat", {var_name: seg})
    scipy.io.savemat(folder / "EEG" / f"{folder.name}_eeg_label.mat", {"label": label})

    def stem(i: int) -> str:
        return (f"{i + 1:03d}_Trial_{i // 2 + 1:02d}_{tasks[i].capitalize()}_"
                f"{EAV_CLASSES[classes[i]].capitalize()}")

    for i, clip in sorted(audio.items()):
        write_audio(folder / "Audio" / f"{stem(i)}_aud.wav", clip)
    for i, clip in sorted(video.items()):
        write_mp4(folder / "Video" / f"{stem(i)}_vid.mp4", clip.frames, clip.fps)
