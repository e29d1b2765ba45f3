"""DREAMER adapter against a fake DREAMER.mat with the real struct nesting."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from emoray.datasets import get_adapter
from emoray.datasets.dreamer import DREAMER_CHANNELS, write_fake
from emoray.errors import DataError


@pytest.fixture
def mat_path(tmp_path):
    path = tmp_path / "DREAMER.mat"
    write_fake(path, n_subjects=2, n_clips=3, seconds=1.0, rng=np.random.default_rng(0))
    return path


def _raw(path):
    return scipy.io.loadmat(path)["DREAMER"][0, 0]


def test_struct_nesting(mat_path):
    root = _raw(mat_path)
    assert root["Data"].shape == (1, 2)
    assert float(root["EEG_SamplingRate"][0, 0]) == 128.0
    assert [str(c[0]) for c in root["EEG_Electrodes"][0]] == list(DREAMER_CHANNELS)
    subject = root["Data"][0, 1][0, 0]
    stimuli = subject["EEG"][0, 0]["stimuli"]
    assert stimuli.shape == (3, 1) and stimuli[0, 0].shape == (128, 14)   # samples x channels
    assert subject["EEG"][0, 0]["baseline"].shape == (3, 1)
    assert subject["ScoreValence"].shape == (3, 1)
    assert set(subject["ScoreArousal"].ravel()) <= {1, 2, 3, 4, 5}


@pytest.mark.parametrize("as_folder", [True, False])
def test_list_and_load(mat_path, as_folder):
    root = mat_path.parent if as_folder else mat_path
    adapter = get_adapter("dreamer", str(root))
    info = adapter.info()
    assert info.eeg_channels == list(DREAMER_CHANNELS) and info.eeg_sfreq == 128.0
    specs, rejections = adapter.list_trials()
    assert rejections == [] and len(specs) == 2 * 3
    assert [s.trial_id for s in specs[:2]] == ["dreamer/01/1/01", "dreamer/01/1/02"]
    raw = _raw(mat_path)
    subject = raw["Data"][0, 1][0, 0]
    spec = specs[3 + 2]                                                     # subject 2, clip 3
    valence = float(subject["ScoreValence"][2, 0])
    assert spec.valence == pytest.approx((valence - 3.0) / 2.0)
    assert spec.arousal == pytest.approx((float(subject["ScoreArousal"][2, 0]) - 3.0) / 2.0)
    assert spec.extra["dominance"] == float(subject["ScoreDominance"][2, 0])
    assert spec.extra["gender"] in ("male", "female") and spec.label is None
    trial = adapter.load_trial(spec)
    assert trial.eeg.data.shape == (14, 128) and trial.eeg.sfreq == 128.0
    assert trial.eeg.ch_names == list(DREAMER_CHANNELS)
    stimulus = subject["EEG"][0, 0]["stimuli"][2, 0]                       # (T, 14)
    np.testing.assert_allclose(trial.eeg.data, stimulus.T * 1e-6)          # transposed, volts


def test_rating_outside_scale_rejected(mat_path):
    raw = scipy.io.loadmat(mat_path)["DREAMER"]
    raw[0, 0]["Data"][0, 1][0, 0]["ScoreArousal"][2, 0] = 7.0
    scipy.io.savemat(mat_path, {"DREAMER": raw})
    specs, rejections = get_adapter("dreamer", str(mat_path)).list_trials()
    assert len(specs) == 5 and [r.trial_id for r in rejections] == ["dreamer/02/1/03"]
    assert rejections[0].kind == "label"
    assert "DREAMER.Data{2}.ScoreArousal(3) = 7.0" in rejections[0].reason


def test_missing_field_names_the_path(mat_path):
    raw = scipy.io.loadmat(mat_path)["DREAMER"]
    subject = raw[0, 0]["Data"][0, 0]
    fields = [n for n in subject.dtype.names if n != "EEG"]
    stripped = np.empty((1, 1), dtype=[(n, object) for n in fields])
    for n in fields:
        stripped[0, 0][n] = subject[0, 0][n]
    raw[0, 0]["Data"][0, 0] = stripped
    scipy.io.savemat(mat_path, {"DREAMER": raw})
    specs, rejections = get_adapter("dreamer", str(mat_path)).list_trials()
    assert len(specs) == 3 and [r.trial_id for r in rejections] == ["dreamer/01"]
    assert "DREAMER.Data{1}.EEG" in rejections[0].reason


def test_wrong_layout(tmp_path):
    with pytest.raises(DataError) as err:
        get_adapter("dreamer", str(tmp_path)).list_trials()
    assert err.value.kind == "layout" and "DREAMER.mat" in str(err.value)
    other = tmp_path / "DREAMER.mat"
    scipy.io.savemat(other, {"something": np.zeros(3)})
    with pytest.raises(DataError, match="no variable 'DREAMER'"):
        get_adapter("dreamer", str(tmp_path)).list_trials()
