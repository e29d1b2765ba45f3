"""SEED adapter against a fake Preprocessed_EEG folder written by its twin writer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.io

from emoray.datasets import get_adapter
from emoray.datasets.seed import SEED_CHANNELS, SEED_CLASSES, SEED_LABELS, write_fake
from emoray.errors import DataError


@pytest.fixture
def corpus(tmp_path):
    write_fake(tmp_path, n_subjects=2, n_sessions=2, n_clips=3, seconds=1.0,
               rng=np.random.default_rng(0))
    return tmp_path


def test_layout_written(corpus):
    folder = corpus / "Preprocessed_EEG"
    files = sorted(p.name for p in folder.glob("*.mat"))
    assert len(files) == 5 and "label.mat" in files
    assert scipy.io.loadmat(folder / "label.mat")["label"].tolist() == [list(SEED_LABELS[:3])]
    session = scipy.io.loadmat(folder / files[0])
    clips = sorted(k for k in session if not k.startswith("__"))
    assert len(clips) == 3 and clips[0].endswith("_eeg1")
    assert session[clips[0]].shape == (62, 200)                            # (C, T) at 200 Hz


def test_channel_names_normalised():
    assert len(SEED_CHANNELS) == 62 and len(set(SEED_CHANNELS)) == 62
    assert SEED_CHANNELS[:3] == ("Fp1", "Fpz", "Fp2")
    assert "Cz" in SEED_CHANNELS and "POz" in SEED_CHANNELS and "CZ" not in SEED_CHANNELS


def test_list_and_load(corpus):
    adapter = get_adapter("seed", str(corpus))
    info = adapter.info()
    assert info.eeg_channels == list(SEED_CHANNELS) and info.eeg_sfreq == 200.0
    assert info.label_names == list(SEED_CLASSES)
    specs, rejections = adapter.list_trials()
    assert rejections == [] and len(specs) == 2 * 2 * 3
    assert {(s.subject, s.session) for s in specs} == {("01", "1"), ("01", "2"),
                                                       ("02", "1"), ("02", "2")}
    first = [s for s in specs if (s.subject, s.session) == ("01", "1")]
    assert [s.trial for s in first] == ["01", "02", "03"]
    # SEED labels 1, 0, -1 -> classes positive, neutral, negative; valence = label
    assert [s.label for s in first] == [2, 1, 0]
    assert [s.valence for s in first] == [1.0, 0.0, -1.0]
    assert all(math.isnan(s.arousal) for s in specs)
    dates = {s.session: s.extra["date"] for s in specs if s.subject == "02"}
    assert dates["1"] < dates["2"]                                         # sessions by date
    spec = first[1]
    trial = adapter.load_trial(spec)
    assert trial.eeg.data.shape == (62, 200) and trial.eeg.sfreq == 200.0
    assert trial.eeg.ch_names == list(SEED_CHANNELS)
    raw = scipy.io.loadmat(spec.refs["eeg"]["path"])[spec.refs["eeg"]["var"]]
    np.testing.assert_allclose(trial.eeg.data, raw * 1e-6)


def test_root_may_be_the_folder_itself(corpus):
    specs, _ = get_adapter("seed", str(corpus / "Preprocessed_EEG")).list_trials()
    assert len(specs) == 12


def test_bad_label_and_missing_clip_rejected(corpus):
    folder = corpus / "Preprocessed_EEG"
    scipy.io.savemat(folder / "label.mat", {"label": np.array([[1, 2, -1]])})
    session = sorted(folder.glob("1_*.mat"))[0]
    arrays = {k: v for k, v in scipy.io.loadmat(session).items()
              if not k.startswith("__") and not k.endswith("_eeg3")}
    scipy.io.savemat(session, arrays)
    specs, rejections = get_adapter("seed", str(corpus)).list_trials()
    assert len(specs) + len(rejections) == 12
    by_id = {r.trial_id: r for r in rejections}
    assert by_id["seed/01/1/03"].kind == "unreadable" and "_eeg3" in by_id["seed/01/1/03"].reason
    assert by_id["seed/02/2/02"].kind == "label" and "{-1, 0, 1}" in by_id["seed/02/2/02"].reason
    assert len(rejections) == 1 + 4          # clip 3 of one session; clip 2 of all four


def test_wrong_layout(tmp_path):
    (tmp_path / "Preprocessed_EEG").mkdir()
    with pytest.raises(DataError) as err:
        get_adapter("seed", str(tmp_path)).list_trials()
    assert err.value.kind == "layout" and "Preprocessed_EEG/label.mat" in str(err.value)


def test_the_extracted_features_folder_is_refused_per_file_naming_it(tmp_path):
    """SEED's ExtractedFeatures/ holds de_LDS1, psd_movingAve1 ... instead of <initials>_eegN:
    every session file is one rejection naming the file and the variables found, and the
    listing goes on (no crash)."""
    folder = tmp_path / "ExtractedFeatures"
    folder.mkdir()
    scipy.io.savemat(folder / "label.mat", {"label": np.array([[1, 0, -1]])})
    for name in ("1_20131027.mat", "2_20140404.mat"):
        scipy.io.savemat(folder / name, {"de_LDS1": np.zeros((62, 5, 5)),
                                         "psd_movingAve1": np.zeros((62, 5, 5))})
    specs, rejected = get_adapter("seed", str(folder)).list_trials()
    assert specs == [] and len(rejected) == 2
    for r in rejected:
        assert r.kind == "unreadable" and r.files[0].endswith(".mat")
        assert "no <initials>_eegN variables" in r.reason and "de_LDS1" in r.reason
