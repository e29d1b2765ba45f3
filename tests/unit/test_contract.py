"""The preprocessing contract: defaults, JSON round trip, fingerprint, errors, shapes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from emoray.config.contract import (
    SpeechContract,
    EEGContract,
    PreprocessContract,
    VideoContract,
    resampled_length,
)
from emoray.data.transforms import (
    speech_stat_names,
    preprocess_speech,
    preprocess_eeg,
    preprocess_video,
)
from emoray.errors import ConfigError


def test_defaults_follow_eav_reference():
    c = PreprocessContract()
    assert c.segment_seconds == 5.0
    assert (c.eeg.sfreq, c.eeg.l_freq, c.eeg.h_freq) == (100.0, 0.5, 45.0)
    assert (c.audio.sample_rate, c.audio.n_mels) == (16000, 128)
    assert (c.video.n_frames, c.video.size) == (25, 224)
    assert list(c.eeg.bands) == ["delta", "theta", "alpha", "beta", "gamma"]


def test_json_round_trip_restores_equal_contract(tmp_path):
    c = PreprocessContract(
        segment_seconds=4.0,
        eeg=EEGContract(channels=["Fp1", "Fp2", "Cz"], notch=[60.0], normalize="robust",
                        clip=None, bands={"alpha": (8, 13), "beta": (13, 30)}),
        audio=SpeechContract(n_mels=64, f_max=None),
        video=VideoContract(n_frames=8, size=112, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2)),
    )
    back = PreprocessContract.from_json(c.to_json())
    assert back == c
    assert back.eeg.bands["alpha"] == (8.0, 13.0)          # tuples, not lists, after reload
    path = c.save(tmp_path / "ckpt" / "contract.json")
    assert PreprocessContract.load(path) == c
    assert json.loads(path.read_text())["eeg"]["channels"] == ["Fp1", "Fp2", "Cz"]


def test_fingerprint_stable_and_sensitive():
    a, b = PreprocessContract(), PreprocessContract()
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 16
    assert PreprocessContract.from_json(a.to_json()).fingerprint() == a.fingerprint()
    changed = [
        PreprocessContract(segment_seconds=4.0),
        PreprocessContract(eeg=EEGContract(h_freq=40.0)),
        PreprocessContract(eeg=EEGContract(channels=["Cz"])),
        PreprocessContract(audio=SpeechContract(hop_length=320)),
        PreprocessContract(video=VideoContract(size=112)),
    ]
    prints = {a.fingerprint(), *(c.fingerprint() for c in changed)}
    assert len(prints) == len(changed) + 1
    # The band order is the feature-column order, so it is part of the identity.
    bands = dict(reversed(list(a.eeg.bands.items())))
    assert PreprocessContract(eeg=EEGContract(bands=bands)).fingerprint() != a.fingerprint()


def test_extra_field_rejected_with_its_name(tmp_path):
    data = json.loads(PreprocessContract().to_json())
    data["eeg"]["hfreq"] = 40.0                             # a typo of h_freq
    path = tmp_path / "contract.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as err:
        PreprocessContract.load(path)
    msg = str(err.value)
    assert str(path) in msg and "eeg.hfreq" in msg and "unknown field" in msg


def test_invalid_json_and_missing_file_name_the_file(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("{ not json")
    with pytest.raises(ConfigError, match="broken.json.*not valid JSON"):
        PreprocessContract.load(bad)
    with pytest.raises(ConfigError, match="nope.json.*cannot read"):
        PreprocessContract.load(tmp_path / "nope.json")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"eeg": {"sfreq": "fast"}}))
    with pytest.raises(ConfigError, match=r"wrong.json.*eeg\.sfreq"):
        PreprocessContract.load(wrong)


def test_inconsistent_values_rejected():
    with pytest.raises(ValueError, match="Nyquist"):
        EEGContract(sfreq=64.0)                             # 45 Hz band above 32 Hz Nyquist
    with pytest.raises(ValueError, match="l_freq"):
        EEGContract(l_freq=50.0)
    with pytest.raises(ValueError, match="band 'gamma'"):
        EEGContract(bands={"gamma": (30.0, 80.0)})
    with pytest.raises(ValueError, match="f_max"):
        SpeechContract(sample_rate=8000)                     # f_max 8000 > 4000 Nyquist
    with pytest.raises(ConfigError, match="version 9"):
        PreprocessContract.from_json(json.dumps({"version": 9}))


def test_resampled_length_rounds_half_up():
    assert resampled_length(2500, 500, 100) == 500
    assert resampled_length(1280, 256, 100) == 500
    assert resampled_length(5, 2, 1) == 3                   # 2.5 -> 3 (not banker's 2)
    assert resampled_length(220500, 44100, 16000) == 80000


@pytest.mark.parametrize("seconds", [5.0, 2.0])
def test_output_shapes_match_the_functions(seconds):
    c = PreprocessContract(segment_seconds=seconds)
    rng = np.random.default_rng(0)
    names = ["Fp1", "Fp2", "F3", "F4", "Cz", "O1"]
    eeg = rng.standard_normal((len(names), int(seconds * 500))) * 1e-5   # (C, T) volts
    t = np.arange(int(seconds * 44100)) / 44100
    audio = (0.2 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)      # (T,)
    video = rng.integers(0, 256, (int(seconds * 30), 48, 64, 3), dtype=np.uint8)
    got = {
        **preprocess_eeg(eeg, 500.0, names, c.eeg),
        **preprocess_speech(audio, 44100, c.audio),
        **preprocess_video(video, c.video),
    }
    want = c.output_shapes(len(names))
    assert {k: v.shape for k, v in got.items()} == want
    assert want["audio_stats"] == (len(speech_stat_names(c.audio.n_mels)),)
    assert all(v.dtype == np.float32 for v in got.values())
