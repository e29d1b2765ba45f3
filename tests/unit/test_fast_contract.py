"""The fast contract equals the per-call reference it replaced (``transforms.reference``).

Signals: the synthetic corpus's own generators (EEG with blinks and mains hum, speech
from the source-filter model) at several rates and lengths, the serving benchmark's
zero-padded noise request, and the README's example files (``sub-01_eeg.fif``,
``sub-01_audio.wav``, ``sub-01_video.mp4``) written and read back as ``emoray synth``
and ``emoray predict`` do.

Tolerances (also in the transforms' module docstrings):

- every float64 EEG step (notch, band-pass, blink removal, resampling): max abs difference
  at most ``1e-9`` of the reference output's std (measured: ~1e-14);
- the float32 features (``eeg``, ``eeg_de``, ``eeg_bp``, ``logmel``, ``audio_stats``):
  ``rtol=1e-6, atol=1e-6`` (one float32 rounding step);
- pitch: the same voiced frames, F0 within ``1e-9`` relative where voiced;
- the cached filter designs: exactly MNE's.
"""

from __future__ import annotations

import mne
import numpy as np
import pytest
import scipy.signal
import torch

import emoray.data.transforms as transforms
from emoray.config.contract import EEGContract, PreprocessContract, SpeechContract
from emoray.data.segment import cut
from emoray.data.transforms import eeg, reference, speech
from emoray.synth.config import SynthConfig, default_eeg_channels
from emoray.synth.design import build_design
from emoray.synth.eeg import simulate_eeg
from emoray.synth.rng import stream
from emoray.synth.speech import simulate_speech

STEP_TOL = 1e-9                  # max |fast - reference| / std(reference), float64 steps
FEATURE_TOL = {"rtol": 1e-6, "atol": 1e-6}
EEG_RATES = (128.0, 250.0, 256.0, 500.0, 1000.0)
EEG_SECONDS = (1.0, 2.5, 5.0)
SPEECH_RATES = (8000, 16000, 22050, 44100)
SPEECH_SECONDS = (0.5, 2.0, 5.0)
CHANNELS = list(default_eeg_channels())


@pytest.fixture(scope="module")
def subject():
    cfg = SynthConfig(subjects=1, trials_per_class=1, seconds=5.0, seed=11)
    return build_design(cfg).subjects[0]


def synth_eeg(subject, sfreq: float, seconds: float) -> np.ndarray:
    """``(30, T)`` volts from the corpus's EEG generator: blinks, 50 Hz hum, 1/f."""
    return simulate_eeg(subject, emotion="happiness", valence=0.6, arousal=0.4,
                        seconds=seconds, sfreq=sfreq, ch_names=CHANNELS,
                        rng=stream(11, "eeg", int(sfreq), int(10 * seconds)),
                        seed=11, blinks_per_min=40.0)


def synth_speech(subject, rate: int, seconds: float) -> np.ndarray:
    """``(T,)`` float32 from the corpus's speech generator (8 kHz: made at 16 kHz and
    decimated, as the generator's formant filters need more than a 4 kHz band)."""
    made = max(rate, 16000)
    x = simulate_speech(subject, emotion="anger", seconds=seconds, sample_rate=made,
                        rng=stream(11, "speech", rate, int(10 * seconds)))
    return x if made == rate else scipy.signal.resample_poly(x, rate, made).astype(np.float32)


def assert_step_equal(fast: np.ndarray, ref: np.ndarray) -> None:
    assert fast.shape == ref.shape
    err = np.abs(fast - ref).max() / ref.std()
    assert err <= STEP_TOL, f"max |fast - reference| is {err:.3g} of the std"


def assert_features_equal(fast: dict, ref: dict) -> None:
    assert fast.keys() == ref.keys()
    for k in ref:
        assert fast[k].dtype == ref[k].dtype and fast[k].shape == ref[k].shape, k
        np.testing.assert_allclose(fast[k], ref[k], err_msg=k, **FEATURE_TOL)


# -- EEG -------------------------------------------------------------------------------------
@pytest.mark.parametrize("sfreq", EEG_RATES)
def test_eeg_steps_and_features_equal_the_reference(subject, sfreq):
    c = EEGContract()
    for seconds in EEG_SECONDS:
        x = synth_eeg(subject, sfreq, seconds)                          # (C, T)
        filtered = reference.filter_eeg_reference(x, sfreq, c)
        assert_step_equal(eeg.filter_eeg(x, sfreq, c), filtered)
        clean = reference.remove_blinks_reference(filtered, sfreq, CHANNELS,
                                                  c.blink_channels)
        assert_step_equal(eeg.remove_blinks(filtered, sfreq, CHANNELS, c.blink_channels),
                          clean)
        assert_step_equal(eeg.resample_eeg(clean, sfreq, c.sfreq),
                          reference.resample_eeg_reference(clean, sfreq, c.sfreq))
        assert_features_equal(eeg.preprocess_eeg(x, sfreq, CHANNELS, c),
                              reference.preprocess_eeg_reference(x, sfreq, CHANNELS, c))


@pytest.mark.parametrize("contract", [
    EEGContract(notch=[50.0, 60.0], normalize="robust"),
    EEGContract(l_freq=1.0, h_freq=40.0, sfreq=128.0, normalize="global", clip=None),
    EEGContract(blink_removal=False, notch=[]),
], ids=["two-mains", "other-band", "no-blinks-no-notch"])
def test_eeg_contract_variants_equal_the_reference(subject, contract):
    for sfreq in (250.0, 512.0):
        x = synth_eeg(subject, sfreq, 3.0)
        assert_features_equal(eeg.preprocess_eeg(x, sfreq, CHANNELS, contract),
                              reference.preprocess_eeg_reference(x, sfreq, CHANNELS,
                                                                 contract))


def test_eeg_resampling_up_and_at_the_band_edge(subject):
    """90 Hz input: the band edge is Nyquist (high-pass only) and 100 Hz is upsampling."""
    c = EEGContract()
    x = synth_eeg(subject, 90.0, 4.0)
    assert_features_equal(eeg.preprocess_eeg(x, 90.0, CHANNELS, c),
                          reference.preprocess_eeg_reference(x, 90.0, CHANNELS, c))
    for out in (100.0, 200.0, 128.0):
        assert_step_equal(eeg.resample_eeg(x, 90.0, out),
                          reference.resample_eeg_reference(x, 90.0, out))


def test_fir_filter_is_mne_filter_data_and_the_designs_are_mne_s(subject):
    x = synth_eeg(subject, 500.0, 2.0)
    for l_freq, h_freq in ((0.5, 45.0), (None, 4.0), (1.0, None), (4.0, 8.0)):
        ref = mne.filter.filter_data(x, 500.0, l_freq, h_freq, verbose="error")
        assert_step_equal(eeg.fir_filter(x, 500.0, l_freq, h_freq), ref)
        assert np.array_equal(eeg._fir_design(500.0, l_freq, h_freq, "auto"),
                              mne.filter.create_filter(x, 500.0, l_freq, h_freq,
                                                       verbose="error"))
    freqs = eeg.mains_frequencies([50.0], 500.0)
    highs, lows = eeg.notch_bands(freqs)
    assert_step_equal(eeg.fir_filter(x, 500.0, highs, lows, 0.5),
                      mne.filter.notch_filter(x, 500.0, freqs, verbose="error"))
    # a filter longer than twice the signal: MNE's zero padding beyond the reflection
    short = x[:, :200]
    assert_step_equal(eeg.fir_filter(short, 500.0, 0.5, 45.0),
                      mne.filter.filter_data(short, 500.0, 0.5, 45.0, verbose="error"))


def test_a_wrong_padding_would_fail(subject):
    """The check can fail: MNE's filter with edge padding instead of ``reflect_limited``
    differs at the edges by far more than the tolerance, so a fast path that padded
    differently would be caught."""
    x = synth_eeg(subject, 250.0, 2.0)
    ref = mne.filter.filter_data(x, 250.0, 0.5, 45.0, verbose="error")
    other = mne.filter.filter_data(x, 250.0, 0.5, 45.0, pad="edge", verbose="error")
    with pytest.raises(AssertionError, match="of the std"):
        assert_step_equal(other, ref)


# -- speech ----------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", SPEECH_RATES)
def test_speech_features_equal_the_reference(subject, rate):
    c = SpeechContract()
    for seconds in SPEECH_SECONDS:
        x = synth_speech(subject, rate, seconds)                        # (T,)
        fast = speech.preprocess_speech(x, rate, c)
        assert_features_equal(fast, reference.preprocess_speech_reference(x, rate, c))


def test_pitch_tracker_equals_the_reference(subject):
    x = synth_speech(subject, 16000, 3.0).astype(np.float64)
    f0, voiced = speech.track_f0(x, 16000)
    f0_ref, voiced_ref = reference.track_f0_reference(x, 16000)
    assert voiced_ref.mean() > 0.3, "the test speech should be mostly voiced"
    assert np.array_equal(voiced, voiced_ref)
    np.testing.assert_allclose(f0[voiced], f0_ref[voiced], rtol=1e-9)
    # leading and trailing silence: frames that cannot be voiced are skipped, same answer
    padded = np.concatenate([np.zeros(8000), x, np.zeros(24000)])
    f0, voiced = speech.track_f0(padded, 16000)
    f0_ref, voiced_ref = reference.track_f0_reference(padded, 16000)
    assert np.array_equal(voiced, voiced_ref) and voiced.any()
    np.testing.assert_allclose(f0[voiced], f0_ref[voiced], rtol=1e-9)
    assert np.isnan(f0[:10]).all()


@pytest.mark.parametrize("f0", [62.0, 75.0, 160.0, 310.0, 480.0])
def test_pitch_over_the_whole_lag_range_equals_the_reference(f0):
    """Harmonic tones from the lowest F0 (the longest lags, where a too short FFT would
    wrap around) to the highest, F0 wobbling by 3 %: same voicing, same F0."""
    t = np.arange(32000) / 16000
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.03 * np.sin(2 * np.pi * 4 * t))) / 16000
    x = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.6 + 0.4 * np.sin(7 * t))
    f0_fast, voiced = speech.track_f0(x, 16000)
    f0_ref, voiced_ref = reference.track_f0_reference(x, 16000)
    assert voiced_ref.mean() > 0.8
    assert np.array_equal(voiced, voiced_ref)
    np.testing.assert_allclose(f0_fast[voiced], f0_ref[voiced], rtol=1e-9)


def test_silence_and_noise_equal_the_reference():
    c = SpeechContract()
    rng = np.random.default_rng(0)
    noise = np.concatenate([rng.uniform(-0.1, 0.1, 32000), np.zeros(48000)])  # serve's
    for x in (np.zeros(16000, np.float32), noise.astype(np.float32)):
        assert_features_equal(speech.preprocess_speech(x, 16000, c),
                              reference.preprocess_speech_reference(x, 16000, c))


# -- the README's example files, through prepare_inputs ---------------------------------------
@pytest.fixture(scope="module")
def example_files(tmp_path_factory):
    """``sub-01_eeg.fif``, ``sub-01_audio.wav``, ``sub-01_video.mp4``: one trial of
    ``emoray synth``'s native layout (its writers, its default rates), read back as
    ``emoray predict`` reads them."""
    from emoray.io.audio import Audio, read_audio, write_audio
    from emoray.io.eeg import EEG, read_eeg, write_eeg
    from emoray.io.video import read_video, write_mp4
    from emoray.synth.trial import simulate_trial

    root = tmp_path_factory.mktemp("readme")
    cfg = SynthConfig(subjects=1, trials_per_class=1, seconds=11.0, seed=5, video_size=48)
    gt = build_design(cfg)
    trial = next(t for t in gt.trials if t.task == "speaking")
    sig = simulate_trial(cfg, gt, trial)
    write_eeg(root / "sub-01_eeg.fif", EEG(sig["eeg"], cfg.eeg_sfreq, list(cfg.eeg_channels)))
    write_audio(root / "sub-01_audio.wav", Audio(sig["audio"], cfg.audio_rate))
    write_mp4(root / "sub-01_video.mp4", sig["video"], cfg.video_fps)
    return (read_eeg(root / "sub-01_eeg.fif"), read_audio(root / "sub-01_audio.wav"),
            read_video(root / "sub-01_video.mp4"))


def test_readme_example_files_give_the_reference_features(example_files):
    """Segment by segment, as ``prepare_inputs`` cuts them (5 s, the contract's)."""
    e, a, _ = example_files
    c = PreprocessContract()
    for k in range(2):
        x = cut(e.data, e.sfreq, 5.0 * k, 5.0, axis=1)                  # (C, T) float32
        assert_features_equal(eeg.preprocess_eeg(x, e.sfreq, e.ch_names, c.eeg),
                              reference.preprocess_eeg_reference(x, e.sfreq, e.ch_names,
                                                                 c.eeg))
        w = cut(a.samples, a.sample_rate, 5.0 * k, 5.0, axis=0)         # (T,) 44.1 kHz
        assert_features_equal(speech.preprocess_speech(w, a.sample_rate, c.audio),
                              reference.preprocess_speech_reference(w, a.sample_rate,
                                                                    c.audio))


def test_readme_example_files_give_the_reference_tensors(example_files, monkeypatch):
    """The model's input tensors from ``prepare_inputs``, fast vs reference transforms."""
    from emoray.predict import EEGInput, SpeechInput, VideoInput
    from emoray.predict.inputs import prepare_inputs

    e, a, v = example_files
    c = PreprocessContract()
    c.eeg.channels = CHANNELS[::-1]                  # picked by name, in another order
    c.video.n_frames, c.video.size = 10, 32
    sample = {"eeg": EEGInput(e.data, e.sfreq, e.ch_names),
              "speech": SpeechInput(a.samples, a.sample_rate),
              "video": VideoInput(v.frames, v.fps)}
    fast = prepare_inputs(c, [sample])
    calls = []

    def counted(fn):
        def wrapper(*args, **kwargs):
            calls.append(fn.__name__)
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(transforms, "preprocess_eeg",
                        counted(reference.preprocess_eeg_reference))
    monkeypatch.setattr(transforms, "preprocess_speech",
                        counted(reference.preprocess_speech_reference))
    ref = prepare_inputs(c, [sample])
    assert sorted(set(calls)) == ["preprocess_eeg_reference", "preprocess_speech_reference"]
    assert fast.keys() == ref.keys() and fast["eeg"].shape[0] == 2      # two 5 s segments
    for k in ref:
        if ref[k].dtype.is_floating_point:
            torch.testing.assert_close(fast[k], ref[k], **FEATURE_TOL)
        else:
            assert torch.equal(fast[k], ref[k]), k
