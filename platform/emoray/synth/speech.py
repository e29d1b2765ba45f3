"""Synthetic emotional speech from a source-filter model.

An utterance is a sequence of phrases of CV syllables separated by pauses. Each syllable has
a short noise consonant (fricative or plosive burst) and a voiced vowel. The voiced source
is a Rosenberg glottal-flow pulse train (its derivative, i.e. with lip radiation) following
an F0 contour: per-phrase declination, per-syllable pitch accents, slow wander, per-period
jitter and shimmer. Each vowel is shaped by four formant resonators (F1-F3 from a small
vowel set, F4 fixed) scaled by the speaker's vocal-tract factor. Background noise (pink)
sits at a fixed floor set by ``snr_db`` relative to a neutral utterance.

Prosody follows the *displayed* emotion (scaled by intensity, see :data:`PROSODY`):
anger high F0, loud, fast, pressed voice; sadness low, quiet, slow, narrow range, breathy;
happiness high with a wide range; calmness low energy and slow; neutral in the middle.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.signal import butter, sosfilt

#: Per emotion: F0 factor, F0 range (semitones), level (dB), rate factor, jitter, shimmer,
#: open quotient of the glottal pulse (low = pressed), breathiness (aspiration noise).
PROSODY: dict[str, dict[str, float]] = {
    "neutral":   dict(f0=1.00, range=3.0, level=0.0, rate=1.00, jitter=0.010, shimmer=0.04,
                      oq=0.60, breath=0.02),
    "sadness":   dict(f0=0.87, range=1.5, level=-7.0, rate=0.75, jitter=0.018, shimmer=0.06,
                      oq=0.70, breath=0.10),
    "anger":     dict(f0=1.30, range=5.0, level=6.0, rate=1.25, jitter=0.020, shimmer=0.07,
                      oq=0.45, breath=0.01),
    "happiness": dict(f0=1.25, range=6.5, level=3.0, rate=1.12, jitter=0.012, shimmer=0.05,
                      oq=0.55, breath=0.02),
    "calmness":  dict(f0=0.93, range=2.0, level=-4.0, rate=0.82, jitter=0.008, shimmer=0.03,
                      oq=0.65, breath=0.05),
}
#: Adult-male reference formants (Hz) of the vowel set /a i u e o/.
VOWELS = np.array([[730.0, 1090.0, 2440.0], [270.0, 2290.0, 3010.0], [300.0, 870.0, 2240.0],
                   [530.0, 1840.0, 2480.0], [570.0, 840.0, 2410.0]])
BANDWIDTHS = np.array([70.0, 100.0, 140.0, 220.0])
F4 = 3400.0
#: RMS of a neutral vowel at 0 dB; the noise floor is this times 10^(-snr/20).
REF_RMS = 0.05
_MULTIPLICATIVE = ("f0", "rate", "range")


def prosody(emotion: str, intensity: float = 1.0) -> dict[str, float]:
    """Prosody parameters of ``emotion``, interpolated from neutral by ``intensity``.

    Ratios (F0, rate, range) are interpolated geometrically, the rest linearly.
    """
    base, target = PROSODY["neutral"], PROSODY[emotion]
    out = {}
    for key, value in target.items():
        if key in _MULTIPLICATIVE:
            out[key] = float(base[key] * (value / base[key]) ** intensity)
        else:
            out[key] = float(base[key] + intensity * (value - base[key]))
    return out


def _plan(rng: np.random.Generator, seconds: float, rate: float, pause_scale: float) -> dict:
    """Syllable timing: onsets, consonant and vowel durations, vowels, accents, phrases."""
    t = rng.uniform(0.15, 0.4)
    end = seconds - 0.25
    onsets, cons, vow, vowel, accent, phrase_start = [], [], [], [], [], []
    phrase = 0
    while t < end - 0.15:
        n_syl = int(rng.integers(3, 9))
        for k in range(n_syl):
            dur = rng.uniform(0.8, 1.2) / rate
            if t + dur > end:
                break
            c = max(0.03, 0.3 * dur)
            onsets.append(t)
            cons.append(c)
            vow.append(dur - c)
            vowel.append(int(rng.integers(0, len(VOWELS))))
            accent.append(rng.uniform(0.5, 1.0) if rng.random() < (0.7 if k == 0 else 0.35)
                          else rng.uniform(0.0, 0.15))
            phrase_start.append(phrase)
            t += dur
        phrase += 1
        t += rng.uniform(0.2, 0.5) * pause_scale
    return dict(onset=np.array(onsets), cons=np.array(cons), vowel_dur=np.array(vow),
                vowel=np.array(vowel, dtype=int), accent=np.array(accent),
                phrase=np.array(phrase_start, dtype=int))


def _f0_contour(plan: dict, p: dict, f0: float, seconds: float,
                rng: np.random.Generator, rate: float = 200.0) -> np.ndarray:
    """F0 in Hz on a ``rate``-Hz control grid covering ``seconds``."""
    grid = np.arange(int(seconds * rate) + 2) / rate                         # (G,)
    st = np.zeros_like(grid)
    centers = plan["onset"] + plan["cons"] + 0.5 * plan["vowel_dur"]
    for ph in np.unique(plan["phrase"]):
        sel = plan["phrase"] == ph
        t0, t1 = plan["onset"][sel][0], plan["onset"][sel][-1] + plan["cons"][sel][-1] \
            + plan["vowel_dur"][sel][-1]
        inside = (grid >= t0) & (grid <= t1)
        decl = 0.5 * p["range"] + 1.0
        st[inside] += decl * (0.5 - (grid[inside] - t0) / max(t1 - t0, 1e-3))
    for c, d, a in zip(centers, plan["vowel_dur"], plan["accent"]):
        st += p["range"] * a * np.exp(-0.5 * ((grid - c) / (0.35 * d + 1e-3)) ** 2)
    wander = np.cumsum(rng.standard_normal(grid.size)) / np.sqrt(rate)
    wander -= np.convolve(wander, np.ones(41) / 41, mode="same")
    st += 0.3 * wander / (wander.std() + 1e-9)
    st -= st.mean()
    return f0 * 2.0 ** (st / 12.0)


def _glottal_source(f0: np.ndarray, sr: int, p: dict,
                    rng: np.random.Generator) -> np.ndarray:
    """Rosenberg glottal-flow derivative at per-sample ``f0`` with jitter and shimmer."""
    phase0 = np.cumsum(f0) / sr
    n_periods = int(phase0[-1]) + 2
    jit = 1.0 + p["jitter"] * rng.standard_normal(n_periods)
    shim = 1.0 + p["shimmer"] * rng.standard_normal(n_periods)
    period = np.floor(phase0).astype(int)
    phase = np.cumsum(f0 * jit[period]) / sr
    idx = np.minimum(np.floor(phase).astype(int), n_periods - 1)
    frac = phase - np.floor(phase)
    oq = p["oq"]
    tp, tn = 0.66 * oq, 0.34 * oq
    flow = np.where(frac < tp, 0.5 * (1 - np.cos(np.pi * frac / tp)),
                    np.where(frac < tp + tn, np.cos(0.5 * np.pi * (frac - tp) / tn), 0.0))
    flow *= shim[idx]
    src = np.diff(flow, prepend=0.0)                                         # (T,)
    src /= src.std() + 1e-12
    breath = p["breath"] * 4.0 * rng.standard_normal(src.size) * (frac < oq)
    return src + breath


@functools.lru_cache(maxsize=64)
def _vowel_sos(sr: int, vowel: int, scale: float) -> np.ndarray:
    """Cascade of four unity-DC-gain resonators for one vowel, ``(4, 6)`` SOS."""
    freqs = np.append(VOWELS[vowel] * scale, F4 * scale)
    sections = []
    for f, bw in zip(freqs, BANDWIDTHS * np.sqrt(scale)):
        f = min(f, 0.45 * sr)
        r = np.exp(-np.pi * bw / sr)
        a1, a2 = -2 * r * np.cos(2 * np.pi * f / sr), r * r
        sections.append([1 + a1 + a2, 0.0, 0.0, 1.0, a1, a2])
    return np.array(sections)


@functools.lru_cache(maxsize=16)
def _noise_sos(sr: int, kind: int) -> np.ndarray:
    """Band-pass filters of the consonant noises: /s/, /sh/, /f/ (and a plosive burst)."""
    lo, hi = [(4000.0, 8000.0), (2000.0, 5000.0), (1000.0, 7000.0), (500.0, 4000.0)][kind]
    hi = min(hi, 0.45 * sr)
    lo = min(lo, 0.5 * hi)      # low rates (8 kHz): /s/ above Nyquist keeps its upper octave
    return butter(4, [lo, hi], btype="bandpass", fs=sr, output="sos")


def _pink(rng: np.random.Generator, n: int) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    spec /= np.sqrt(np.maximum(np.arange(spec.size), 1.0))
    x = np.fft.irfft(spec, n=n)
    return x / (x.std() + 1e-12)


def simulate_speech(subject, *, emotion: str, intensity: float = 1.0, seconds: float,
                    sample_rate: int = 44100, rng: np.random.Generator,
                    snr_db: float = 15.0) -> np.ndarray:
    """Simulate one utterance.

    Parameters
    ----------
    subject : Subject
        Speaker traits (``f0_base``, ``formant_scale``, ``speaking_rate``, ``loudness_db``).
    emotion : str
        The *displayed* EAV class.
    intensity : float
        Scales the emotion's deviation from neutral prosody.
    seconds : float
        Length of the recording.
    sample_rate : int
        Output rate in Hz.
    rng : numpy.random.Generator
        The trial's speech stream.
    snr_db : float
        Speech-to-noise ratio of a neutral utterance; the noise floor is fixed.

    Returns
    -------
    numpy.ndarray
        ``(T,)`` float32 in [-1, 1], ``T = round(seconds * sample_rate)``.
    """
    sr, n = int(sample_rate), int(round(seconds * sample_rate))
    p = prosody(emotion, intensity)
    # Trial-to-trial variation of the same emotion.
    f0 = subject.f0_base * p["f0"] * np.exp(0.04 * rng.standard_normal())
    p["range"] *= float(np.exp(0.15 * rng.standard_normal()))
    level = p["level"] + subject.loudness_db + 1.5 * rng.standard_normal()
    rate = subject.speaking_rate * p["rate"] * np.exp(0.06 * rng.standard_normal())
    plan = _plan(rng, seconds, rate, pause_scale=1.0 / p["rate"])
    contour = _f0_contour(plan, p, f0, seconds, rng)
    f0_t = np.interp(np.arange(n) / sr, np.arange(contour.size) / 200.0, contour)  # (T,)
    source = _glottal_source(f0_t, sr, p, rng)
    out = np.zeros(n + int(0.05 * sr))                                       # (T + tail,)
    tail = int(0.03 * sr)
    syl_gain = REF_RMS * 10.0 ** ((level + 2.0 * plan["accent"]
                                   + rng.normal(0.0, 1.0, plan["vowel"].size)) / 20.0)
    kinds = rng.integers(0, 4, size=plan["vowel"].size)
    cons_gain = rng.uniform(0.15, 0.35, size=plan["vowel"].size) * (1.0 + 0.3 * (level > 0))
    for k in range(plan["vowel"].size):
        c0 = int(plan["onset"][k] * sr)
        v0 = c0 + int(plan["cons"][k] * sr)
        v1 = min(v0 + int(plan["vowel_dur"][k] * sr), n)
        if v1 - v0 < 32:
            continue
        # consonant: a noise burst (plosives: 15 ms burst, then closure silence)
        c_len = v0 - c0 if kinds[k] < 3 else min(v0 - c0, int(0.015 * sr))
        burst = sosfilt(_noise_sos(sr, int(kinds[k])), rng.standard_normal(c_len))
        burst *= np.hanning(c_len) / (burst.std() + 1e-12)
        out[c0:c0 + c_len] += cons_gain[k] * syl_gain[k] * burst
        # vowel: voiced source through the formant cascade, smooth onset and offset
        m = v1 - v0
        ramp = min(int(0.025 * sr), m // 3)
        env = np.ones(m)
        env[:ramp] = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
        env[m - ramp:] = env[:ramp][::-1]
        seg = np.concatenate([source[v0:v1] * env, np.zeros(tail)])
        voiced = sosfilt(_vowel_sos(sr, int(plan["vowel"][k]),
                                    round(subject.formant_scale, 3)), seg)
        voiced *= syl_gain[k] / (np.sqrt(np.mean(voiced[:m] ** 2)) + 1e-12)
        out[v0:v0 + m + tail] += voiced
    speech = out[:n]
    noise = REF_RMS * 10.0 ** (-snr_db / 20.0) * _pink(rng, n)
    mic = 10.0 ** (1.5 * rng.standard_normal() / 20.0)
    return np.clip(mic * (speech + noise), -1.0, 1.0).astype(np.float32)


def mouth_envelope(audio: np.ndarray, sample_rate: int, fps: float,
                   n_frames: int) -> np.ndarray:
    """How open the mouth is per video frame, from the audio's short-time level.

    Parameters
    ----------
    audio : numpy.ndarray
        ``(T,)`` speech.
    sample_rate : int
        Its rate.
    fps : float
        Video frame rate.
    n_frames : int
        Number of frames to return.

    Returns
    -------
    numpy.ndarray
        ``(n_frames,)`` in [0, 1]: 0 at or below 18 dB under the loudest frames.
    """
    hop = sample_rate / fps
    win = max(int(hop), 1)
    level = np.empty(n_frames)
    for i in range(n_frames):
        a = int(i * hop)
        seg = audio[a:a + win]
        level[i] = 10 * np.log10(np.mean(seg.astype(np.float64) ** 2) + 1e-12) if seg.size \
            else -120.0
    top = np.percentile(level, 95) if n_frames else 0.0
    return np.clip((level - (top - 18.0)) / 18.0, 0.0, 1.0)
