"""Write a synthetic corpus: signals per trial, a dataset layout, and the ground truth.

:func:`write_corpus` draws the design (:mod:`emoray.synth.design`), simulates each trial's
modalities (:func:`simulate_trial`) and writes them in the requested layout
(:mod:`emoray.synth.layouts`), then writes ``ground_truth.csv`` (every trial's latent and
recorded facts, ids and files) and ``synth_config.yaml`` (the resolved config) at the
output root. Everything is single-process and deterministic by seed.

Which modalities a trial has:

========== ========================= ===================================
corpus      EEG (follows *felt*)      speech / face (follow *displayed*)
========== ========================= ===================================
parallel    every trial               speech when speaking; face always
eeg         every trial               none
speech      none                      speech only
========== ========================= ===================================
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from emoray.synth.config import SynthConfig
from emoray.synth.design import GroundTruth, TrialTruth, build_design, stream
from emoray.synth.eeg import draw_blinks, simulate_eeg
from emoray.synth.speech import mouth_envelope, simulate_speech
from emoray.synth.video import render_face

GROUND_TRUTH_NAME = "ground_truth.csv"
CONFIG_NAME = "synth_config.yaml"


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


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="trial", leave=False)


def write_corpus(cfg: SynthConfig, out: str | Path, *, progress: bool = True) -> dict:
    """Generate and write a synthetic corpus.

    Parameters
    ----------
    cfg : SynthConfig
        The resolved config (its ``layout`` and ``mode`` decide what is written).
    out : str or Path
        Output folder (created; existing files of the same names are overwritten).
    progress : bool
        Show a progress bar over trials.

    Returns
    -------
    dict
        Summary: ``layout``, ``mode``, ``seed``, ``out``, per-corpus ``subjects`` and
        ``trials``, ``files`` per modality, ``excluded`` trials, ``paths`` (ground truth,
        config and the layout's roots/manifests, relative to ``out``) and ``seconds``.
    """
    import yaml

    from emoray.synth import layouts

    start = time.perf_counter()
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    gt = build_design(cfg)
    writer = {"native": layouts.write_native, "eav": layouts.write_eav,
              "deap": layouts.write_deap, "iemocap": layouts.write_iemocap}[cfg.layout]
    with _progress(len(gt.trials), progress, f"synth {cfg.layout}") as bar:
        paths = writer(cfg, gt, root, bar)
    gt.to_frame().to_csv(root / GROUND_TRUTH_NAME, index=False)
    with open(root / CONFIG_NAME, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg.model_dump(mode="json"), f, sort_keys=False)
    files = {m: sum(1 for t in gt.trials if t.files.get(m)) for m in ("eeg", "audio", "video")}
    return {
        "layout": cfg.layout, "mode": cfg.mode, "seed": cfg.seed, "out": str(root),
        "subjects": {c: sum(1 for s in gt.subjects if s.corpus == c) for c in gt.corpora()},
        "trials": {c: len(gt.trials_of(c)) for c in gt.corpora()},
        "files": files,
        "excluded": sum(1 for t in gt.trials if t.excluded),
        "acted": sum(1 for t in gt.trials if t.acted),
        "label_flipped": sum(1 for t in gt.trials if t.label_flipped),
        "paths": {"ground_truth": GROUND_TRUTH_NAME, "config": CONFIG_NAME, **paths},
        "seconds": round(time.perf_counter() - start, 2),
    }


def read_ground_truth(out: str | Path):
    """Read ``ground_truth.csv`` of a written corpus as a :class:`pandas.DataFrame`."""
    import pandas as pd

    return pd.read_csv(Path(out) / GROUND_TRUTH_NAME, keep_default_na=False)
