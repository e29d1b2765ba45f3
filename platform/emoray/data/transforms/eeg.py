"""EEG preprocessing for one segment: pure functions of the signal and the contract.

The order (see :func:`preprocess_eeg`) follows the EAV reference preprocessing: notch the
mains, band-pass 0.5-45 Hz, remove eye blinks, resample to 100 Hz, compute band features,
then normalise each channel. The filters are MNE's default zero-phase FIR designs, applied
to plain numpy arrays (no ``mne.io.Raw``/``mne.Info`` per call).

Fast path, equal to MNE's per-call functions
    Training and serving run this one implementation, per segment. MNE's
    ``notch_filter``/``filter_data``/``resample`` design the filter again on every call
    (its attenuation check alone is a ``freqz`` of 3301 taps) and filter channel by
    channel. Here the design is :func:`mne.filter.create_filter`'s, made once per rate and
    band (``functools.lru_cache``, with its spectrum per FFT length), and
    :func:`fir_filter` applies it to all channels with one ``scipy.fft`` real FFT;
    :func:`resample_eeg` pads like MNE and calls :func:`scipy.signal.resample` on all rows.
    What is written by hand is the glue MNE keeps private and applies row by row: its
    ``reflect_limited`` padding, the zero-phase delay, its ``npad="auto"`` arithmetic.
    MNE pads ``min(len(h), T) - 1`` samples each side, but a zero-phase output sample
    reads only ``(len(h) - 1) / 2`` of them, so only those are padded and the FFT is the
    shortest that wraps nothing into the kept samples (for 5 s at 500 Hz and the 3301-tap
    band-pass: one 5832-point FFT per channel, where MNE runs two 8192-point overlap-add
    blocks channel by channel). The outputs equal
    :mod:`emoray.data.transforms.reference` (MNE's own calls, kept for the comparison)
    within ``1e-9`` of the signal's std for every float64 step (measured ~1e-14) and within
    one float32 rounding (``rtol=atol=1e-6``) for the features
    (``tests/unit/test_fast_contract.py``: 90-1000 Hz, 1-5 s, the README's example
    files), so bundles trained before get the same inputs. On 2 s of 30 channels at
    500 Hz (zero-padded to a 5 s segment), notch + band-pass + blink low-pass + resampling
    take 4.6 ms against the reference's 38.5 ms, side by side on a busy 2-core machine
    (``benchmarks/contract.py``; 28 ms before the change on the idle machine).

Short segments and long filters
    The 0.5 Hz high-pass needs a 6.6 s FIR filter, longer than a 5 s segment. MNE pads the
    segment by reflection (``pad="reflect_limited"``) before filtering, which is what
    happens here; the design is made without the data, so MNE's "filter longer than
    signal" warning, which every segment would print, does not arise.

Blink removal (regression on a virtual EOG)
    Eye blinks are large (50-200 uV), slow (200-400 ms, energy below ~4 Hz) deflections,
    strongest on the frontal-polar channels and decaying towards the back. Without an EOG
    channel we build a *virtual EOG*: the mean of the contract's ``blink_channels`` that are
    present, low-passed at 4 Hz (MNE's default transition puts the -6 dB point at 5 Hz and
    the stop band from 6 Hz). Each channel's propagation factor is its least-squares
    regression coefficient on that virtual EOG over the segment, and the scaled virtual EOG
    is subtracted (the regression method of Gratton et al. 1983 / Croft & Barry 2000, with a
    derived EOG). Because the regressor holds no energy above ~6 Hz, alpha (8-13 Hz) and
    faster activity pass untouched, so frontal alpha asymmetry survives. The price: frontal
    delta and low theta (< 6 Hz) correlated with the virtual EOG go too, also in blink-free
    segments (on 1/f background about 10 % of the 0.5-8 Hz power of a blink channel, a few
    percent on its neighbours). On simulated blinks (150 uV, 300 ms) the 0.5-4 Hz blink
    error on frontal channels drops by over 99 % (``tests/unit/test_transforms.py``).
"""

from __future__ import annotations

import functools
import math

import mne
import numpy as np
import scipy.fft
import scipy.signal

from emoray.config.contract import EEGContract, resampled_length
from emoray.errors import DataError

_MIN_SECONDS = 1.0          # shorter segments cannot be band-passed meaningfully
_BLINK_LOWPASS_HZ = 4.0     # virtual-EOG low-pass (MNE default transition: stop from 6 Hz)
_NOTCH_TRANS_HZ = 1.0       # MNE's notch_filter default trans_bandwidth
_NOTCH_MARGIN_HZ = 1.0      # a notch needs this much room below Nyquist (its transition band)
_STD_FLOOR = 1e-12          # volts: a flat channel normalises to zeros, not to inf/NaN
_PSD_FLOOR = 1e-12          # uV^2/Hz and uV^2: keeps log features finite on flat channels
_WELCH_SECONDS = 2.0        # Welch window: 0.5 Hz resolution
_VOLTS_TO_UV = 1e6


def preprocess_eeg(data: np.ndarray, sfreq: float, ch_names: list[str], c: EEGContract,
                   *, source: str | None = None) -> dict[str, np.ndarray]:
    """Turn one EEG segment into model inputs and band features.

    Steps: (1) check the input rate can hold the band, (2) notch mains and harmonics,
    (3) band-pass ``l_freq``-``h_freq``, (4) blink removal, (5) resample to ``c.sfreq``,
    (6) band power and differential entropy per band, (7) per-channel normalisation and clip.

    Parameters
    ----------
    data : np.ndarray
        ``(C, T)`` signal in volts.
    sfreq : float
        Its sampling rate (Hz); any rate above ``2 * c.h_freq`` (500, 256, 128 Hz...).
    ch_names : list of str
        Names of the ``C`` rows. When ``c.channels`` is set, those channels are picked, in
        that order (names match case-insensitively).
    c : EEGContract
        The parameters.
    source : str, optional
        The file the segment came from, named in errors.

    Returns
    -------
    dict
        ``eeg`` ``(C', T')`` float32 with ``T' = round(T / sfreq * c.sfreq)``;
        ``eeg_de`` and ``eeg_bp`` ``(C', n_bands)`` float32: differential entropy
        ``0.5 * ln(2 pi e P)`` of the band power ``P`` (uV^2) and ``log10`` of the mean
        power spectral density in the band (uV^2/Hz), columns in ``c.bands`` order.

    Raises
    ------
    DataError
        ``sample_rate`` if ``sfreq < 2 * c.h_freq``; ``invalid_value`` for NaN/inf;
        ``missing_channel`` if a contract channel is absent; ``layout``/``truncated`` for a
        wrongly shaped or too short array.
    """
    x, names = _validate(data, sfreq, ch_names, c, source)
    x = filter_eeg(x, sfreq, c)
    if c.blink_removal:
        x = remove_blinks(x, sfreq, names, c.blink_channels)
    x = resample_eeg(x, sfreq, c.sfreq)
    de, bp = eeg_band_features(x, c.sfreq, c.bands)
    x = normalize_eeg(x, c.normalize, c.clip)
    return {"eeg": x.astype(np.float32), "eeg_de": de.astype(np.float32),
            "eeg_bp": bp.astype(np.float32)}


def mains_frequencies(notch: list[float], sfreq: float) -> list[float]:
    """The mains frequencies and their harmonics that a notch can reach at ``sfreq``."""
    nyq = sfreq / 2.0
    out: set[float] = set()
    for f in notch:
        k = 1
        while k * f + _NOTCH_MARGIN_HZ < nyq:
            out.add(round(k * f, 6))
            k += 1
    return sorted(out)


def filter_eeg(x: np.ndarray, sfreq: float, c: EEGContract) -> np.ndarray:
    """Notch the mains (and harmonics) and band-pass, at the input rate.

    Parameters
    ----------
    x : np.ndarray
        ``(C, T)`` float64 signal.
    sfreq : float
        Its sampling rate (Hz).
    c : EEGContract
        ``notch``, ``l_freq`` and ``h_freq`` are used.

    Returns
    -------
    np.ndarray
        ``(C, T)`` filtered signal (a new array).
    """
    freqs = mains_frequencies(c.notch, sfreq)
    if freqs:
        highs, lows = notch_bands(freqs)
        x = fir_filter(x, sfreq, highs, lows, _NOTCH_TRANS_HZ / 2.0)
    # At exactly 2 * h_freq the signal is already band-limited to h_freq: high-pass only.
    h_freq = c.h_freq if c.h_freq < sfreq / 2.0 else None
    return fir_filter(x, sfreq, float(c.l_freq), None if h_freq is None else float(h_freq))


def fir_filter(x: np.ndarray, sfreq: float, l_freq, h_freq,
               trans_bandwidth: float | str = "auto") -> np.ndarray:
    """MNE's zero-phase FIR filter applied to every row of ``x`` at once.

    Equal (up to rounding, see the module notes) to ``mne.filter.filter_data(x, sfreq,
    l_freq, h_freq, l_trans_bandwidth=trans_bandwidth, h_trans_bandwidth=trans_bandwidth)``
    with its defaults (``phase="zero"``, ``pad="reflect_limited"``), with MNE's filter
    (:func:`mne.filter.create_filter`, designed once per rate and band and cached).

    Parameters
    ----------
    x : np.ndarray
        ``(C, T)`` float64 signal.
    sfreq : float
        Its sampling rate (Hz).
    l_freq, h_freq : float, tuple of float or None
        As in :func:`mne.filter.create_filter` (tuples, as a notch passes them, are
        band-stops).
    trans_bandwidth : float or "auto"
        Both transition bandwidths.

    Returns
    -------
    np.ndarray
        ``(C, T)`` filtered signal (a new array).
    """
    key = (float(sfreq), l_freq, h_freq, trans_bandwidth)
    h = _fir_design(*key)
    n_h, n_t = len(h), x.shape[-1]
    if n_h == 1:
        return x * h
    half = (n_h - 1) // 2                       # the zero-phase delay; h has odd length
    # MNE pads min(n_h, T) - 1 samples; the output reaches only `half` of them
    n_pad = min(max(min(n_h, n_t) - 1, 0), half)
    padded = _reflect_limited(x, n_pad, n_pad)                          # (C, T + 2 n_pad)
    # output sample i needs padded[i + n_pad - half .. i + n_pad + half] (zeros outside):
    # a circular convolution of this length wraps nothing into them
    n_fft = scipy.fft.next_fast_len(n_t + n_pad + half, real=True)
    spec = scipy.fft.rfft(padded, n_fft, axis=-1) * _fir_spectrum(*key, n_fft)
    start = half + n_pad
    return scipy.fft.irfft(spec, n_fft, axis=-1)[:, start:start + n_t]   # (C, T)


def notch_bands(freqs: list[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The band-stop edges :func:`mne.filter.notch_filter` gives ``filter_data`` for
    ``freqs`` with its defaults (widths ``freq / 200``, 1 Hz transition): ``(highs, lows)``,
    the ``l_freq`` and ``h_freq`` of :func:`fir_filter` with ``trans_bandwidth=0.5``."""
    f = np.atleast_1d(np.asarray(freqs, dtype=np.float64))
    widths = f / 200.0
    lows = [freq - nw / 2.0 - _NOTCH_TRANS_HZ / 2.0 for freq, nw in zip(f, widths)]
    highs = [freq + nw / 2.0 + _NOTCH_TRANS_HZ / 2.0 for freq, nw in zip(f, widths)]
    return tuple(float(v) for v in highs), tuple(float(v) for v in lows)


@functools.lru_cache(maxsize=64)
def _fir_design(sfreq: float, l_freq, h_freq, trans_bandwidth) -> np.ndarray:
    """MNE's default zero-phase FIR design (``(n_taps,)``, read-only), once per key."""
    h = mne.filter.create_filter(None, sfreq, l_freq, h_freq,
                                 l_trans_bandwidth=trans_bandwidth,
                                 h_trans_bandwidth=trans_bandwidth, verbose="error")
    h.flags.writeable = False
    return h


@functools.lru_cache(maxsize=128)
def _fir_spectrum(sfreq: float, l_freq, h_freq, trans_bandwidth, n_fft: int) -> np.ndarray:
    """``rfft`` of :func:`_fir_design`'s filter at ``n_fft`` points (read-only)."""
    spec = scipy.fft.rfft(_fir_design(sfreq, l_freq, h_freq, trans_bandwidth), n_fft)
    spec.flags.writeable = False
    return spec


def remove_blinks(x: np.ndarray, sfreq: float, ch_names: list[str],
                  blink_channels: list[str]) -> np.ndarray:
    """Regress a low-passed virtual EOG out of every channel (see the module notes).

    Parameters
    ----------
    x : np.ndarray
        ``(C, T)`` band-passed signal.
    sfreq : float
        Its sampling rate (Hz).
    ch_names : list of str
        Names of the rows of ``x``.
    blink_channels : list of str
        Channels whose mean forms the virtual EOG; those absent are skipped, and with none
        present ``x`` is returned unchanged.

    Returns
    -------
    np.ndarray
        ``(C, T)`` corrected signal.
    """
    wanted = {n.lower() for n in blink_channels}
    rows = [i for i, n in enumerate(ch_names) if n.lower() in wanted]
    if not rows:
        return x
    veog = x[rows].mean(axis=0, keepdims=True)                       # (1, T)
    veog = fir_filter(veog, sfreq, None, _BLINK_LOWPASS_HZ)[0]                 # (T,)
    power = float(veog @ veog)
    if power <= 0.0 or not math.isfinite(power):
        return x
    beta = (x @ veog) / power                                         # (C,)
    return x - beta[:, None] * veog[None, :]


def resample_eeg(x: np.ndarray, sfreq: float, sfreq_out: float) -> np.ndarray:
    """Resample to ``sfreq_out`` with exactly ``round(T / sfreq * sfreq_out)`` samples.

    The computation of ``mne.filter.resample(x, up=sfreq_out, down=sfreq, npad="auto")``
    (MNE's padding to a power of two, ``reflect_limited``, then :func:`scipy.signal.resample`
    's FFT method with MNE's boxcar window), on all rows at once instead of row by row.
    """
    n_t = x.shape[-1]
    n_out = resampled_length(n_t, sfreq, sfreq_out)
    if sfreq != sfreq_out:
        ratio = float(sfreq_out) / float(sfreq)
        final_len = max(int(round(ratio * n_t)), 1)
        # MNE's npad="auto": pad to a power of two, at least min(T // 8, 100) each side
        npad = 2 ** int(np.ceil(np.log2(n_t + min(n_t // 8, 100) * 2))) - n_t
        left, right = npad // 2, npad // 2 + npad % 2
        new_len = max(int(round(ratio * (n_t + npad))), 1)
        cut = int(round(ratio * left))
        padded = _reflect_limited(x, left, right)                        # (C, 2 ** k)
        x = scipy.signal.resample(padded, new_len, axis=-1)[:, cut:cut + final_len]
    if x.shape[-1] > n_out:          # guard against off-by-one rounding in the resampler
        x = x[:, :n_out]
    elif x.shape[-1] < n_out:
        x = np.pad(x, ((0, 0), (0, n_out - x.shape[-1])), mode="edge")
    return x


def eeg_band_features(x: np.ndarray, sfreq: float,
                      bands: dict[str, tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Differential entropy and log band power per channel and band (Welch PSD).

    Parameters
    ----------
    x : np.ndarray
        ``(C, T)`` signal in volts (not yet normalised).
    sfreq : float
        Its sampling rate (Hz).
    bands : dict
        ``name -> (low, high)`` in Hz; a band covers ``low <= f < high``.

    Returns
    -------
    de, bp : np.ndarray
        ``(C, n_bands)`` each: ``0.5 * ln(2 pi e P)`` with ``P`` the band power (uV^2,
        the PSD integrated over the band, which is the variance of the band-passed signal),
        and ``log10`` of the mean PSD in the band (uV^2/Hz).
    """
    n = x.shape[-1]
    nperseg = min(n, int(round(_WELCH_SECONDS * sfreq)))
    freqs, psd = scipy.signal.welch(x * _VOLTS_TO_UV, fs=sfreq, nperseg=nperseg,
                                    axis=-1)                          # (C, F)
    df = float(freqs[1] - freqs[0])
    de = np.empty((x.shape[0], len(bands)))                           # (C, n_bands)
    bp = np.empty_like(de)
    for j, (lo, hi) in enumerate(bands.values()):
        mask = (freqs >= lo) & (freqs < hi)
        if not mask.any():   # band narrower than the resolution: nearest bin
            mask = np.zeros_like(mask)
            mask[int(np.argmin(np.abs(freqs - (lo + hi) / 2.0)))] = True
        band = psd[:, mask]
        bp[:, j] = np.log10(band.mean(axis=1) + _PSD_FLOOR)
        power = band.sum(axis=1) * df
        de[:, j] = 0.5 * np.log(2.0 * np.pi * np.e * (power + _PSD_FLOOR))
    return de, bp


def normalize_eeg(x: np.ndarray, method: str, clip: float | None) -> np.ndarray:
    """Normalise each channel over time, then clip to ``[-clip, clip]``.

    ``zscore``: ``(x - mean) / std``; ``robust``: ``(x - median) / (IQR / 1.349)`` (the
    IQR of a Gaussian is 1.349 std, so both give unit spread on Gaussian data);
    ``global``: each channel minus its mean, divided by one std over all channels (the
    channels' relative power is kept); ``none`` leaves the values (volts) as they are.
    """
    if method == "zscore":
        center = x.mean(axis=1, keepdims=True)
        scale = x.std(axis=1, keepdims=True)
    elif method == "robust":
        q25, center, q75 = np.percentile(x, [25.0, 50.0, 75.0], axis=1, keepdims=True)
        scale = (q75 - q25) / 1.349
    elif method == "global":
        center = x.mean(axis=1, keepdims=True)
        scale = np.full((1, 1), (x - center).std())
    elif method == "none":
        center, scale = 0.0, 1.0
    else:
        raise ValueError(f"unknown EEG normalisation {method!r}")
    if method != "none":
        x = (x - center) / np.maximum(scale, _STD_FLOOR)
    if clip is not None:
        x = np.clip(x, -clip, clip)
    return x


def _reflect_limited(x: np.ndarray, left: int, right: int) -> np.ndarray:
    """Pad the last axis as MNE's ``pad="reflect_limited"``: odd reflection about the end
    samples (``2 * x[0] - x[k]``), zeros beyond ``T - 1`` samples of it."""
    n_t = x.shape[-1]
    r_left, r_right = min(left, n_t - 1), min(right, n_t - 1)
    out = np.pad(x, ((0, 0), (r_left, r_right)), mode="reflect", reflect_type="odd")
    if r_left < left or r_right < right:
        out = np.pad(out, ((0, 0), (left - r_left, right - r_right)))
    return out


def _validate(data: np.ndarray, sfreq: float, ch_names: list[str], c: EEGContract,
              source: str | None) -> tuple[np.ndarray, list[str]]:
    """Check the input and pick the contract's channels; returns float64 ``(C, T)``."""
    if not sfreq or not math.isfinite(sfreq) or sfreq < 2.0 * c.h_freq:
        raise DataError(source, f"sampling rate {sfreq} Hz cannot hold the {c.l_freq}-"
                        f"{c.h_freq} Hz band; expected at least {2.0 * c.h_freq:g} Hz",
                        kind="sample_rate", field="eeg")
    arr = np.asarray(data)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise DataError(source, f"expected a numeric (channels, samples) array, got shape "
                        f"{arr.shape} dtype {arr.dtype}", kind="layout", field="eeg")
    names = [str(n) for n in ch_names]
    if arr.shape[0] != len(names):
        raise DataError(source, f"{arr.shape[0]} channels in the array but {len(names)} "
                        "channel names", kind="layout", field="eeg")
    if len({n.lower() for n in names}) != len(names):
        raise DataError(source, f"duplicate channel names in {names}", kind="layout",
                        field="eeg")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise DataError(source, f"{bad} NaN/inf samples; expected finite values",
                        kind="invalid_value", field="eeg")
    if arr.shape[1] < _MIN_SECONDS * sfreq:
        raise DataError(source, f"{arr.shape[1]} samples ({arr.shape[1] / sfreq:.3g} s); "
                        f"expected at least {_MIN_SECONDS:g} s", kind="truncated", field="eeg")
    if c.channels is not None:
        lower = {n.lower(): i for i, n in enumerate(names)}
        missing = [ch for ch in c.channels if ch.lower() not in lower]
        if missing:
            raise DataError(source, f"channels {missing} missing; the segment has {names}",
                            kind="missing_channel", field="eeg")
        arr = arr[[lower[ch.lower()] for ch in c.channels]]
        names = list(c.channels)
    return np.array(arr, dtype=np.float64), names
