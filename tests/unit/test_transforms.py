"""Per-record preprocessing on signals built here: sines, 1/f noise, blinks, harmonic tones.

Every check measures a property of the real output (attenuation in dB, amplitude, power
ratios, pitch) that a wrong filter, regression or tracker would change.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch
import torchvision.io

from emoray.config.contract import SpeechContract, EEGContract, PreprocessContract, VideoContract
from emoray.data.transforms import (
    SPEECH_STAT_NAMES,
    speech_stat_names,
    filter_eeg,
    frame_indices,
    mains_frequencies,
    normalize_video,
    preprocess_speech,
    preprocess_eeg,
    preprocess_video,
    preprocess_video_jpeg,
    remove_blinks,
    resample_eeg,
    track_f0,
)
from emoray.errors import DataError

CHANNELS = ["Fp1", "Fp2", "AF3", "AF4", "F7", "F3", "Fz", "F4", "F8",
            "C3", "Cz", "C4", "P3", "Pz", "P4", "O1", "O2"]
# How strongly a blink reaches each channel: strongest frontal-polar, decaying backwards.
BLINK_WEIGHTS = {"Fp1": 1.0, "Fp2": 1.0, "AF3": 0.75, "AF4": 0.75, "F7": 0.5, "F8": 0.5,
                 "F3": 0.45, "Fz": 0.5, "F4": 0.45, "C3": 0.15, "Cz": 0.2, "C4": 0.15}
UV = 1e-6


def pink_noise(rng, n_chans, n, sfreq, rms_uv=8.0):
    """(C, T) 1/f noise in volts: white noise shaped by 1/sqrt(f) in amplitude."""
    spec = np.fft.rfft(rng.standard_normal((n_chans, n)), axis=1)
    f = np.fft.rfftfreq(n, 1 / sfreq)
    spec[:, 1:] /= np.sqrt(f[1:])
    spec[:, 0] = 0
    x = np.fft.irfft(spec, n, axis=1)
    return x / x.std(axis=1, keepdims=True) * rms_uv * UV


def blinks(n, sfreq, times_s, amp_uv=150.0, width_s=0.3):
    """(T,) blink waveform: raised-cosine pulses of ``width_s`` at ``times_s``."""
    t = np.arange(n) / sfreq
    out = np.zeros(n)
    for t0 in times_s:
        inside = np.abs(t - t0) < width_s / 2
        out[inside] += 0.5 * (1 + np.cos(2 * np.pi * (t[inside] - t0) / width_s))
    return out * amp_uv * UV


def sine(n, sfreq, freq, amp_uv, phase=0.0):
    return amp_uv * UV * np.sin(2 * np.pi * freq * np.arange(n) / sfreq + phase)


def amplitude_at(x, sfreq, freq, trim_s=1.0):
    """Least-squares amplitude of a ``freq`` sinusoid in ``x`` away from the edges."""
    k = int(trim_s * sfreq)
    t = np.arange(x.shape[-1])[k:-k] / sfreq
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, x[k:-k], rcond=None)
    return float(np.hypot(*coef))


def band_power(x, sfreq, lo, hi):
    f, p = scipy.signal.welch(x, fs=sfreq, nperseg=min(x.shape[-1], int(2 * sfreq)))
    return float(p[(f >= lo) & (f < hi)].sum())


@pytest.fixture(scope="module")
def eeg_scene():
    """A 5 s, 500 Hz scene: background, frontal alpha asymmetry, blinks, 50 Hz hum."""
    rng = np.random.default_rng(7)
    sfreq, n = 500.0, 2500
    background = pink_noise(rng, len(CHANNELS), n, sfreq)
    idx = {ch: i for i, ch in enumerate(CHANNELS)}
    background[idx["F3"]] += sine(n, sfreq, 10.0, 10.0)          # left alpha stronger
    background[idx["F4"]] += sine(n, sfreq, 10.0, 5.0, 0.7)
    background[idx["Fp1"]] += sine(n, sfreq, 10.0, 8.0, 1.3)
    blink = blinks(n, sfreq, [0.7, 1.9, 3.1, 4.3])
    weights = np.array([BLINK_WEIGHTS.get(ch, 0.05) for ch in CHANNELS])
    contaminated = background + weights[:, None] * blink[None]
    return sfreq, background, contaminated, idx


# -- EEG -------------------------------------------------------------------------------------
def test_mains_hum_reduced_by_30_db():
    sfreq, n = 500.0, 2500
    rng = np.random.default_rng(1)
    x = pink_noise(rng, 2, n, sfreq) + sine(n, sfreq, 50.0, 40.0)[None]
    c = EEGContract()
    assert mains_frequencies(c.notch, sfreq) == [50.0, 100.0, 150.0, 200.0]
    assert mains_frequencies(c.notch, 128.0) == [50.0]
    y = filter_eeg(x, sfreq, c)
    before = amplitude_at(x[0], sfreq, 50.0)
    after = amplitude_at(y[0], sfreq, 50.0)
    assert 20 * np.log10(before / after) > 30.0


def test_alpha_sine_kept_before_normalisation(eeg_scene):
    sfreq, background, contaminated, idx = eeg_scene
    c = EEGContract()
    x = filter_eeg(contaminated, sfreq, c)
    x = remove_blinks(x, sfreq, CHANNELS, c.blink_channels)
    x = resample_eeg(x, sfreq, c.sfreq)
    assert x.shape == (len(CHANNELS), 500)
    for ch, amp in [("F3", 10.0), ("F4", 5.0), ("Fp1", 8.0)]:
        got = amplitude_at(x[idx[ch]], c.sfreq, 10.0) / UV
        assert abs(got - amp) / amp < 0.10, (ch, got)


def test_blinks_removed_alpha_asymmetry_kept(eeg_scene):
    sfreq, background, contaminated, idx = eeg_scene
    c = EEGContract()
    truth = filter_eeg(background, sfreq, c)
    dirty = filter_eeg(contaminated, sfreq, c)
    clean = remove_blinks(dirty, sfreq, CHANNELS, c.blink_channels)
    for ch in ("Fp1", "Fp2", "AF3", "F3", "Fz"):
        i = idx[ch]
        before = band_power(dirty[i] - truth[i], sfreq, 0.5, 4.0)
        after = band_power(clean[i] - truth[i], sfreq, 0.5, 4.0)
        assert after < 0.3 * before, (ch, after / before)

    alpha = list(c.bands).index("alpha")
    with_blinks = preprocess_eeg(contaminated, sfreq, CHANNELS, c)["eeg_bp"][:, alpha]
    no_blinks = preprocess_eeg(background, sfreq, CHANNELS, c)["eeg_bp"][:, alpha]
    asym = with_blinks[idx["F3"]] - with_blinks[idx["F4"]]
    assert asym == pytest.approx(np.log10(4.0), abs=0.15)        # (10 / 5 uV)^2 in power
    assert asym == pytest.approx(no_blinks[idx["F3"]] - no_blinks[idx["F4"]], abs=0.05)


@pytest.mark.parametrize("sfreq", [500.0, 256.0, 128.0])
def test_eeg_shapes_and_normalisation(sfreq):
    rng = np.random.default_rng(2)
    n = int(5 * sfreq)
    x = pink_noise(rng, len(CHANNELS), n, sfreq)
    c = EEGContract(channels=["O2", "Fp1", "cz"])                 # pick and reorder by name
    out = preprocess_eeg(x, sfreq, CHANNELS, c)
    assert out["eeg"].shape == (3, 500) and out["eeg"].dtype == np.float32
    assert out["eeg_de"].shape == out["eeg_bp"].shape == (3, 5)
    assert np.allclose(out["eeg"].mean(axis=1), 0, atol=1e-4)
    assert np.allclose(out["eeg"].std(axis=1), 1, atol=1e-3)
    # The picked rows are the named channels: O2 alone equals O2 picked among others.
    alone = preprocess_eeg(x[[CHANNELS.index("O2")]], sfreq, ["O2"],
                           EEGContract(blink_removal=False))
    assert not np.allclose(out["eeg"][0], alone["eeg"][0])        # blinks regressed out
    same = preprocess_eeg(x, sfreq, CHANNELS, EEGContract(channels=["O2"], blink_removal=False))
    np.testing.assert_allclose(same["eeg"][0], alone["eeg"][0], atol=1e-5)


def test_eeg_independent_of_input_channel_order():
    sfreq = 250.0
    rng = np.random.default_rng(10)
    x = pink_noise(rng, len(CHANNELS), 1250, sfreq)
    x[:2] += blinks(1250, sfreq, [1.0, 3.5])[None]
    c = EEGContract(channels=CHANNELS)
    perm = rng.permutation(len(CHANNELS))
    a = preprocess_eeg(x, sfreq, CHANNELS, c)
    b = preprocess_eeg(x[perm], sfreq, [CHANNELS[i] for i in perm], c)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5)


def test_band_features_follow_injected_power():
    sfreq, n = 256.0, 1280
    rng = np.random.default_rng(3)
    x = pink_noise(rng, 2, n, sfreq, rms_uv=2.0)
    x[1] += sine(n, sfreq, 20.0, 15.0)                             # beta burst on channel 1
    c = EEGContract(blink_removal=False)
    out = preprocess_eeg(x, sfreq, ["C3", "C4"], c)
    beta = list(c.bands).index("beta")
    for feat in ("eeg_de", "eeg_bp"):
        v = out[feat]
        assert v[1, beta] > v[0, beta] + 1.0                       # more beta where injected
        assert abs(v[1, 0] - v[0, 0]) < 0.5                        # delta about the same
    # DE is that of a Gaussian with the band power as variance: sine power = amp^2 / 2.
    assert out["eeg_de"][1, beta] == pytest.approx(
        0.5 * np.log(2 * np.pi * np.e * 15.0 ** 2 / 2), abs=0.15)


def test_robust_normalisation_and_clip():
    sfreq, n = 200.0, 1000
    x = pink_noise(np.random.default_rng(4), 1, n, sfreq)
    x[0, 500] += 2000 * UV                                         # one huge spike
    out = preprocess_eeg(x, sfreq, ["Cz"], EEGContract(normalize="robust", clip=5.0))["eeg"]
    assert out.max() == pytest.approx(5.0)
    assert 0.8 < np.subtract(*np.percentile(out, [75, 25])) / 1.349 < 1.2


def test_eeg_rejects_bad_input():
    c = EEGContract()
    x = pink_noise(np.random.default_rng(5), 2, 1000, 200.0)
    bad = x.copy()
    bad[1, 10] = np.nan
    with pytest.raises(DataError) as err:
        preprocess_eeg(bad, 200.0, ["C3", "C4"], c, source="s01.fif")
    assert (err.value.kind, err.value.field) == ("invalid_value", "eeg")
    assert "s01.fif" in str(err.value)
    with pytest.raises(DataError) as err:
        preprocess_eeg(x, 64.0, ["C3", "C4"], c)
    assert err.value.kind == "sample_rate" and "90" in err.value.reason
    with pytest.raises(DataError) as err:
        preprocess_eeg(x, 200.0, ["C3", "C4"], EEGContract(channels=["C3", "Pz"]))
    assert err.value.kind == "missing_channel" and "Pz" in err.value.reason
    with pytest.raises(DataError, match="channel names"):
        preprocess_eeg(x, 200.0, ["C3"], c)
    with pytest.raises(DataError) as err:
        preprocess_eeg(x[:, :50], 200.0, ["C3", "C4"], c)
    assert err.value.kind == "truncated"


def test_eeg_at_exactly_twice_h_freq():
    x = pink_noise(np.random.default_rng(6), 2, 450, 90.0)
    out = preprocess_eeg(x, 90.0, ["C3", "C4"], EEGContract())
    assert out["eeg"].shape == (2, 500) and np.isfinite(out["eeg"]).all()


# -- audio -----------------------------------------------------------------------------------
def voiced_tone(f0, sr, seconds=2.0, amp=0.3, syllable_hz=4.0, vibrato=0.0):
    """(T,) speech-like tone: harmonics of a (slightly varying) F0 with a syllable envelope."""
    t = np.arange(int(seconds * sr)) / sr
    inst = f0 * (1 + vibrato * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(inst) / sr
    harmonics = sum(np.sin(k * phase) / k for k in range(1, 8) if k * f0 < sr / 2)
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * syllable_hz * t - np.pi / 2)
    return (amp * harmonics * envelope / 2).astype(np.float32)


def stat(out, name):
    return float(out["audio_stats"][-len(SPEECH_STAT_NAMES) + SPEECH_STAT_NAMES.index(name)])


@pytest.mark.parametrize("rate", [44100, 16000, 8000])
def test_audio_shapes(rate):
    c = SpeechContract()
    out = preprocess_speech(voiced_tone(150.0, rate), rate, c)
    assert out["logmel"].shape == (128, 1 + 32000 // 160)
    assert out["audio_stats"].shape == (len(speech_stat_names(128)),)
    assert np.isfinite(out["audio_stats"]).all() and np.isfinite(out["logmel"]).all()
    # Utterance normalisation: each (non-empty) mel bin has zero mean over time.
    assert np.abs(out["logmel"].mean(axis=1)).max() < 1e-3
    assert stat(out, "f0_st_mean") == pytest.approx(12 * np.log2(150 / 100), abs=0.3)


def test_pitch_energy_and_rate_stats_follow_the_signal():
    c = SpeechContract()
    low = preprocess_speech(voiced_tone(110.0, 16000), 16000, c)
    high = preprocess_speech(voiced_tone(220.0, 16000), 16000, c)
    assert stat(high, "f0_st_mean") - stat(low, "f0_st_mean") == pytest.approx(12.0, abs=0.5)
    assert stat(high, "voiced_fraction") > 0.8
    loud = preprocess_speech(4 * voiced_tone(110.0, 16000), 16000, c)
    assert stat(loud, "rms_db_mean") - stat(low, "rms_db_mean") == pytest.approx(12.0, abs=0.5)
    slow = preprocess_speech(voiced_tone(150.0, 16000, seconds=3.0, syllable_hz=2.0), 16000, c)
    fast = preprocess_speech(voiced_tone(150.0, 16000, seconds=3.0, syllable_hz=5.0), 16000, c)
    assert stat(slow, "rate_peaks_per_s") == pytest.approx(2.0, abs=0.5)
    assert stat(fast, "rate_peaks_per_s") == pytest.approx(5.0, abs=0.7)
    shaky = preprocess_speech(voiced_tone(150.0, 16000, vibrato=0.06), 16000, c)
    assert stat(shaky, "jitter") > 3 * stat(low, "jitter")
    assert stat(shaky, "f0_st_std") > 0.5


def test_noise_is_unvoiced():
    noise = np.random.default_rng(8).standard_normal(16000).astype(np.float32) * 0.1
    f0, voiced = track_f0(noise.astype(np.float64), 16000)
    assert voiced.mean() < 0.1
    out = preprocess_speech(noise, 16000, SpeechContract())
    assert stat(out, "voiced_fraction") < 0.1


def test_logmel_peak_moves_up_with_frequency():
    c = SpeechContract(normalize="none")
    t = np.arange(16000) / 16000
    peaks = []
    for f in (300.0, 1000.0, 3000.0):
        out = preprocess_speech((0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32), 16000, c)
        peaks.append(int(out["logmel"].mean(axis=1).argmax()))
    assert peaks[0] < peaks[1] < peaks[2]


def test_audio_rejects_bad_input():
    c = SpeechContract()
    with pytest.raises(DataError) as err:
        preprocess_speech(np.zeros(300, np.float32), 16000, c, source="a.wav")
    assert (err.value.kind, err.value.field) == ("truncated", "audio")
    assert "a.wav" in str(err.value)
    with pytest.raises(DataError) as err:                        # 1000 samples -> 363 at 16 kHz
        preprocess_speech(np.zeros(1000, np.float32), 44100, c)
    assert err.value.kind == "truncated"
    with pytest.raises(DataError, match="empty"):
        preprocess_speech(np.zeros(0, np.float32), 16000, c)
    bad = voiced_tone(150.0, 16000)
    bad[5] = np.inf
    with pytest.raises(DataError) as err:
        preprocess_speech(bad, 16000, c)
    assert err.value.kind == "invalid_value"
    with pytest.raises(DataError) as err:
        preprocess_speech(np.zeros((2, 16000), np.float32), 16000, c)
    assert err.value.kind == "layout"


def test_integer_pcm_is_scaled_to_unit_range():
    c = SpeechContract()
    wave = voiced_tone(150.0, 16000)
    pcm = np.round(wave * 32767).astype(np.int16)
    a = preprocess_speech(wave, 16000, c)["audio_stats"]
    b = preprocess_speech(pcm, 16000, c)["audio_stats"]
    # Quantisation noise only shows in empty mel bins; the prosody part is unchanged.
    n = len(SPEECH_STAT_NAMES)
    np.testing.assert_allclose(a[-n:], b[-n:], atol=0.05)


# -- video -----------------------------------------------------------------------------------
def gradient_clip(n_frames, h=60, w=80):
    """(T, H, W, 3) uint8: smooth colour gradients whose brightness encodes the frame index."""
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.empty((n_frames, h, w, 3), np.uint8)
    for i in range(n_frames):
        frames[i, ..., 0] = (xx * 255 // (w - 1))
        frames[i, ..., 1] = (yy * 255 // (h - 1))
        frames[i, ..., 2] = i * 255 // max(1, n_frames - 1)
    return frames


def test_video_shapes_and_normalisation():
    c = VideoContract(n_frames=5, size=32)
    out = preprocess_video(gradient_clip(30), c)["video"]
    assert out.shape == (5, 3, 32, 32) and out.dtype == np.float32
    # Blue channel is constant per frame: frames 0, 6, 12, 18, 24 of 30.
    blue = out[:, 2].mean(axis=(1, 2)) * c.std[2] + c.mean[2]
    np.testing.assert_allclose(blue, frame_indices(30, 5) * 255 // 29 / 255, atol=1e-5)
    white = preprocess_video(np.full((3, 40, 40, 3), 255, np.uint8), c)["video"]
    np.testing.assert_allclose(white[0, :, 0, 0], (1 - np.array(c.mean)) / np.array(c.std),
                               rtol=1e-5)
    raw = preprocess_video(gradient_clip(30), c, normalize=False)["video"]
    assert raw.dtype == np.uint8
    np.testing.assert_allclose(normalize_video(raw, c), out, atol=1e-6)


def test_video_repeats_frames_of_short_clips():
    assert frame_indices(150, 25).tolist() == list(range(0, 150, 6))     # EAV: every 6th
    idx = frame_indices(10, 25)
    assert len(idx) == 25 and sorted(set(idx.tolist())) == list(range(10))
    out = preprocess_video(gradient_clip(10), VideoContract(n_frames=25, size=16))["video"]
    assert out.shape == (25, 3, 16, 16)
    np.testing.assert_array_equal(out[0], out[1])                 # frame 0 repeated


def test_video_centre_crop():
    frames = np.zeros((2, 40, 80, 3), np.uint8)
    frames[:, :, 20:60] = 200                                     # the central 40 x 40 square
    out = preprocess_video(frames, VideoContract(n_frames=2, size=20), normalize=False)
    assert (out["video"] == 200).all()


def test_jpeg_path_matches_frames_path():
    c = VideoContract(n_frames=6, size=48)
    clip = gradient_clip(12, h=72, w=96)
    blobs = [torchvision.io.encode_jpeg(torch.from_numpy(f).permute(2, 0, 1), quality=95)
             .numpy().tobytes() for f in clip]
    from_jpeg = preprocess_video_jpeg(blobs, c)["video"]
    from_frames = preprocess_video(clip, c)["video"]
    assert from_jpeg.shape == from_frames.shape == (6, 3, 48, 48)
    # JPEG at quality 95 is within a few grey levels; in normalised units /(255 * std).
    assert np.abs(from_jpeg - from_frames).mean() < 2 / 255 / min(c.std)
    with pytest.raises(DataError) as err:
        preprocess_video_jpeg([b"not a jpeg"] * 3, c, source="clip.parquet")
    assert (err.value.kind, err.value.field) == ("unreadable", "video")
    with pytest.raises(DataError):
        preprocess_video(clip.astype(np.float32), c)


def test_full_contract_is_deterministic():
    c = PreprocessContract()
    x = pink_noise(np.random.default_rng(9), 4, 2500, 500.0)
    a = preprocess_eeg(x, 500.0, CHANNELS[:4], c.eeg)
    b = preprocess_eeg(x.copy(), 500.0, CHANNELS[:4], c.eeg)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_global_normalisation_keeps_relative_channel_power_and_spectral_tilt():
    """`global` EEG normalisation keeps one channel 3x stronger than another (per-channel
    z-scoring makes them equal); `global` log-mel keeps the slope across mel bins."""
    rng = np.random.default_rng(3)
    sfreq = 250.0
    x = np.repeat(rng.standard_normal((1, int(10 * sfreq))) * 1e-5, 2, axis=0)
    x[1] *= 3.0                                            # the same signal, 3x stronger
    c = EEGContract(normalize="global", clip=None, notch=[], blink_removal=False)
    out = preprocess_eeg(x, sfreq, ["Cz", "Pz"], c)["eeg"]
    ratio = out[1].std() / out[0].std()
    assert 2.7 < ratio < 3.3 and abs(out.std() - 1.0) < 0.05
    per_channel = preprocess_eeg(x, sfreq, ["Cz", "Pz"], EEGContract(
        normalize="zscore", clip=None, notch=[], blink_removal=False))["eeg"]
    assert abs(per_channel[1].std() / per_channel[0].std() - 1.0) < 0.01
    t = np.arange(16000 * 2) / 16000
    wav = (0.3 * np.sin(2 * np.pi * 300 * t) + 0.01 * rng.standard_normal(t.size))
    logmel = preprocess_speech(wav.astype(np.float32), 16000,
                               SpeechContract(normalize="global"))["logmel"]
    assert abs(logmel.mean()) < 1e-4 and abs(logmel.std() - 1.0) < 1e-3
    bins = logmel.mean(1)
    assert bins.max() - bins.min() > 1.0            # the spectrum's shape is still there
