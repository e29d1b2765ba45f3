"""JMML's ``intra`` stage (JEC-SSL, METHODS.md A): one MLP encoder per modality, trained
concurrently in one worker group (two independent models under one DDP wrapper):
``CE(head_t(e), y_t)`` summed over the targets plus ``ssl_weight * SupCon`` over two
augmented views (feature masking + Gaussian noise in standardised feature space), the joint
label of all targets defining the positives.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emoray.config import SplitConfig
from emoray.config.train import IntraStageConfig
from emoray.data.features import feature_metadata
from emoray.data.shards import shard_files
from emoray.errors import ConfigError
from emoray.models import encoder_class
from emoray.models.jmml_model import JMMLModel, Standardizer
from emoray.models.losses import feature_mask, gaussian_noise, supcon_loss
from emoray.train.loop import (all_reduce, count_steps, fit_stage, mine, optimizer_step,
                               report, restore)
from emoray.train.metrics import confusion, macro_f1
from emoray.train.split import check_columns, split_datasets, split_records
from emoray.train.stages.base import Stage, register_stage
from emoray.train.stages.jmml_common import (SPEECH_FEATURE, bundle_extra, check_targets,
                                             columns, context, progress, tensors)


def preflight_intra(features: Path, cfg: IntraStageConfig) -> dict[str, Any]:
    """Check the shards for the intra stage; return ``(meta, files, JMMLModel config)``."""
    meta = feature_metadata(features)
    files = shard_files(features)
    cols = {m: SPEECH_FEATURE if m == "speech" else cfg.eeg_feature for m in cfg.modalities}
    check_columns(files, cols, "intra")
    check_targets(files, cfg.targets, "intra")
    for m in cfg.modalities:
        preset = cfg.encoders.get(m, "tiny")
        if preset not in encoder_class("mlp").presets:
            raise ConfigError(f"encoders.{m}: unknown preset {preset!r} for encoder 'mlp'; "
                              f"expected one of {sorted(encoder_class('mlp').presets)}")
    in_features = {m: math.prod(meta["feature_shapes"][c]) for m, c in cols.items()}
    model_config = JMMLModel(cols, in_features, {m: cfg.encoders.get(m, "tiny")
                                                 for m in cols}, cfg.targets).config()
    return {"meta": meta, "files": files, "model_config": model_config}


def train_intra(features: str | Path, run_dir: str | Path, cfg: IntraStageConfig,
                name: str = "intra", split: SplitConfig | None = None) -> dict[str, Any]:
    """Train the JEC-SSL encoders on Ray Train; return metrics and the bundle path."""
    cfg = cfg if isinstance(cfg, IntraStageConfig) else IntraStageConfig.from_dict(cfg)
    features = Path(features).resolve()
    pre = preflight_intra(features, cfg)
    train_ids, val_ids = split_records(pre["files"], split, str(features))
    cols = pre["model_config"]["features"]
    datasets = split_datasets(features, columns(cols, cfg.targets), train_ids, val_ids,
                              cfg.materialize)
    loop_config = {"cfg": cfg.model_dump(mode="json"), "meta": pre["meta"],
                   "model_config": pre["model_config"]}
    out = fit_stage(intra_loop, loop_config, cfg, datasets, run_dir, name,
                    datasets_to_split=["train"])
    return {**out, "n_train": len(train_ids), "n_val": len(val_ids)}


class IntraObjective(nn.Module):
    """One DDP forward for both encoders: per present modality, two augmented views,
    class CE per target and SupCon on the joint label."""

    def __init__(self, model: JMMLModel, cfg: IntraStageConfig):
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(self, t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, model = self.cfg, self.model
        total = sum(p.sum() * 0.0 for p in model.parameters())  # attached even if empty
        parts = []
        for m in model.modalities:
            enc = model.encoders[m]
            sel = t[f"{m}_present"] & (t["joint"] >= 0)
            if int(sel.sum()) < 2:
                parts.append(torch.zeros((), device=total.device))
                continue
            x = enc.norm(t[model.features[m]][sel])                   # (B', F)
            views = [gaussian_noise(feature_mask(x, cfg.mask_p), cfg.noise_std)
                     for _ in range(2)]
            e = torch.stack([enc.mlp(v).pooled for v in views], 1)    # (B', 2, D)
            y = t["y"][sel]
            ce = sum(F.cross_entropy(enc.heads[name](e[:, v]).float(), y[:, j])
                     for j, name in enumerate(model.targets) for v in range(2))
            ce = ce / (2 * len(model.targets))
            loss = ce + cfg.ssl_weight * supcon_loss(e, t["joint"][sel], cfg.temperature)
            parts.append(loss.detach())
            total = total + loss
        return total, torch.stack(parts)


def intra_loop(config: dict[str, Any]) -> None:
    """Ray Train worker loop of the intra stage."""
    import ray.train
    import ray.train.torch

    cfg = IntraStageConfig.model_validate(config["cfg"])
    meta = config["meta"]
    rank, world, device = context()
    torch.manual_seed(cfg.seed * 1009 + rank)
    model = JMMLModel.from_config(config["model_config"]).to(device)
    restored = restore(model, device)
    if restored is None:                     # standardisers from the train split's sums
        sums = {m: torch.zeros(3, model.encoders[m].norm.mean.numel(), dtype=torch.float64,
                               device=device) for m in model.modalities}
        for batch in ray.train.get_dataset_shard("train").iter_batches(
                batch_size=256, batch_format="numpy"):
            t = tensors(batch, meta, device, model.targets)
            for m in model.modalities:
                sel = t[f"{m}_present"]
                if sel.any():
                    sums[m] += Standardizer.sums(t[model.features[m]][sel].flatten(1))
        for m in model.modalities:
            all_reduce(sums[m], world)
            model.encoders[m].norm.set_from_sums(sums[m])
    opt_state, start, history = restored or (None, 0, [])
    ddp = ray.train.torch.prepare_model(
        IntraObjective(model, cfg), parallel_strategy_kwargs={"find_unused_parameters": True})
    opt = torch.optim.AdamW(ddp.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    amp = device.type == "cuda"
    for epoch in range(start, cfg.epochs):
        ddp.train()
        sums = torch.zeros(len(model.modalities) + 1, dtype=torch.float64, device=device)
        n_steps = 0
        t0 = time.perf_counter()
        for batch in ray.train.get_dataset_shard("train").iter_batches(
                batch_size=cfg.batch_size, batch_format="numpy"):
            t = tensors(batch, meta, device, model.targets)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                loss, parts = ddp(t)
            optimizer_step(loss, opt)
            n_steps += 1
            sums += torch.cat([parts.double(), torch.ones(1, dtype=torch.float64,
                                                          device=device)])
        all_reduce(sums, world)
        metrics = _intra_val(model, meta, cfg, device, rank, world)
        metrics.update(epoch=epoch, resumed_from=start, train_seconds=time.perf_counter() - t0,
                       **count_steps(history, n_steps))
        for j, m in enumerate(model.modalities):
            metrics[f"train_loss_{m}"] = float(sums[j] / sums[-1].clamp_min(1))
        metrics["train_loss"] = float(sums[:-1].sum() / sums[-1].clamp_min(1))
        history.append(metrics)
        if rank == 0:
            progress("intra", epoch, cfg.epochs, metrics, ["steps", "train_loss", "val_f1"] +
                      [f"val_f1_{m}" for m in model.modalities])
        report(metrics, rank=rank, model=model, model_config=model.config(), meta=meta,
               label_names=model.targets, stage=STAGE.name, servable=STAGE.servable, extra=bundle_extra(model),
               train_state={"optimizer": opt.state_dict(), "epoch": epoch,
                            "history": history})


def _intra_val(model: JMMLModel, meta, cfg, device, rank, world) -> dict[str, float]:
    """Per modality x target confusion of the heads on the whole val split (each rank
    scores its hash-share of the records; counts summed)."""
    import ray.train

    model.eval()
    n_t = len(model.targets)
    conf = torch.zeros(len(model.modalities), n_t, 2, 2, dtype=torch.float64, device=device)
    with torch.no_grad():
        for batch in ray.train.get_dataset_shard("val").iter_batches(
                batch_size=256, batch_format="numpy"):
            keep = mine(batch["record_id"], rank, world)
            if not keep.any():
                continue
            t = tensors({k: v[keep] for k, v in batch.items()}, meta, device, model.targets)
            for i, m in enumerate(model.modalities):
                e = model.encoders[m](t[model.features[m]]).float()
                for j, name in enumerate(model.targets):
                    sel = t[f"{m}_present"] & (t["y"][:, j] >= 0)
                    if sel.any():
                        pred = model.encoders[m].heads[name](e[sel]).argmax(1)
                        conf[i, j] += confusion(t["y"][sel, j], pred, 2)
    all_reduce(conf, world)
    model.train()
    out: dict[str, float] = {}
    for i, m in enumerate(model.modalities):
        for j, name in enumerate(model.targets):
            out[f"val_f1_{m}_{name}"] = macro_f1(conf[i, j])
        out[f"val_f1_{m}"] = float(np.mean([out[f"val_f1_{m}_{n}"] for n in model.targets]))
    out["val_f1"] = float(np.mean([out[f"val_f1_{m}"] for m in model.modalities]))
    return out


def reported_metrics(cfg: IntraStageConfig) -> set[str]:
    return {"train_loss", "val_f1", *(f"train_loss_{m}" for m in cfg.modalities),
            *(f"val_f1_{m}" for m in cfg.modalities),
            *(f"val_f1_{m}_{t}" for m in cfg.modalities for t in cfg.targets)}


def _preflight(features: Path, cfg: IntraStageConfig, plan: dict[str, Any]) -> None:
    preflight_intra(features, cfg)


STAGE = register_stage(Stage("intra", train=train_intra, loop=intra_loop, model="jmml",
                     metrics=reported_metrics, preflight=_preflight))
