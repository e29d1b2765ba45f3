"""The contract as it was computed before the fast path: the reference it must equal.

:mod:`~emoray.data.transforms.eeg` and :mod:`~emoray.data.transforms.speech` compute the
contract with cached filter designs and vectorised FFTs. This module keeps the
per-call implementation they replaced, unchanged: MNE's own
:func:`mne.filter.notch_filter`, :func:`mne.filter.filter_data` and
:func:`mne.filter.resample` on every call (each designs its filter again and filters
channel by channel), and the pitch tracker with its original FFT length and no frame
skipped. Models trained on features of that implementation (old bundles) must keep
getting the same inputs, so ``tests/unit/test_fast_contract.py`` compares the two and
``benchmarks/contract.py`` times them side by side. Nothing else uses this module.

Steps the fast path did not change (validation, band features, normalisation, log-mel)
are imported from the fast modules, so only the replaced steps are held here.
"""

from __future__ import annotations

import math

import mne
import numpy as np
import scipy.fft

from emoray.config.contract import EEGContract, SpeechContract, resampled_length
from emoray.data.transforms import eeg as _eeg
from emoray.data.transforms import speech as _speech


def preprocess_eeg_reference(data: np.ndarray, sfreq: float, ch_names: list[str],
                             c: EEGContract, *, source: str | None = None
                             ) -> dict[str, np.ndarray]:
    """:func:`~emoray.data.transforms.eeg.preprocess_eeg` with the per-call MNE steps."""
    x, names = _eeg._validate(data, sfreq, ch_names, c, source)
    x = filter_eeg_reference(x, sfreq, c)
    if c.blink_removal:
        x = remove_blinks_reference(x, sfreq, names, c.blink_channels)
    x = resample_eeg_reference(x, sfreq, c.sfreq)
    de, bp = _eeg.eeg_band_features(x, c.sfreq, c.bands)
    x = _eeg.normalize_eeg(x, c.normalize, c.clip)
    return {"eeg": x.astype(np.float32), "eeg_de": de.astype(np.float32),
            "eeg_bp": bp.astype(np.float32)}


def filter_eeg_reference(x: np.ndarray, sfreq: float, c: EEGContract) -> np.ndarray:
    """Notch and band-pass ``(C, T)`` with MNE's functions, designing both filters."""
    freqs = _eeg.mains_frequencies(c.notch, sfreq)
    if freqs:
        x = mne.filter.notch_filter(x, sfreq, freqs, verbose="error")
    h_freq = c.h_freq if c.h_freq < sfreq / 2.0 else None
    return mne.filter.filter_data(x, sfreq, c.l_freq, h_freq, verbose="error")


def remove_blinks_reference(x: np.ndarray, sfreq: float, ch_names: list[str],
                            blink_channels: list[str]) -> np.ndarray:
    """Virtual-EOG regression, the low-pass by :func:`mne.filter.filter_data`."""
    wanted = {n.lower() for n in blink_channels}
    rows = [i for i, n in enumerate(ch_names) if n.lower() in wanted]
    if not rows:
        return x
    veog = x[rows].mean(axis=0, keepdims=True)                       # (1, T)
    veog = mne.filter.filter_data(veog, sfreq, None, _eeg._BLINK_LOWPASS_HZ,
                                  verbose="error")[0]
    power = float(veog @ veog)
    if power <= 0.0 or not math.isfinite(power):
        return x
    beta = (x @ veog) / power                                         # (C,)
    return x - beta[:, None] * veog[None, :]


def resample_eeg_reference(x: np.ndarray, sfreq: float, sfreq_out: float) -> np.ndarray:
    """:func:`mne.filter.resample` (channel by channel), trimmed or padded to length."""
    n_out = resampled_length(x.shape[-1], sfreq, sfreq_out)
    if sfreq != sfreq_out:
        x = mne.filter.resample(x, up=float(sfreq_out), down=float(sfreq), npad="auto",
                                verbose="error")
    if x.shape[-1] > n_out:
        x = x[:, :n_out]
    elif x.shape[-1] < n_out:
        x = np.pad(x, ((0, 0), (0, n_out - x.shape[-1])), mode="edge")
    return x


def preprocess_speech_reference(samples: np.ndarray, sample_rate: int, c: SpeechContract,
                                *, source: str | None = None) -> dict[str, np.ndarray]:
    """:func:`~emoray.data.transforms.speech.preprocess_speech` with the reference
    pitch tracker (:func:`track_f0_reference`)."""
    return _speech._preprocess_speech(samples, sample_rate, c, source, track_f0_reference)


def track_f0_reference(x: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """The NCCF tracker as first written: FFT length ``next_fast_len(span + win)``, every
    frame correlated."""
    s = _speech
    win = int(round(s._PITCH_WIN_S * sr))
    hop = max(1, int(round(s._PITCH_HOP_S * sr)))
    min_lag = max(2, int(np.floor(sr / s._F0_MAX_HZ)))
    max_lag = int(np.ceil(sr / s._F0_MIN_HZ))
    span = win + max_lag + 1
    if x.shape[0] < span:
        return np.zeros(0), np.zeros(0, dtype=bool)
    frames = np.lib.stride_tricks.sliding_window_view(x, span)[::hop]  # (N, span)
    frames = frames - frames.mean(axis=1, keepdims=True)
    nfft = scipy.fft.next_fast_len(span + win)
    spec_a = scipy.fft.rfft(frames[:, :win], nfft, axis=1)
    spec_b = scipy.fft.rfft(frames, nfft, axis=1)
    xcorr = scipy.fft.irfft(np.conj(spec_a) * spec_b, nfft, axis=1)[:, :max_lag + 2]
    csum = np.concatenate([np.zeros((frames.shape[0], 1)), np.cumsum(frames ** 2, axis=1)],
                          axis=1)
    energy = csum[:, win:win + max_lag + 2] - csum[:, :max_lag + 2]  # (N, max_lag + 2)
    nccf = xcorr / np.sqrt(energy[:, :1] * energy + 1e-20)            # (N, max_lag + 2)

    r = nccf[:, min_lag - 1:]
    core = r[:, 1:-1]
    is_peak = (core > r[:, :-2]) & (core >= r[:, 2:])
    best = np.where(is_peak, core, -np.inf).max(axis=1)               # (N,)
    cand = is_peak & (core >= s._PEAK_TOLERANCE * best[:, None])
    k = np.argmax(cand, axis=1)
    rows = np.arange(frames.shape[0])
    y0, y1, y2 = r[rows, k], r[rows, k + 1], r[rows, k + 2]
    denom = y0 - 2.0 * y1 + y2
    shift = np.where(np.abs(denom) > 1e-12, 0.5 * (y0 - y2) / np.where(denom == 0, 1, denom),
                     0.0)
    lag = k + min_lag + np.clip(shift, -0.5, 0.5)
    f0 = sr / lag

    level = 10.0 * np.log10(energy[:, 0] / win + 1e-20)
    voiced = (cand.any(axis=1) & (best >= s._VOICING_NCCF)
              & (level >= level.max() - s._VOICING_RANGE_DB) & (level > s._DB_FLOOR))
    return f0, voiced
