"""One synthetic trial: its EEG, speech and video simulated together (shared blink
times, a mouth that moves with the speech envelope)."""

from __future__ import annotations

from typing import Any

import numpy as np

from emoray.synth.config import SynthConfig
from emoray.synth.design import GroundTruth, TrialTruth, stream
from emoray.synth.eeg import draw_blinks, simulate_eeg
from emoray.synth.speech import mouth_envelope, simulate_speech
from emoray.synth.video import render_face


def simulate_trial(cfg: SynthConfig, gt: GroundTruth, trial: TrialTruth, *,
                   baseline_seconds: float = 0.0) -> dict[str, Any]:
    """Simulate every modality ``trial`` has.

    Parameters
    ----------
    cfg : SynthConfig
        The resolved config (rates, sizes, difficulty knobs).
    gt : GroundTruth
        The design holding the trial's subject.
    trial : TrialTruth
        The trial.
    baseline_seconds : float
        Resting EEG (no emotion) prepended to the trial (DEAP's 3 s pre-trial baseline).

    Returns
    -------
    dict
        ``eeg`` ``(C, T)`` volts, ``audio`` ``(T,)`` float32, ``video`` ``(T, H, W, 3)``
        uint8 (each only when the trial has it) and ``blink_times`` (seconds from the
        start of the returned EEG).
    """
    subject = gt.subject(trial.corpus, trial.subject)
    key = (trial.corpus, trial.subject, trial.trial)
    blinks = draw_blinks(stream(cfg.seed, *key, "blinks"), trial.seconds, cfg.blinks_per_min)
    out: dict[str, Any] = {"blink_times": blinks + baseline_seconds}
    if trial.corpus in ("parallel", "eeg"):
        common = dict(sfreq=cfg.eeg_sfreq, ch_names=cfg.eeg_channels, seed=cfg.seed,
                      snr_db=cfg.eeg_snr_db, hum=cfg.hum)
        eeg = simulate_eeg(subject, emotion=trial.felt, valence=trial.valence,
                           arousal=trial.arousal, intensity=trial.intensity,
                           seconds=trial.seconds, rng=stream(cfg.seed, *key, "eeg"),
                           blink_times=blinks, **common)                     # (C, T)
        if baseline_seconds > 0:
            g = stream(cfg.seed, *key, "eeg-baseline")
            rest_blinks = draw_blinks(g, baseline_seconds, cfg.blinks_per_min)
            rest = simulate_eeg(subject, emotion=None, valence=0.0, arousal=0.0,
                                intensity=0.0, seconds=baseline_seconds, rng=g,
                                blink_times=rest_blinks, **common)           # (C, T0)
            eeg = np.concatenate([rest, eeg], axis=1)                        # (C, T0 + T)
            out["blink_times"] = np.concatenate([rest_blinks, out["blink_times"]])
        out["eeg"] = eeg
    if trial.corpus in ("parallel", "speech") and trial.task == "speaking":
        out["audio"] = simulate_speech(
            subject, emotion=trial.displayed, intensity=trial.intensity,
            seconds=trial.seconds, sample_rate=cfg.audio_rate,
            rng=stream(cfg.seed, *key, "speech"), snr_db=cfg.speech_snr_db)   # (T,)
    if trial.corpus == "parallel":
        n_frames = max(int(round(trial.seconds * cfg.video_fps)), 1)
        mouth = (mouth_envelope(out["audio"], cfg.audio_rate, cfg.video_fps, n_frames)
                 if "audio" in out else None)
        out["video"] = render_face(
            subject, emotion=trial.displayed, intensity=trial.intensity,
            seconds=trial.seconds, fps=cfg.video_fps, size=cfg.video_size,
            rng=stream(cfg.seed, *key, "video"), noise=cfg.video_noise, mouth=mouth,
            blink_times=blinks)                                              # (T, H, W, 3)
    return out
