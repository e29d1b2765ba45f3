"""Synthetic EEG whose band powers carry the felt emotion.

The model, per trial (all powers are natural-log band powers, amplitudes ``exp(p / 2)``):

- **Background**: 1/f^x noise (``x`` = the subject's aperiodic exponent), spatially
  correlated between channels by their distance on the scalp (``exp(-d / 5 cm)``).
- **Oscillations**: theta (6 Hz), alpha (the subject's peak, 8-12.5 Hz), beta (20 Hz) and
  gamma (38 Hz) narrow-band noise, spatially correlated and amplitude-modulated by slow
  burst envelopes. Base topographies: alpha posterior, theta frontal, gamma temporal.
- **Emotion effects** (scaled by the trial intensity):
  arousal lowers alpha (-0.9 a) and raises beta (+0.7 a) and gamma (+0.8 a); valence
  raises frontal theta (+0.5 v; our choice, after reports of more frontal-midline theta for
  pleasant stimuli) and drives **frontal alpha asymmetry**: positive valence lowers
  left-frontal alpha and raises right-frontal alpha (+-0.7 v at F7/F3/Fp1/AF3 vs F8/F4/...),
  so ``ln(alpha right) - ln(alpha left)`` grows with valence. Each class also has its own
  left-right symmetric topographic signature (so the 5 classes are separable, and the
  asymmetry stays purely valence-driven).
- **Subject offsets** per channel and band, alpha peak, 1/f exponent and overall gain.
- **Trial noise**: random per-channel/per-band log-power fluctuations whose size is set
  by ``snr_db`` relative to the emotion effects.
- **Artifacts**: eye blinks (100-200 uV at Fp1/Fp2, ~300 ms, decaying towards the back of
  the head) and 50 Hz mains hum (2-12 uV per channel plus a weak 150 Hz harmonic).

Amplitudes are realistic (tens of microvolts); the output is in volts.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from emoray.labels import EAV_CLASSES
from emoray.synth.rng import stream

UV = 1e-6
BAND_CENTER = {"theta": 6.0, "beta": 20.0, "gamma": 38.0}     # alpha: the subject's peak
BAND_WIDTH = np.array([1.0, 0.9, 4.0, 5.0])                    # Gaussian sd, Hz
BAND_RMS_UV = np.array([3.5, 6.0, 2.5, 1.0])                   # at zero log-power offset
BACKGROUND_RMS_UV = 10.0
WHITE_NOISE_UV = 0.5
#: Log-power effect per unit arousal / valence, per band (theta, alpha, beta, gamma).
AROUSAL_EFFECT = np.array([0.0, -0.9, 0.7, 0.8])
VALENCE_THETA = 0.5            # frontal theta per unit valence
ASYMMETRY = 0.7                # frontal alpha asymmetry per unit valence
SIGNATURE = 0.25               # rms of each class's topographic signature (log power)
#: Log-power size that ``snr_db`` compares the trial noise against.
EFFECT_REF = 0.6
_BURST_SD = 0.45
_CORR_LENGTH = 0.05            # metres


@dataclass(frozen=True)
class Geometry:
    """Where channels sit on the scalp and what follows from it."""

    pos: np.ndarray         # (C, 3) metres, MNE head coordinates (x right, y front)
    lateral: np.ndarray     # (C,) -1 (left) .. 1 (right)
    frontal: np.ndarray     # (C,) 0 .. 1
    occipital: np.ndarray   # (C,) 0 .. 1
    mix: np.ndarray         # (C, C) Cholesky factor of the spatial correlation
    mirror: np.ndarray      # (C,) index of the left-right mirror channel (nearest)
    blink: np.ndarray       # (C,) blink propagation weight, 1 at Fp1/Fp2


@functools.lru_cache(maxsize=16)
def channel_geometry(ch_names: tuple[str, ...]) -> Geometry:
    """Scalp geometry of a 10-20 channel list (cached).

    Parameters
    ----------
    ch_names : tuple of str
        Channel names present in MNE's 10-20 montage.

    Returns
    -------
    Geometry
    """
    from emoray.io.eeg import standard_montage

    table = standard_montage().get_positions()["ch_pos"]
    missing = [n for n in ch_names if n not in table]
    if missing:
        raise ValueError(f"channels {missing} are not in the 10-20 montage")
    pos = np.array([table[n] for n in ch_names], dtype=float)                # (C, 3)
    lateral = np.clip(pos[:, 0] / 0.07, -1.0, 1.0)
    frontal = np.clip((pos[:, 1] - 0.02) / 0.05, 0.0, 1.0)
    occipital = np.clip((-pos[:, 1] - 0.04) / 0.06, 0.0, 1.0)
    dist = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)         # (C, C)
    corr = np.exp(-dist / _CORR_LENGTH)
    mix = np.linalg.cholesky(corr + 1e-6 * np.eye(len(ch_names)))
    flipped = pos * np.array([-1.0, 1.0, 1.0])
    mirror = np.argmin(np.linalg.norm(flipped[:, None, :] - pos[None, :, :], axis=-1), axis=1)
    blink = np.minimum(1.0, np.exp((pos[:, 1] - 0.084) / 0.028))
    return Geometry(pos, lateral, frontal, occipital, mix, mirror, blink)


@functools.lru_cache(maxsize=16)
def class_signatures(seed: int, ch_names: tuple[str, ...]) -> np.ndarray:
    """Each class's topographic log-power signature, shared by all subjects of a seed.

    Returns
    -------
    numpy.ndarray
        ``(5, C, 4)``: class (EAV order) x channel x band, left-right symmetric, rms
        :data:`SIGNATURE` per class and band.
    """
    geo = channel_geometry(ch_names)
    g = stream(seed, "eeg-class-signatures")
    z = np.einsum("cd,kdb->kcb", geo.mix, g.standard_normal((len(EAV_CLASSES),
                                                             len(ch_names), 4)))
    z = 0.5 * (z + z[:, geo.mirror, :])                                      # (5, C, 4)
    z -= z.mean(axis=0, keepdims=True)          # contrasts between classes only
    z /= np.sqrt((z ** 2).mean(axis=1, keepdims=True)) + 1e-12
    return SIGNATURE * z


def draw_blinks(rng: np.random.Generator, seconds: float, per_min: float) -> np.ndarray:
    """Blink onset times (s) of a Poisson process at ``per_min`` blinks per minute."""
    n = rng.poisson(per_min * seconds / 60.0)
    return np.sort(rng.uniform(0.0, max(seconds - 0.4, 0.0), size=n))


def emotion_log_power(geo: Geometry, signatures: np.ndarray, emotion: str | None,
                      valence: float, arousal: float, intensity: float) -> np.ndarray:
    """Log-power change ``(C, 4)`` that an emotional state causes (before subject offsets)."""
    eff = np.zeros((len(geo.lateral), 4))
    eff += arousal * AROUSAL_EFFECT[None, :]
    eff[:, 0] += VALENCE_THETA * valence * geo.frontal
    eff[:, 1] += ASYMMETRY * valence * geo.frontal * geo.lateral
    if emotion is not None:
        eff += signatures[EAV_CLASSES.index(emotion)]
    return intensity * eff


def _base_topography(geo: Geometry) -> np.ndarray:
    base = np.zeros((len(geo.lateral), 4))                                    # (C, 4)
    base[:, 0] = 0.4 * geo.frontal
    base[:, 1] = 1.2 * geo.occipital - 0.3 * geo.frontal
    base[:, 3] = 0.3 * np.abs(geo.lateral)
    return base


def _state_noise(geo: Geometry, rng: np.random.Generator, snr_db: float) -> np.ndarray:
    """Random per-trial log-power fluctuations ``(C, 4)``: brain-state changes are
    spatially smooth and band-wide, so most of the noise is shared between neighbouring
    channels (a classifier cannot average it away over channels)."""
    sd = EFFECT_REF * 10.0 ** (-snr_db / 20.0)
    n_ch = len(geo.lateral)
    smooth = geo.mix @ rng.standard_normal((n_ch, 4))                        # (C, 4)
    return sd * (0.7 * smooth + 0.6 * rng.standard_normal((1, 4))
                 + 0.4 * rng.standard_normal((n_ch, 4)))


def _slow_noise(rng: np.random.Generator, n: int, sfreq: float, cutoff: float,
                rows: int = 1) -> np.ndarray:
    """Unit-variance Gaussian noise low-passed at ``cutoff`` Hz, ``(rows, n)``."""
    freqs = np.fft.rfftfreq(n, 1.0 / sfreq)
    spec = rng.standard_normal((rows, freqs.size)) + 1j * rng.standard_normal((rows, freqs.size))
    spec *= np.exp(-0.5 * (freqs / cutoff) ** 2)
    x = np.fft.irfft(spec, n=n)                                              # (rows, n)
    # rms, not std: a cutoff below the frequency resolution leaves only a (random) offset
    return x / (np.sqrt((x ** 2).mean(axis=1, keepdims=True)) + 1e-12)


def _blink_signal(times: np.ndarray, n: int, sfreq: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Sum of blink waveforms (volts at Fp1), ``(n,)``: a gamma-shaped ~300 ms bump."""
    out = np.zeros(n)
    tk = np.arange(int(0.6 * sfreq)) / sfreq
    peak, k = 0.1, 3.0
    kernel = (tk / peak) ** k * np.exp(k * (1.0 - tk / peak))                 # max 1 at 0.1 s
    amps = rng.uniform(100.0, 200.0, size=len(times)) * UV
    for t0, amp in zip(times, amps):
        i0 = int(round(t0 * sfreq))
        seg = kernel[: max(0, n - i0)]
        out[i0:i0 + seg.size] += amp * seg
    return out


def simulate_eeg(subject, *, emotion: str | None, valence: float, arousal: float,
                 intensity: float = 1.0, seconds: float, sfreq: float,
                 ch_names: list[str] | tuple[str, ...], rng: np.random.Generator,
                 seed: int = 0, snr_db: float = 3.0, hum: bool = True,
                 blinks_per_min: float = 15.0,
                 blink_times: np.ndarray | None = None) -> np.ndarray:
    """Simulate one trial of EEG.

    Parameters
    ----------
    subject : Subject
        Traits from :mod:`emoray.synth.design` (``eeg_offsets`` must match ``ch_names``).
    emotion : str or None
        The *felt* EAV class (None: a resting baseline without class signature).
    valence, arousal : float
        The felt position on the common [-1, 1] scale.
    intensity : float
        Scales every emotion effect.
    seconds, sfreq : float
        Length and sample rate.
    ch_names : sequence of str
        10-20 channel names.
    rng : numpy.random.Generator
        The trial's EEG stream.
    seed : int
        Corpus seed (selects the class signatures).
    snr_db : float
        Emotion effects vs random per-trial log-power fluctuations.
    hum : bool
        Add 50 Hz mains hum.
    blinks_per_min : float
        Blink rate when ``blink_times`` is not given.
    blink_times : numpy.ndarray, optional
        Blink onsets in seconds (shared with the video of a parallel trial).

    Returns
    -------
    numpy.ndarray
        ``(C, T)`` float64 in volts, ``T = round(seconds * sfreq)``.
    """
    names = tuple(ch_names)
    geo = channel_geometry(names)
    n_ch, n = len(names), int(round(seconds * sfreq))
    if subject.eeg_offsets.shape != (n_ch, 4):
        raise ValueError(f"subject offsets {subject.eeg_offsets.shape} do not match "
                         f"{n_ch} channels")
    log_power = (_base_topography(geo) + subject.eeg_offsets
                 + emotion_log_power(geo, class_signatures(seed, names), emotion, valence,
                                     arousal, intensity)
                 + _state_noise(geo, rng, snr_db))                            # (C, 4)
    amp = subject.eeg_gain * BAND_RMS_UV[None, :] * np.exp(0.5 * log_power) * UV

    freqs = np.fft.rfftfreq(n, 1.0 / sfreq)                                  # (F,)
    centers = [BAND_CENTER["theta"], subject.alpha_peak, BAND_CENTER["beta"],
               BAND_CENTER["gamma"]]
    shapes = np.stack([np.exp(-0.5 * ((freqs - c) / w) ** 2)
                       for c, w in zip(centers, BAND_WIDTH)])                 # (4, F)
    background = (freqs ** 2 + 1.0) ** (-subject.aperiodic_exponent / 4.0)
    shapes = np.vstack([background[None, :], shapes])                         # (5, F)
    # Expected rms of irfft(shape * complex white noise) is 2 * ||shape|| / n.
    shapes *= n / (2.0 * np.sqrt((shapes ** 2).sum(axis=1, keepdims=True)) + 1e-12)
    white = (rng.standard_normal((5, n_ch, freqs.size))
             + 1j * rng.standard_normal((5, n_ch, freqs.size)))                # (5, C, F)
    spectra = np.matmul(geo.mix, white) * shapes[:, None, :]                  # (5, C, F)
    comps = np.fft.irfft(spectra, n=n, axis=-1)                               # (5, C, T)
    bursts = np.exp(_BURST_SD * _slow_noise(rng, n, sfreq, 0.4, rows=4)
                    - _BURST_SD ** 2)                                         # (4, T)
    x = subject.eeg_gain * BACKGROUND_RMS_UV * UV * comps[0]                  # (C, T)
    x += np.einsum("cb,bct->ct", amp, comps[1:] * bursts[:, None, :])
    x += WHITE_NOISE_UV * UV * rng.standard_normal((n_ch, n))

    if hum:
        t = np.arange(n) / sfreq
        f_mains = 50.0 + 0.02 * rng.standard_normal()
        amps = rng.uniform(2.0, 12.0, size=(n_ch, 1)) * UV
        phase = rng.uniform(0.0, 2 * np.pi, size=(n_ch, 1))
        x += amps * np.sin(2 * np.pi * f_mains * t[None, :] + phase)
        if 3 * f_mains < sfreq / 2:
            x += 0.15 * amps * np.sin(2 * np.pi * 3 * f_mains * t[None, :] + 3 * phase)
    # Blinks last: the same stream with and without blinks differs by the blinks only.
    times = (draw_blinks(rng, seconds, blinks_per_min) if blink_times is None
             else np.asarray(blink_times, dtype=float))
    if times.size:
        x += geo.blink[:, None] * _blink_signal(times, n, sfreq, rng)[None, :]
    return x


def simulate_peripheral(*, arousal: float, seconds: float, sfreq: float,
                        rng: np.random.Generator,
                        blink_times: np.ndarray | None = None) -> np.ndarray:
    """DEAP's 8 peripheral channels: plausible noise with a little arousal in it.

    Channels (DEAP order): hEOG and vEOG (uV; saccade steps, blinks on vEOG), zEMG and tEMG
    (uV; broadband, louder with arousal), GSR (slow drift, higher with arousal),
    respiration (~0.25 Hz), plethysmograph (pulse at 70 + 8 * arousal bpm) and skin
    temperature (degrees C, slow drift).

    Returns
    -------
    numpy.ndarray
        ``(8, T)`` float64, ``T = round(seconds * sfreq)``.
    """
    n = int(round(seconds * sfreq))
    t = np.arange(n) / sfreq
    out = np.empty((8, n))
    steps = rng.standard_normal(n) * (rng.random(n) < 2.0 / sfreq)          # ~2 saccades/s
    out[0] = 40.0 * np.cumsum(steps) + 5.0 * rng.standard_normal(n)
    out[0] -= out[0].mean()
    times = np.asarray(blink_times if blink_times is not None else [], dtype=float)
    out[1] = 2.0 * _blink_signal(times, n, sfreq, rng) / UV + 5.0 * rng.standard_normal(n)
    emg = 1.0 + 0.3 * arousal
    for ch in (2, 3):
        burst = np.exp(0.5 * _slow_noise(rng, n, sfreq, 0.5)[0])
        out[ch] = emg * rng.uniform(3.0, 8.0) * burst * rng.standard_normal(n)
    out[4] = (2000.0 + 400.0 * arousal + 150.0 * _slow_noise(rng, n, sfreq, 0.05)[0]
              + 5.0 * rng.standard_normal(n))
    breath = 0.25 + 0.04 * arousal + 0.02 * rng.standard_normal()
    out[5] = 600.0 * np.sin(2 * np.pi * breath * t + rng.uniform(0, 2 * np.pi)) \
        + 30.0 * rng.standard_normal(n)
    beat = 2 * np.pi * (70.0 + 8.0 * arousal) / 60.0 * t + rng.uniform(0, 2 * np.pi)
    out[6] = 800.0 * (np.sin(beat) + 0.4 * np.sin(2 * beat + 1.0)) + 20.0 * rng.standard_normal(n)
    out[7] = 32.0 + 0.2 * _slow_noise(rng, n, sfreq, 0.02)[0] + 0.01 * rng.standard_normal(n)
    return out
