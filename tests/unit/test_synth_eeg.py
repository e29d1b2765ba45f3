"""Synthetic EEG: band powers follow arousal, alpha asymmetry follows valence, artifacts."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy.signal import welch

from emoray.labels import EAV_VA
from emoray.synth.config import SynthConfig
from emoray.synth.design import build_design, stream
from emoray.synth.eeg import (channel_geometry, class_signatures, simulate_eeg,
                              simulate_peripheral)

SFREQ = 250.0


@pytest.fixture(scope="module")
def cfg() -> SynthConfig:
    return SynthConfig(subjects=2, trials_per_class=1)


@pytest.fixture(scope="module")
def design(cfg):
    return build_design(cfg)


def _eeg(cfg, subject, emotion, key, **kw):
    valence, arousal = EAV_VA[emotion] if emotion else (0.0, 0.0)
    args = dict(emotion=emotion, valence=valence, arousal=arousal, seconds=8.0, sfreq=SFREQ,
                ch_names=cfg.eeg_channels, rng=stream(1, "test", *key), snr_db=10.0,
                hum=False, blinks_per_min=0.0)
    args.update(kw)
    return simulate_eeg(subject, **args)


def _band(x, lo, hi, sfreq=SFREQ):
    """Log band power per channel, ``(C,)``."""
    f, p = welch(x, sfreq, nperseg=int(2 * sfreq))
    return np.log(p[:, (f >= lo) & (f < hi)].mean(axis=1))


def _mean_band(cfg, subject, emotion, lo, hi, n=4, **kw):
    return np.mean([_band(_eeg(cfg, subject, emotion, (emotion, k), **kw), lo, hi)
                    for k in range(n)], axis=0)


def test_shape_units_and_speed(cfg, design):
    subject = design.subjects[0]
    kw = dict(emotion="neutral", valence=0.15, arousal=-0.2, seconds=20.0, sfreq=500.0,
              ch_names=cfg.eeg_channels, snr_db=cfg.eeg_snr_db)
    simulate_eeg(subject, rng=stream(0, "warm"), **kw)
    times = []
    for k in range(3):
        t0 = time.perf_counter()
        x = simulate_eeg(subject, rng=stream(0, "speed", k), **kw)
        times.append(time.perf_counter() - t0)
    assert x.shape == (30, 10000)
    assert np.isfinite(x).all()
    rms_uv = x.std(axis=1) * 1e6
    assert 5.0 < np.median(rms_uv) < 60.0           # tens of microvolts, in volts
    assert min(times) < 0.5


def test_arousal_lowers_alpha_and_raises_beta(cfg, design):
    subject = design.subjects[0]
    alpha = {e: _mean_band(cfg, subject, e, 8, 13).mean() for e in ("anger", "calmness")}
    beta = {e: _mean_band(cfg, subject, e, 14, 30).mean() for e in ("anger", "calmness")}
    gamma = {e: _mean_band(cfg, subject, e, 30, 45).mean() for e in ("anger", "calmness")}
    assert alpha["anger"] < alpha["calmness"] - 0.3
    assert beta["anger"] > beta["calmness"] + 0.3
    assert gamma["anger"] > gamma["calmness"] + 0.3


def test_frontal_alpha_asymmetry_follows_valence(cfg):
    flat = build_design(SynthConfig(subjects=1, trials_per_class=1, subject_variation=0.0))
    subject = flat.subjects[0]
    names = list(cfg.eeg_channels)
    left = [names.index(c) for c in ("F3", "F7")]
    right = [names.index(c) for c in ("F4", "F8")]

    def faa(valence):
        alpha = np.mean([_band(_eeg(cfg, subject, None, ("faa", valence, k),
                                    valence=valence, intensity=1.0), 8, 13)
                         for k in range(4)], axis=0)
        return alpha[right].mean() - alpha[left].mean()     # ln R - ln L

    assert faa(0.8) > 0.2          # positive valence: less left-frontal alpha
    assert faa(-0.8) < -0.2


def test_asymmetry_is_not_from_class_signatures(cfg):
    geo = channel_geometry(tuple(cfg.eeg_channels))
    sig = class_signatures(0, tuple(cfg.eeg_channels))
    assert sig.shape == (5, 30, 4)
    np.testing.assert_allclose(sig, sig[:, geo.mirror, :])   # left-right symmetric
    assert np.abs(sig[0] - sig[2]).mean() > 0.05              # classes differ


def test_mains_hum_at_50hz(cfg, design):
    subject = design.subjects[0]
    x = _eeg(cfg, subject, "neutral", ("hum",), hum=True)
    f, p = welch(x, SFREQ, nperseg=int(4 * SFREQ))
    p = p.mean(axis=0)
    peak = p[np.argmin(np.abs(f - 50.0))]
    around = p[((f > 40) & (f < 48)) | ((f > 52) & (f < 60))]
    assert peak > 20 * np.median(around)
    quiet = _eeg(cfg, subject, "neutral", ("hum",), hum=False)
    f, q = welch(quiet, SFREQ, nperseg=int(4 * SFREQ))
    q = q.mean(axis=0)
    assert q[np.argmin(np.abs(f - 50.0))] < 3 * np.median(q[(f > 40) & (f < 60)])


def test_blinks_large_frontal_decaying_backwards(cfg, design):
    subject = design.subjects[0]
    names = list(cfg.eeg_channels)
    with_blinks = _eeg(cfg, subject, "neutral", ("blink",), blink_times=np.array([2.0, 5.0]))
    without = _eeg(cfg, subject, "neutral", ("blink",), blink_times=np.array([]))
    blink = (with_blinks - without) * 1e6                       # (C, T) in uV
    peak = {c: blink[names.index(c)].max() for c in ("Fp1", "F3", "C3", "O1")}
    assert 90.0 < peak["Fp1"] < 210.0
    assert peak["Fp1"] > peak["F3"] > peak["C3"] > peak["O1"]
    assert peak["O1"] < 0.05 * peak["Fp1"]
    # ~300 ms transient: above half its height for 50-250 ms
    above = (blink[names.index("Fp1")] > peak["Fp1"] / 2).sum() / SFREQ
    assert 0.05 < above / 2 < 0.25
    # drawn from the rate when no times are given
    many = _eeg(cfg, subject, "neutral", ("rate",), blinks_per_min=60.0)
    none = _eeg(cfg, subject, "neutral", ("rate",), blinks_per_min=0.0)
    fp1 = names.index("Fp1")
    assert np.ptp(many[fp1]) > np.ptp(none[fp1]) + 50e-6


def test_subjects_differ(cfg, design):
    a, b = design.subjects[:2]
    assert a.alpha_peak != b.alpha_peak
    pa = _mean_band(cfg, a, "neutral", 8, 13, n=2)
    pb = _mean_band(cfg, b, "neutral", 8, 13, n=2)
    assert np.abs(pa - pb).mean() > 0.2


def test_peripheral_channels():
    x = simulate_peripheral(arousal=0.5, seconds=6.0, sfreq=128.0, rng=stream(0, "p"),
                            blink_times=np.array([1.0, 3.0]))
    assert x.shape == (8, 768) and np.isfinite(x).all()
    assert np.ptp(x[1]) > 150.0                                 # vEOG shows blinks
    assert 25.0 < x[7].mean() < 40.0                            # skin temperature
