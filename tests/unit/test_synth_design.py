"""The synthetic corpus' config and latent design: balance, determinism, noise rates."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError

from emoray.errors import ConfigError
from emoray.labels import EAV_CLASSES, EAV_VA
from emoray.synth.config import SynthConfig, make_config
from emoray.synth.design import IEMOCAP_CLASSES, build_design, stream


# ------------------------------------------------------------------------------ config
def test_config_defaults_resolve_per_layout():
    cfg = SynthConfig()
    assert (cfg.mode, cfg.layout, cfg.eeg_sfreq, cfg.audio_rate) == ("parallel", "native",
                                                                       500.0, 44100)
    assert len(cfg.eeg_channels) == 30 and cfg.eeg_channels[0] == "Fp1"
    deap = SynthConfig(layout="deap")                       # mode follows the layout
    assert deap.mode == "nonparallel"
    assert deap.eeg_sfreq == 128.0 and len(deap.eeg_channels) == 32
    assert SynthConfig(mode="nonparallel", layout="iemocap").audio_rate == 16000
    # the resolved config round-trips (what synth_config.yaml holds)
    assert SynthConfig(**deap.model_dump()) == deap


@pytest.mark.parametrize("values, message", [
    (dict(layout="deap", mode="parallel"), "set mode='nonparallel'"),
    (dict(layout="iemocap", mode="parallel"), "set mode='nonparallel'"),
    (dict(layout="eav", mode="nonparallel"), "set mode='parallel'"),
    (dict(layout="eav", eeg_sfreq=250.0), "500 Hz"),
    (dict(mode="nonparallel", layout="iemocap", audio_rate=44100), "16 kHz"),
    (dict(mode="nonparallel", layout="iemocap", subjects=3), "subjects must be even"),
    (dict(eeg_channels=["Fp1", "F3", "Xx9", "O1"]), "not 10-20 montage names"),
    (dict(eeg_channels=["Fp1", "F3", "F3", "O1"]), "duplicate"),
    (dict(video_size=95), "even"),
    (dict(label_noise=1.5), "less than or equal"),
    (dict(unknown_knob=1), "Extra inputs"),
])
def test_config_rejects_bad_values(values, message):
    with pytest.raises(ValidationError, match=message):
        SynthConfig(**values)


def test_make_config_raises_config_error():
    with pytest.raises(ConfigError, match="layout.*nonparallel"):
        make_config(layout="deap", mode="parallel")


def test_every_field_documented():
    for name, info in SynthConfig.model_fields.items():
        assert info.description and len(info.description) > 15, name


# ------------------------------------------------------------------------------ design
def test_balanced_classes_per_subject():
    gt = build_design(SynthConfig(subjects=3, trials_per_class=4))
    assert len(gt.subjects) == 3 and len(gt.trials) == 60
    for sid in (1, 2, 3):
        felt = Counter(t.felt for t in gt.trials_of("parallel", sid))
        assert felt == {c: 4 for c in EAV_CLASSES}
        assert [t.trial for t in gt.trials_of("parallel", sid)] == list(range(1, 21))


def test_deterministic_by_seed():
    a = build_design(SynthConfig(seed=7)).to_frame()
    b = build_design(SynthConfig(seed=7)).to_frame()
    c = build_design(SynthConfig(seed=8)).to_frame()
    assert a.equals(b)
    assert not a[["felt", "intensity"]].equals(c[["felt", "intensity"]])


def test_streams_do_not_reshuffle():
    small = build_design(SynthConfig(subjects=2, trials_per_class=2))
    big = build_design(SynthConfig(subjects=3, trials_per_class=3))
    s1, b1 = small.subject("parallel", 1), big.subject("parallel", 1)
    assert (s1.f0_base, s1.face_width, s1.alpha_peak) == (b1.f0_base, b1.face_width,
                                                          b1.alpha_peak)
    np.testing.assert_array_equal(s1.eeg_offsets, b1.eeg_offsets)
    # a trial's own draws depend on (subject, trial) only
    assert [t.intensity for t in small.trials_of("parallel", 2)] == \
        [t.intensity for t in big.trials_of("parallel", 2)][:10]
    # the voice does not change with the EEG channel list
    other = build_design(SynthConfig(subjects=2, eeg_channels=["Fp1", "Fp2", "Cz", "O1"]))
    assert other.subject("parallel", 2).f0_base == small.subject("parallel", 2).f0_base
    assert stream(1, "a", 2).random() != stream(1, "a", 3).random()


def test_label_noise_and_acting_rates():
    cfg = SynthConfig(subjects=10, trials_per_class=20, label_noise=0.3, acted_fraction=0.25)
    gt = build_design(cfg)
    flipped = np.array([t.label_flipped for t in gt.trials])
    acted = np.array([t.acted for t in gt.trials])
    assert abs(flipped.mean() - 0.3) < 0.05 and abs(acted.mean() - 0.25) < 0.05
    for t in gt.trials:
        assert (t.label != t.felt) == t.label_flipped
        assert (t.displayed != t.felt) == t.acted
        assert t.label in EAV_CLASSES and t.displayed in EAV_CLASSES
    assert not any(t.acted for t in build_design(SynthConfig(label_noise=0.0,
                                                             acted_fraction=0.0)).trials)


def test_valence_arousal_near_circumplex():
    gt = build_design(SynthConfig(subjects=4, trials_per_class=5))
    for t in gt.trials:
        v, a = EAV_VA[t.felt]
        assert abs(t.valence - v) < 0.3 and abs(t.arousal - a) < 0.3
        assert (t.valence > 0) == (v > 0) and (t.arousal > 0) == (a > 0)
        assert 0.6 <= t.intensity <= 1.0
    assert len({round(t.valence, 6) for t in gt.trials}) > 50     # jittered


def test_tasks_per_layout():
    eav = build_design(SynthConfig(layout="eav", subjects=1, trials_per_class=4))
    tasks = [t.task for t in eav.trials]
    assert tasks[:4] == ["listening", "speaking", "listening", "speaking"]
    per_class = Counter((t.felt, t.task) for t in eav.trials)
    assert set(per_class.values()) == {2}                      # task balanced within class
    assert {t.task for t in build_design(SynthConfig()).trials} == {"speaking"}
    np_ = build_design(SynthConfig(mode="nonparallel", subjects=2))
    assert np_.corpora() == ["eeg", "speech"]
    assert {t.task for t in np_.trials_of("eeg")} == {"watching"}
    assert not any(t.acted for t in np_.trials_of("eeg"))       # EEG cannot act


def test_iemocap_design():
    gt = build_design(SynthConfig(mode="nonparallel", layout="iemocap", subjects=4,
                                  trials_per_class=5))
    kept = [t for t in gt.trials if not t.excluded]
    assert {t.felt for t in kept} == set(IEMOCAP_CLASSES)
    assert "calmness" not in {t.label for t in gt.trials} | {t.displayed for t in gt.trials}
    codes = Counter(t.code for t in gt.trials)
    assert codes["exc"] > 0 and codes["hap"] > 0
    assert codes["fru"] > 0 and codes["xxx"] > 0
    assert all(t.label == "" for t in gt.trials if t.excluded)
    assert {t.session for t in gt.trials if t.subject in (3, 4)} == {2}
    assert all(2.0 <= t.seconds <= 6.0 for t in gt.trials)


def test_subject_traits_in_range():
    gt = build_design(SynthConfig(subjects=8))
    for s in gt.subjects:
        lo, hi = (160, 255) if s.sex == "female" else (85, 155)
        assert lo <= s.f0_base <= hi
        assert 8.0 <= s.alpha_peak <= 12.5
        assert s.eeg_offsets.shape == (30, 4)
    same = build_design(SynthConfig(subjects=2, subject_variation=0.0)).subjects
    np.testing.assert_array_equal(same[0].eeg_offsets, same[1].eeg_offsets)
    assert same[0].face_width == same[1].face_width
