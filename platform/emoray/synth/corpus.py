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


from emoray.synth.config import SynthConfig
from emoray.synth import layouts
from emoray.synth.design import build_design
from emoray.synth.trial import simulate_trial  # noqa: F401  (the corpus's public API)

GROUND_TRUTH_NAME = "ground_truth.csv"
CONFIG_NAME = "synth_config.yaml"


def _progress(total: int, enabled: bool, desc: str):
    from emoray.console import Progress

    return Progress(total, desc, unit="trial", enabled=enabled)


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
