"""DEAP adapter against Python-2-style pickles written by its twin writer."""

from __future__ import annotations

import pickle
import pickletools

import numpy as np
import pytest

from emoray.datasets import get_adapter
from emoray.datasets.deap import DEAP_EEG_CHANNELS, DEAP_SFREQ, write_subject
from emoray.errors import DataError

N_TRIALS = 3
N_SAMPLES = 4 * 128              # 3 s baseline + 1 s of trial
RATINGS = np.array([[9.0, 1.0, 5.0, 7.0], [5.0, 5.0, 2.0, 3.0], [1.0, 9.0, 8.0, 1.0]])


def _write(root, subject, rng, ratings=RATINGS) -> np.ndarray:
    eeg = 10.0 * rng.standard_normal((N_TRIALS, 32, N_SAMPLES))           # (n, 32, T) uV
    peripheral = rng.standard_normal((N_TRIALS, 8, N_SAMPLES))            # (n, 8, T)
    write_subject(root, subject, eeg, peripheral, ratings)
    return eeg


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    return tmp_path, {s: _write(tmp_path, s, rng) for s in (1, 2)}


def test_python2_pickle_needs_latin1(corpus):
    root, eeg = corpus
    path = root / "data_preprocessed_python" / "s01.dat"
    with open(path, "rb") as f:
        with pytest.raises(UnicodeDecodeError):
            pickle.load(f)
    with open(path, "rb") as f:
        content = pickle.load(f, encoding="latin1")
    assert set(content) == {"labels", "data"} and all(isinstance(k, str) for k in content)
    assert content["data"].shape == (N_TRIALS, 40, N_SAMPLES)
    assert content["data"].dtype == np.float64
    np.testing.assert_array_equal(content["data"][:, :32], eeg[1])
    np.testing.assert_array_equal(content["labels"], RATINGS)
    opcodes = {op.name for op, _, _ in pickletools.genops(path.read_bytes())}
    assert "BINSTRING" in opcodes and "SHORT_BINSTRING" in opcodes
    assert not opcodes & {"BINUNICODE", "SHORT_BINUNICODE", "BINBYTES", "SHORT_BINBYTES"}


def test_list_and_load(corpus):
    root, eeg = corpus
    adapter = get_adapter("deap", str(root))
    info = adapter.info()
    assert info.eeg_channels == list(DEAP_EEG_CHANNELS) and len(info.eeg_channels) == 32
    assert info.eeg_sfreq == 128.0 and info.label_names is None
    assert info.trial_seconds == 1.0                      # auto: 4 s files - 3 s baseline
    assert any("trial_seconds=1 from the files" in n for n in info.notes)
    specs, rejections = adapter.list_trials()
    assert rejections == [] and len(specs) == 2 * N_TRIALS
    assert [s.trial_id for s in specs[:3]] == ["deap/s01/1/01", "deap/s01/1/02",
                                               "deap/s01/1/03"]
    assert [(s.valence, s.arousal) for s in specs[:3]] == [(1.0, -1.0), (0.0, 0.0),
                                                            (-1.0, 1.0)]
    assert all(s.label is None for s in specs)
    assert specs[0].extra["dominance"] == 5.0 and specs[0].extra["liking"] == 7.0
    trial = adapter.load_trial(specs[4])                                   # s02, trial 2
    assert trial.modalities() == ["eeg"]
    assert trial.eeg.data.shape == (32, 128) and trial.eeg.sfreq == DEAP_SFREQ
    assert trial.eeg.ch_names == list(DEAP_EEG_CHANNELS)
    np.testing.assert_allclose(trial.eeg.data, eeg[2][1, :, 3 * 128:] * 1e-6)


def test_options_baseline_and_scale(corpus):
    root, eeg = corpus
    adapter = get_adapter("deap", str(root / "data_preprocessed_python"),
                          {"baseline_seconds": 0.0, "eeg_scale": 1.0})
    assert adapter.info().trial_seconds == 4.0
    declared = get_adapter("deap", str(root), {"trial_seconds": 60})
    assert declared.info().trial_seconds == 60.0          # the real DEAP length, declared
    specs, _ = adapter.list_trials()
    data = adapter.load_trial(specs[0]).eeg.data
    np.testing.assert_allclose(data, eeg[1][0])                            # whole trial, uV


def test_ratings_outside_scale_rejected(tmp_path):
    bad = RATINGS.copy()
    bad[1, 1] = 9.5
    bad[2, 0] = np.nan
    _write(tmp_path, 1, np.random.default_rng(1), ratings=bad)
    specs, rejections = get_adapter("deap", str(tmp_path)).list_trials()
    assert len(specs) + len(rejections) == N_TRIALS
    assert [s.trial for s in specs] == ["01"]
    assert [r.trial_id for r in rejections] == ["deap/s01/1/02", "deap/s01/1/03"]
    assert {r.kind for r in rejections} == {"label"}
    assert "arousal=9.5" in rejections[0].reason and "1-9" in rejections[0].reason


def test_corrupt_file_rejected(corpus):
    root, _ = corpus
    path = root / "data_preprocessed_python" / "s02.dat"
    path.write_bytes(path.read_bytes()[:500])                              # truncated
    specs, rejections = get_adapter("deap", str(root)).list_trials()
    assert len(specs) == N_TRIALS and [r.trial_id for r in rejections] == ["deap/s02"]
    assert rejections[0].kind == "unreadable" and rejections[0].files == [str(path)]


def test_wrong_layout(tmp_path):
    (tmp_path / "data_preprocessed_python").mkdir()
    (tmp_path / "data_preprocessed_python" / "notes.txt").write_text("x")
    with pytest.raises(DataError) as err:
        get_adapter("deap", str(tmp_path)).list_trials()
    assert err.value.kind == "layout" and "data_preprocessed_python/s01.dat" in str(err.value)
