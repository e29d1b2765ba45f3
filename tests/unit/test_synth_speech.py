"""Synthetic speech: prosody follows the displayed emotion, speaker traits, noise."""

from __future__ import annotations

import time

import numpy as np
import pytest

from emoray.synth.config import SynthConfig
from emoray.synth.corpus import simulate_trial
from emoray.synth.design import build_design, stream
from emoray.synth.speech import mouth_envelope, simulate_speech

SR = 16000


@pytest.fixture(scope="module")
def design():
    return build_design(SynthConfig(subjects=2, trials_per_class=1))


def _f0(x: np.ndarray, sr: int = SR) -> float:
    """Median F0 (Hz) of the voiced 40 ms frames, by autocorrelation."""
    frame = int(0.04 * sr)
    lo, hi = int(sr / 450), int(sr / 60)
    level = np.sqrt(np.mean(x.astype(float) ** 2))
    found = []
    for a in range(0, len(x) - frame, frame // 2):
        seg = x[a:a + frame].astype(float)
        seg -= seg.mean()
        if np.sqrt(np.mean(seg ** 2)) < level:          # voiced, loud frames only
            continue
        ac = np.correlate(seg, seg, "full")[frame - 1:]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.4 * ac[0]:
            found.append(sr / lag)
    return float(np.median(found))


def _speech(subject, emotion, k=0, seconds=4.0, **kw):
    return simulate_speech(subject, emotion=emotion, seconds=seconds, sample_rate=SR,
                           rng=stream(3, "speech-test", emotion, k), **kw)


def _rms_db(x):
    return 10 * np.log10(np.mean(x.astype(float) ** 2))


def test_shape_range_and_speed(design):
    subject = design.subjects[0]
    simulate_speech(subject, emotion="anger", seconds=1.0, rng=stream(0, "warm"))
    times = []
    for k in range(2):
        t0 = time.perf_counter()
        x = simulate_speech(subject, emotion="anger", seconds=20.0, sample_rate=44100,
                            rng=stream(0, "speed", k))
        times.append(time.perf_counter() - t0)
    assert x.shape == (20 * 44100,) and x.dtype == np.float32
    assert np.abs(x).max() <= 1.0 and np.abs(x).max() > 0.05
    assert min(times) < 1.0


def test_f0_higher_for_anger_than_sadness(design):
    for subject in design.subjects:
        anger = np.mean([_f0(_speech(subject, "anger", k)) for k in range(2)])
        sad = np.mean([_f0(_speech(subject, "sadness", k)) for k in range(2)])
        assert anger > 1.25 * sad
        # the estimate sits near the speaker's own range
        assert 0.6 * subject.f0_base < sad < 1.3 * subject.f0_base


def test_energy_ordering(design):
    subject = design.subjects[0]
    level = {e: np.mean([_rms_db(_speech(subject, e, k)) for k in range(3)])
             for e in ("anger", "neutral", "sadness")}
    assert level["anger"] > level["neutral"] + 2.0 > level["sadness"] + 4.0


def test_speaker_traits_set_pitch(design):
    female, male = design.subjects                    # odd ids female, even ids male
    assert female.sex == "female" and male.sex == "male"
    assert _f0(_speech(female, "neutral")) > 1.4 * _f0(_speech(male, "neutral"))


def test_background_noise_follows_snr(design):
    subject = design.subjects[0]

    def floor(snr):
        x = _speech(subject, "neutral", snr_db=snr).astype(float)
        frames = x[: len(x) // 160 * 160].reshape(-1, 160)
        return 10 * np.log10(np.percentile(np.mean(frames ** 2, axis=1), 5))

    assert floor(5.0) > floor(35.0) + 20.0


def test_acted_trials_follow_displayed_emotion():
    cfg = SynthConfig(subjects=1, trials_per_class=4, seconds=3.0, audio_rate=SR,
                      acted_fraction=1.0, label_noise=0.0)
    gt = build_design(cfg)
    assert all(t.acted and t.displayed != t.felt for t in gt.trials)
    f0 = {}
    for trial in gt.trials:
        if trial.displayed in ("anger", "sadness"):
            audio = simulate_trial(cfg, gt, trial)["audio"]
            f0.setdefault(trial.displayed, []).append(_f0(audio))
    assert np.mean(f0["anger"]) > 1.2 * np.mean(f0["sadness"])


def test_mouth_envelope_tracks_syllables(design):
    x = _speech(design.subjects[0], "neutral", seconds=6.0)
    env = mouth_envelope(x, SR, fps=25.0, n_frames=150)
    assert env.shape == (150,)
    assert env.min() == 0.0 and env.max() == 1.0
    assert 0.2 < (env > 0.5).mean() < 0.9                # open on syllables, shut in pauses


@pytest.mark.parametrize("rate", [8000, 11025])
def test_telephone_rates_synthesise_every_consonant(design, rate):
    """The synth config accepts 8 kHz: the consonant noise bands above Nyquist are cut to
    the octave below it instead of failing."""
    x = simulate_speech(design.subjects[0], emotion="happiness", seconds=4.0,
                        sample_rate=rate, rng=stream(5, "low-rate", rate))
    assert x.shape == (4 * rate,) and np.isfinite(x).all() and np.abs(x).max() > 0.05
