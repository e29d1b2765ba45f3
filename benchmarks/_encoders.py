"""The encoder comparison of ``benchmarks/accuracy.py``: one modality at a time, several
architectures, the same within-subject split, normalisation and training recipe.

* **EEG**: the published EEGformer (:mod:`emoray.models.eegformer`) against braindecode's
  EEGNetv4, ShallowFBCSPNet and EEGConformer (``braindecode:<Model>`` encoders), all on the
  raw EEG column (``(C, T)``, the contract's rate) standardised per subject and channel
  (``subject_norm: [eeg]``: a calibration recording's statistics, band power kept), with
  ``bandpower-mlp`` on the same records' log band power as the hand-feature reference;
* **speech**: the AST on the subject-standardised log-mel against an MLP on the speech
  statistics (``speechstats``).

Each architecture is the fusion stage restricted to one modality (so the very training
loop, schedule, augmentation and epoch choice of the shipped recipe), trained once per seed
on the within-subject split; its validation accuracy is the modality's. The linear probe's
accuracy for the modality on the same split sits beside it in the table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: modality -> [(architecture, the subject-normalised column it reads)]
ENCODERS: dict[str, list[tuple[str, str]]] = {
    "eeg": [("eegformer", "eeg"), ("braindecode:EEGNetv4", "eeg"),
            ("braindecode:ShallowFBCSPNet", "eeg"), ("braindecode:EEGConformer", "eeg"),
            ("bandpower-mlp", "eeg_bp")],
    "speech": [("ast", "logmel"), ("speechstats", "audio_stats")],
}


def encoder_stage(base, modality: str, arch: str, column: str, preset: str,
                  epochs: int | None = None):
    """The fusion-stage config that trains ``arch`` alone on ``modality`` (reading
    ``column``, standardised per subject) with ``base``'s recipe otherwise; validated here
    (``model_copy`` does not validate: a bad mix would only fail in the training
    workers)."""
    update = {"modalities": [modality], "architectures": {modality: arch},
              "encoders": {modality: preset}, "subject_norm": [column],
              "calibrate_unseen": False, "fuse_aux": False, "feature_noise": {}}
    if epochs is not None:
        update["epochs"] = epochs
    return type(base).model_validate({**base.model_dump(), **update})


def encoder_runs(cfg, features: Path, work: Path, seeds: list[int], *, preset: str,
                 epochs: int | None = None,
                 encoders: dict[str, list[tuple[str, str]]] | None = None):
    """The comparison: every ``(modality, architecture)`` of ``encoders`` (default
    :data:`ENCODERS`) once per seed with the plan's fusion-stage recipe on that modality
    alone (its own column standardised per subject, no ``feature_noise``: the raw-EEG
    encoders' input has no standard units, so none of the compared encoders gets it).

    Returns its rows, one per architecture, to be filled by :func:`collect`
    (``{"modality", "encoder", "preset", "acc": [per seed], "n_val", "seconds" (its runs'
    wall time, summed), "steps"}``; an architecture that cannot be built on the contract
    gets ``"error"`` instead of accuracies), its ``train_fusion`` calls (``(args,
    kwargs)``, for :func:`emoray.runtime.run_concurrently`: the benchmark runs them in one
    pool with its other runs) and each call's ``(row, seed)``."""
    from emoray.config import SplitConfig

    base = cfg.train.stages["fusion"]
    split = SplitConfig(fraction=cfg.train.split.fraction)
    rows: list[dict[str, Any]] = []
    calls, owner = [], []
    for modality, archs in (encoders or ENCODERS).items():
        for arch, column in archs:
            stage = encoder_stage(base, modality, arch, column, preset, epochs)
            rows.append({"modality": modality, "encoder": arch, "preset": preset,
                         "acc": [], "steps": None, "seconds": 0.0})
            for seed in seeds:
                name = f"{modality}-{arch.replace(':', '-')}-s{seed}"
                calls.append(((features, work / "encoders",
                               stage.model_copy(update={"seed": seed})),
                              {"name": name, "split": split}))
                owner.append((rows[-1], seed))
    return rows, calls, owner


def collect(rows: list[dict[str, Any]], owner: list, outcomes: list, echo=print
            ) -> list[dict[str, Any]]:
    """Fill ``rows`` from the runs' ``(result or refusal, seconds)``, in call order."""
    from emoray.errors import EmorayError

    for (row, seed), (out, seconds) in zip(owner, outcomes):
        row["seconds"] += seconds
        if isinstance(out, EmorayError):             # refused before training: say why
            row["error"] = str(out).splitlines()[0]
            continue
        if "error" in row:
            continue
        metrics = out["metrics"]
        row["acc"].append(float(metrics["val_acc"]))
        row["n_val"] = int(metrics.get("val_n", 0))
        row["steps"] = metrics.get("steps")
        echo(f"  {row['modality']} {row['encoder']} ({row['preset']}) seed {seed}: "
             f"{100 * row['acc'][-1]:.1f} %")
    return rows


#: the encoder comparison's headline per modality: (architecture, its reference(s))
ENCODER_HEADLINES = (("eeg", "eegformer", "braindecode:", "EEGformer / best braindecode model"),
                     ("speech", "ast", "speechstats", "AST / speech-statistics MLP"))


def encoder_ratio(rows: list[dict[str, Any]]) -> tuple[str, float] | None:
    """The headline of the encoder comparison: EEGformer's mean EEG accuracy over the best
    braindecode model's; when EEG was not compared, the AST's over the speech-statistics
    MLP's. ``(what, ratio)``, or None when neither pair ran."""
    for modality, arch, peer, label in ENCODER_HEADLINES:
        mean = {r["encoder"]: float(np.mean(r["acc"])) for r in rows
                if r["modality"] == modality and r["acc"]}
        peers = [v for k, v in mean.items() if k.startswith(peer)]
        if arch in mean and peers:
            return label, mean[arch] / max(max(peers), 1e-9)
    return None
