"""What JMML's three stages share (METHODS.md section A): the shard columns, the checks
of a previous stage's bundle, the worker helpers, and the frozen-encoder embedding and
logistic probes that ``inter`` and ``classifier`` both run.

Worker loops of JMML's ``inter`` (E-DCC-CAE) and ``classifier`` stages.

Both start by embedding every train and val record with the frozen JEC-SSL encoders:
every rank reads the whole (small, feature-level) split, embeds the records whose id hash
falls to it, and the shares are gathered, so every rank holds the same table sorted by
record id (:func:`embed_split`). The E-DCC-CAE then trains on pairs drawn from that table
each epoch (each rank an equal slice, DDP over the E-DCC-CAE); logistic regressions are
deterministic full-batch fits that every rank computes identically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from emoray.bundle import check_contract, read_bundle_meta
from emoray.config.train import TARGETS
from emoray.console import remote_echo
from emoray.data.features import batch_to_tensors
from emoray.data.shards import shard_files
from emoray.errors import ConfigError, DataError
from emoray.models.jmml_model import PATHS, JMMLModel, LogisticHead, joint_label
from emoray.train.loop import all_gather_objects, mine
from emoray.train.metrics import confusion, macro_f1
from emoray.train.split import check_columns, non_null_columns

SPEECH_FEATURE = "audio_stats"
__all__ = ["SPEECH_FEATURE", "TARGETS", "NEEDS", "bundle_extra", "check_targets", "codes",
           "columns", "context", "embed_split", "init_bundle", "probe", "probed_metrics",
           "progress", "tensors"]


def columns(features: dict[str, str], targets: list[str]) -> list[str]:
    return ["record_id"] + [f"{t}_high" for t in targets] + list(features.values())


def check_targets(files: list[Path], targets: list[str], stage: str) -> None:
    cols = [f"{t}_high" for t in targets]
    missing = [c for c in cols if c not in non_null_columns(files, cols)]
    if missing:
        raise DataError(str(files[0].parent), f"the {stage} stage needs binary labels "
                        f"{cols}, but {missing} is null in every shard (does the dataset "
                        f"carry valence/arousal?)", kind="label", field=missing[0])


def init_bundle(init: str | None, expected: tuple[str, ...], stage: str,
                 meta: dict[str, Any]) -> dict[str, Any]:
    if not init:
        raise ConfigError(f"stages.{stage}.from_checkpoint: the {stage} stage starts from a "
                          f"{' or '.join(expected)} bundle; add that stage to the plan or "
                          f"set from_checkpoint")
    bundle = read_bundle_meta(init)
    if bundle.get("stage") not in expected:
        raise ConfigError(f"stages.{stage}.from_checkpoint: {init} is a "
                          f"{bundle.get('stage')!r} bundle, expected {' or '.join(expected)}")
    check_contract(bundle["contract"], meta, source=f"checkpoint {init}")
    return bundle


def context():
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device()


def tensors(batch, meta, device, targets: list[str]) -> dict[str, torch.Tensor]:
    t = batch_to_tensors(batch, meta, device)
    t["y"] = torch.stack([t[f"{x}_high"] for x in targets], 1)      # (B, n_targets)
    t["joint"] = joint_label(t["y"])                                 # (B,)
    return t


def bundle_extra(model: JMMLModel) -> dict[str, Any]:
    return {"targets": model.targets, "target_classes": ["low", "high"],
            "features": model.features}


def progress(stage: str, epoch: int, epochs: int, metrics: dict[str, Any],
              keys: list[str]) -> None:
    shown = " ".join(f"{k}={metrics[k]}" if isinstance(metrics[k], int) else
                     f"{k}={metrics[k]:.3f}" for k in keys if k in metrics)
    remote_echo(f"[{stage}] epoch {epoch + 1}/{epochs} {shown}")


#: representation -> the modalities a record needs for it
NEEDS = {"raw_speech": ("speech",), "raw_eeg": ("eeg",), "jec_speech": ("speech",),
         "jec_eeg": ("eeg",), "speech_only": ("speech",), "eeg_only": ("eeg",),
         "combined": ("speech", "eeg")}


def embed_split(model: JMMLModel, split: str, meta: dict[str, Any], device, rank: int,
                world: int) -> dict[str, torch.Tensor | list]:
    """Raw (standardised) features, JEC-SSL embeddings, presence and labels of every record
    of ``split``, identical on every rank, on CPU, sorted by record id."""
    import ray.train

    keys = [f"raw_{m}" for m in model.modalities] + [f"jec_{m}" for m in model.modalities]
    local: dict[str, list] = {k: [] for k in keys + ["has_speech", "has_eeg", "y", "ids"]}
    model.eval()
    with torch.no_grad():
        for batch in ray.train.get_dataset_shard(split).iter_batches(
                batch_size=256, batch_format="numpy"):
            keep = mine(batch["record_id"], rank, world)
            if not keep.any():
                continue
            t = tensors({k: v[keep] for k, v in batch.items()}, meta, device, model.targets)
            reps = model.representations(t)
            for k in keys:
                local[k].append(reps[k].float().cpu())
            for m in model.modalities:
                local[f"has_{m}"].append(t[f"{m}_present"].cpu())
            local["y"].append(t["y"].cpu())
            local["ids"].extend(str(r) for r in batch["record_id"][keep])
    parts = all_gather_objects(local, world)
    ids = [r for p in parts for r in p["ids"]]
    order = np.argsort(np.array(ids, dtype=object), kind="stable")
    out: dict[str, Any] = {"ids": [ids[i] for i in order]}
    for k in local:
        if k == "ids":
            continue
        chunks = [c for p in parts for c in p[k]]
        out[k] = torch.cat(chunks)[torch.from_numpy(order)] if chunks else torch.zeros(0)
    return out


def _rows(table: dict[str, Any], rep: str, target: int) -> torch.Tensor:
    sel = table["y"][:, target] >= 0
    for m in NEEDS[rep]:
        sel = sel & table[f"has_{m}"].bool()
    return sel


def probe(reps_train: dict[str, torch.Tensor], train: dict[str, Any],
          reps_val: dict[str, torch.Tensor], val: dict[str, Any], targets: list[str], *,
          l2: float, balanced: bool = True, max_iter: int = 200
          ) -> tuple[dict[str, float], dict[str, LogisticHead]]:
    """Fit a logistic regression per (representation, target) on train rows that have the
    representation's modalities and score val: ``val_f1_<rep>_<target>``,
    ``val_acc_<rep>_<target>``, ``val_n_<rep>_<target>``; returns metrics and the heads."""
    metrics: dict[str, float] = {}
    heads: dict[str, LogisticHead] = {}
    for rep in reps_train:
        for j, name in enumerate(targets):
            tr, va = _rows(train, rep, j), _rows(val, rep, j)
            y = train["y"][tr, j]
            if int(tr.sum()) < 2 or len(torch.unique(y)) < 2:
                continue                      # nothing to fit (e.g. no parallel records)
            head = LogisticHead(reps_train[rep].shape[1]).fit(
                reps_train[rep][tr], y, l2=l2, balanced=balanced, max_iter=max_iter)
            heads[f"{rep}__{name}"] = head
            if int(va.sum()) == 0:
                continue
            with torch.no_grad():
                pred = head(reps_val[rep][va]).argmax(1)
            conf = confusion(val["y"][va, j], pred, 2)
            metrics[f"val_f1_{rep}_{name}"] = macro_f1(conf)
            metrics[f"val_acc_{rep}_{name}"] = float(conf.diag().sum() / conf.sum())
            metrics[f"val_n_{rep}_{name}"] = int(conf.sum())
    for rep in reps_train:
        scores = [metrics[f"val_f1_{rep}_{n}"] for n in targets
                  if f"val_f1_{rep}_{n}" in metrics]
        if scores:
            metrics[f"val_f1_{rep}"] = float(np.mean(scores))
    return metrics, heads


def codes(model: JMMLModel, table: dict[str, Any], device) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        emb = {m: table[f"jec_{m}"].to(device) for m in model.modalities}
        return {k: v.float().cpu() for k, v in model.codes(emb).items()}


def probed_metrics() -> set[str]:
    """What the per-epoch probes of ``inter`` and ``classifier`` report: every target the
    model has, on every inference path."""
    probed = [f"val_{k}_{p}_{t}" for p in PATHS for t in TARGETS for k in ("f1", "acc", "n")]
    return {"val_f1", *(f"val_f1_{p}" for p in PATHS), *probed}


def preflight_frozen(stage: str):
    """The check of ``inter`` and ``classifier`` before any stage runs: the speech and EEG
    feature columns the plan's intra stage chose hold data."""
    def check(features: Path, cfg: Any, plan: dict[str, Any]) -> None:
        cols = {"speech": SPEECH_FEATURE,
                "eeg": getattr(plan.get("intra"), "eeg_feature", None)}
        check_columns(shard_files(features), {m: c for m, c in cols.items() if c}, stage)
    return check
