"""Per-trial conform/segment logic: segment counts, padding, truncation, rates, labels."""

import json

import numpy as np
import pytest

from emoray.data.segment import SegmentSettings, conform, segment_trial
from emoray.datasets.base import DatasetInfo
from emoray.errors import DataError
from emoray.types import EEG, Audio, Trial, TrialSpec, Video

CH = ["Fp1", "Fp2", "Cz", "O1"]


def _info(**kw):
    base = dict(name="t", label_names=["a", "b", "c"], modalities=["eeg", "audio", "video"],
                eeg_channels=CH, eeg_sfreq=100.0, audio_rate=8000, video_fps=5.0)
    base.update(kw)
    return DatasetInfo(**base)


def _trial(seconds=10.0, eeg_s=None, audio_s=None, video_s=None, label=1, sfreq=100.0,
           rate=8000, channels=CH, valence=0.5, arousal=-0.5):
    spec = TrialSpec("t", "s1", "1", "007", label, valence, arousal,
                     refs={"eeg": {"path": "/x/e.fif"}}, extra={"task": "speaking"})
    rng = np.random.default_rng(0)
    eeg_s, audio_s, video_s = (eeg_s or seconds), (audio_s or seconds), (video_s or seconds)
    eeg = EEG(rng.normal(size=(len(channels), int(eeg_s * sfreq))).astype(np.float32) * 1e-5,
              sfreq, list(channels), source="/x/e.fif")
    audio = Audio(rng.uniform(-0.5, 0.5, int(audio_s * rate)).astype(np.float32), rate, "/x/a.wav")
    frames = rng.integers(0, 255, (int(video_s * 5), 16, 16, 3), dtype=np.uint8)
    return Trial(spec, eeg=eeg, audio=audio, video=Video(frames, 5.0, "/x/v.mp4"))


def test_segments_cover_the_trial_and_keep_ids_and_labels():
    info, settings = _info(), SegmentSettings(segment_seconds=5.0)
    records = segment_trial(conform(_trial(12.0), info, settings), info, settings)
    assert len(records) == 2                             # 12 s -> two whole 5 s segments
    first, second = records
    assert first["record_id"] == "t/s1/1/007/0" and second["segment"] == 1
    assert first["eeg_shape"] == [4, 500] and len(first["eeg"]) == 2000
    assert len(first["audio"]) == 40000 and len(first["video"]) == 25
    assert first["label"] == 1 and first["label_name"] == "b"
    assert first["valence_high"] == 1 and first["arousal_high"] == 0
    assert json.loads(first["extra"]) == {"task": "speaking"}
    assert second["start_seconds"] == 5.0


def test_segments_are_the_right_samples():
    info, settings = _info(), SegmentSettings(segment_seconds=5.0)
    trial = _trial(10.0)
    expected = trial.eeg.data[:, 500:1000].copy()
    records = segment_trial(conform(trial, info, settings), info, settings)
    got = np.asarray(records[1]["eeg"]).reshape(4, 500)
    np.testing.assert_array_equal(got, expected)


def test_channels_are_reordered_by_name():
    info, settings = _info(), SegmentSettings()
    trial = _trial(5.0, channels=["O1", "Cz", "Fp2", "Fp1"])
    original = trial.eeg.data.copy()
    conform(trial, info, settings)
    assert trial.eeg.ch_names == CH
    np.testing.assert_array_equal(trial.eeg.data[0], original[3])


def test_short_trial_is_padded_with_its_valid_length():
    info, settings = _info(), SegmentSettings(segment_seconds=5.0)
    records = segment_trial(conform(_trial(3.0), info, settings), info, settings)
    assert len(records) == 1
    assert records[0]["valid_seconds"] == pytest.approx(3.0)
    audio = np.asarray(records[0]["audio"])
    assert len(audio) == 40000 and not audio[24000:].any()   # zero padding after 3 s


def test_short_trial_rejected_when_asked():
    info = _info()
    settings = SegmentSettings(segment_seconds=5.0, short_trials="reject")
    with pytest.raises(DataError, match="shorter than one 5 s segment") as err:
        segment_trial(conform(_trial(3.0), info, settings), info, settings)
    assert err.value.kind == "truncated"


def test_truncated_modality_is_named():
    info, settings = _info(), SegmentSettings()
    with pytest.raises(DataError) as err:
        segment_trial(conform(_trial(10.0, audio_s=4.0), info, settings), info, settings)
    assert err.value.kind == "truncated" and err.value.field == "audio"
    assert "/x/a.wav" in str(err.value) and "expected 10.00 s" in str(err.value)


def test_declared_trial_length_catches_uniformly_short_trials():
    info, settings = _info(trial_seconds=20.0), SegmentSettings()
    with pytest.raises(DataError, match="expected 20.00 s"):
        segment_trial(conform(_trial(10.0), info, settings), info, settings)


def test_wrong_sample_rate_rejected_or_resampled():
    info = _info()
    with pytest.raises(DataError, match="250 Hz, expected 100 Hz") as err:
        conform(_trial(5.0, sfreq=250.0), info, SegmentSettings())
    assert err.value.kind == "sample_rate"
    trial = conform(_trial(5.0, sfreq=250.0, rate=16000), info,
                    SegmentSettings(resample_mismatched=True))
    assert trial.eeg.sfreq == 100.0 and trial.eeg.data.shape == (4, 500)
    assert trial.audio.sample_rate == 8000 and trial.audio.samples.shape == (40000,)


def test_missing_channel_named():
    with pytest.raises(DataError, match="O1") as err:
        conform(_trial(5.0, channels=["Fp1", "Fp2", "Cz"]), _info(), SegmentSettings())
    assert err.value.kind == "missing_channel"


def test_label_outside_space_and_nan_signal():
    info, settings = _info(), SegmentSettings()
    with pytest.raises(DataError, match="outside the label space") as err:
        segment_trial(conform(_trial(5.0, label=7), info, settings), info, settings)
    assert err.value.kind == "label"
    with pytest.raises(DataError, match="outside the common scale"):
        segment_trial(conform(_trial(5.0, valence=3.0), info, settings), info, settings)
    trial = _trial(5.0)
    trial.audio.samples[10] = np.nan
    with pytest.raises(DataError, match="NaN") as err:
        conform(trial, info, settings)
    assert err.value.field == "audio"
