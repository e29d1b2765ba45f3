"""EAV adapter against a fake written in the real layout by its twin writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from emoray.datasets import get_adapter
from emoray.datasets.eav import EAV_CHANNELS, EAV_SFREQ, write_subject
from emoray.datasets.eav_layout import _eeg_array
from emoray.errors import ConfigError, DataError
from emoray.labels import EAV_CLASSES, EAV_VA
from emoray.types import Audio, Video

N_TRIALS = 6
N_SAMPLES = 250                  # 0.5 s at 500 Hz
CLASSES = [0, 1, 2, 3, 4, 2]
TASKS = ["listening", "speaking"] * 3


def _write(root: Path, subject: int, rng: np.random.Generator, *, media: bool = True,
           **kwargs) -> np.ndarray:
    eeg_uv = 20.0 * rng.standard_normal((N_TRIALS, len(EAV_CHANNELS), N_SAMPLES))  # (n, C, T)
    audio = {i: Audio(rng.uniform(-0.2, 0.2, 1600).astype(np.float32), 16000)
             for i in range(N_TRIALS) if TASKS[i] == "speaking"} if media else {}
    video = {i: Video(rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8), 30.0)
             for i in range(N_TRIALS)} if media else {}
    write_subject(root, subject, eeg_uv, CLASSES, TASKS, audio, video, **kwargs)
    return eeg_uv


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    eeg = {s: _write(tmp_path, s, rng, var_name=var) for s, var in ((1, "seg"), (2, "seg1"))}
    return tmp_path, eeg


def test_layout_written(corpus):
    root, _ = corpus
    mat = scipy.io.loadmat(root / "subject01" / "EEG" / "subject01_eeg.mat")
    assert mat["seg"].shape == (N_SAMPLES, len(EAV_CHANNELS), N_TRIALS)   # (T, C, n)
    assert "seg1" in scipy.io.loadmat(root / "subject02" / "EEG" / "subject02_eeg.mat")
    label = scipy.io.loadmat(root / "subject01" / "EEG" / "subject01_eeg_label.mat")["label"]
    assert label.shape == (10, N_TRIALS) and (label.sum(axis=0) == 1).all()
    # listening_parity=1: listening trial 0 (neutral) sits in row 1, speaking trial 1 in row 2
    assert label[1, 0] == 1 and label[2, 1] == 1
    assert len(list((root / "subject01" / "Audio").glob("*.wav"))) == 3
    names = sorted(p.name for p in (root / "subject01" / "Video").glob("*.mp4"))
    assert names[1] == "002_Trial_01_Speaking_Sadness_vid.mp4"
    assert names[1].split("_")[4] == "Sadness"


def test_list_and_load_speaking(corpus):
    root, eeg = corpus
    adapter = get_adapter("eav", str(root))
    info = adapter.info()
    assert info.eeg_channels == list(EAV_CHANNELS) and len(info.eeg_channels) == 30
    assert info.eeg_sfreq == EAV_SFREQ
    assert info.trial_seconds == N_SAMPLES / EAV_SFREQ    # auto: the files' EEG length
    assert any("trial_seconds=0.5 from the EEG files" in n for n in info.notes)
    declared = get_adapter("eav", str(root), {"trial_seconds": 20})
    assert declared.info().trial_seconds == 20.0          # the real EAV length, declared
    assert info.label_names == list(EAV_CLASSES)
    assert any("listening_parity=1 inferred" in note for note in info.notes)
    specs, rejections = adapter.list_trials()
    assert rejections == []
    assert len(specs) == 2 * 3
    assert {s.subject for s in specs} == {"01", "02"}
    assert [s.trial for s in specs[:3]] == ["002", "004", "006"]
    for spec in specs:
        index = int(spec.trial) - 1
        assert spec.extra["task"] == "speaking"
        assert spec.label == CLASSES[index]
        assert (spec.valence, spec.arousal) == EAV_VA[EAV_CLASSES[CLASSES[index]]]
        assert set(spec.refs) == {"eeg", "audio", "video"}
    spec = next(s for s in specs if s.subject == "02" and s.trial == "004")
    assert spec.refs["eeg"]["var"] == "seg1"
    trial = adapter.load_trial(spec)
    assert trial.modalities() == ["eeg", "audio", "video"]
    assert trial.eeg.data.shape == (30, N_SAMPLES) and trial.eeg.sfreq == 500.0
    assert trial.eeg.ch_names == list(EAV_CHANNELS)
    np.testing.assert_allclose(trial.eeg.data, eeg[2][3] * 1e-6)          # volts
    assert trial.audio.sample_rate == 16000 and trial.audio.samples.shape == (1600,)
    assert trial.video.frames.shape[1:] == (16, 16, 3) and trial.video.frames.shape[0] >= 1


def test_listening_and_both(corpus):
    root, _ = corpus
    specs, _ = get_adapter("eav", str(root), {"task": "listening"}).list_trials()
    assert len(specs) == 6 and all("audio" not in s.refs for s in specs)
    assert {s.extra["task"] for s in specs} == {"listening"}
    listening = get_adapter("eav", str(root), {"task": "listening"})
    assert listening.info().modalities == ["eeg", "video"]
    trial = listening.load_trial(specs[0])
    assert trial.audio is None and trial.video is not None
    specs[0].refs["audio"] = None              # how a spec comes back through Arrow/Ray Data
    assert listening.load_trial(specs[0]).audio is None
    both, rejected = get_adapter("eav", str(root), {"task": "both"}).list_trials()
    assert len(both) == 12 and rejected == []


def test_subject_file_cached(corpus):
    root, _ = corpus
    adapter = get_adapter("eav", str(root))
    specs, _ = adapter.list_trials()
    _eeg_array.cache_clear()
    for spec in specs[:3]:                         # three trials of subject 01
        adapter.load_trial(spec)
    info = _eeg_array.cache_info()
    assert info.misses == 1 and info.hits == 2


def test_eeg_variable_neither_seg_nor_seg1(tmp_path):
    _write(tmp_path, 1, np.random.default_rng(1), var_name="data", media=False)
    specs, rejections = get_adapter("eav", str(tmp_path), {"task": "both"}).list_trials()
    assert specs == [] and len(rejections) == N_TRIALS
    assert "'seg' or 'seg1'" in rejections[0].reason and "data" in rejections[0].reason
    assert rejections[0].files[0].endswith("subject01_eeg.mat")


def test_parity_inferred_from_file_names(tmp_path):
    rng = np.random.default_rng(2)
    _write(tmp_path, 1, rng, listening_parity=0)
    adapter = get_adapter("eav", str(tmp_path))
    assert any("listening_parity=0 inferred" in n and "9 of 9" in n
               for n in adapter.info().notes)
    specs, rejections = adapter.list_trials()
    assert rejections == [] and [s.trial for s in specs] == ["002", "004", "006"]
    assert [s.label for s in specs] == [CLASSES[1], CLASSES[3], CLASSES[5]]
    assert specs[0].extra["listening_parity"] == 0

    # Forcing the other parity contradicts the file names: said loudly, trials rejected.
    forced = get_adapter("eav", str(tmp_path), {"listening_parity": 1})
    assert any("set by option" in n and "0 of 9" in n for n in forced.info().notes)
    specs, rejections = forced.list_trials()
    assert specs == [] and len(rejections) == 3
    assert {r.kind for r in rejections} == {"label"}
    assert "Listening" not in rejections[0].reason and "'listening'" in rejections[0].reason


def test_parity_default_without_media(tmp_path):
    _write(tmp_path, 1, np.random.default_rng(3), media=False)
    adapter = get_adapter("eav", str(tmp_path))
    assert any("listening_parity=1 by default" in n for n in adapter.info().notes)
    specs, _ = adapter.list_trials()
    assert [s.trial for s in specs] == ["002", "004", "006"]
    assert all(set(s.refs) == {"eeg"} for s in specs)


def test_emotion_field_mismatch_rejected(corpus):
    root, _ = corpus
    video_dir = root / "subject01" / "Video"
    old = video_dir / "004_Trial_02_Speaking_Happiness_vid.mp4"
    new = video_dir / "004_Trial_02_Speaking_Anger_vid.mp4"
    old.rename(new)
    specs, rejections = get_adapter("eav", str(root)).list_trials()
    assert len(specs) == 5 and len(rejections) == 1
    rej = rejections[0]
    assert rej.trial_id == "eav/01/1/004" and rej.kind == "label"
    assert rej.files == [str(new)]
    assert "'Anger'" in rej.reason and "'happiness'" in rej.reason


def test_label_column_not_one_hot(corpus):
    root, _ = corpus
    path = root / "subject02" / "EEG" / "subject02_eeg_label.mat"
    label = scipy.io.loadmat(path)["label"]
    label[0, 5] = 1.0                                  # two ones in column 6
    scipy.io.savemat(path, {"label": label})
    specs, rejections = get_adapter("eav", str(root)).list_trials()
    assert len(specs) == 5
    assert [r.trial_id for r in rejections] == ["eav/02/1/006"]
    assert rejections[0].kind == "label" and "not one-hot" in rejections[0].reason


def test_missing_label_file_rejects_subject(corpus):
    root, _ = corpus
    (root / "subject02" / "EEG" / "subject02_eeg_label.mat").unlink()
    specs, rejections = get_adapter("eav", str(root)).list_trials()
    assert len(specs) == 3 and [r.trial_id for r in rejections] == ["eav/02"]
    assert "label file missing" in rejections[0].reason


def test_wrong_layout(tmp_path):
    (tmp_path / "EEG").mkdir()
    with pytest.raises(DataError) as err:
        get_adapter("eav", str(tmp_path)).list_trials()
    assert err.value.kind == "layout" and "subjectNN/EEG/subjectNN_eeg.mat" in str(err.value)
    with pytest.raises(DataError, match="not a folder"):
        get_adapter("eav", str(tmp_path / "nope")).info()


def test_bad_options(tmp_path):
    with pytest.raises(ConfigError, match="task"):
        get_adapter("eav", str(tmp_path), {"task": "singing"})
    with pytest.raises(ConfigError, match="listening_parity"):
        get_adapter("eav", str(tmp_path), {"listening_parity": 2})
    with pytest.raises(ConfigError, match="trial_seconds"):
        get_adapter("eav", str(tmp_path), {"trial_seconds": "long"})
    with pytest.raises(ConfigError, match="does not take"):
        get_adapter("eav", str(tmp_path), {"seg_var": "seg"})
