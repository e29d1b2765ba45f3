"""JMML on Ray Train (METHODS.md section A): ``intra`` (JEC-SSL), ``inter`` (E-DCC-CAE),
``classifier`` (logistic regression on the inference representations).

Every stage is a driver (``train_<stage>``) that checks its inputs before any worker starts
and fits a :class:`~ray.train.torch.TorchTrainer` through :func:`~emoray.train.runner.fit_stage`;
each stage's bundle feeds the next (``from_checkpoint``, or the plan passes it on).

* ``intra`` trains the speech and the EEG encoder concurrently in one worker group (two
  independent models under one DDP wrapper): ``CE(head_t(e), y_t)`` summed over the targets
  plus ``ssl_weight * SupCon`` over two augmented views (feature masking + Gaussian noise in
  standardised feature space), the joint label of all targets defining the positives.
* ``inter`` freezes the encoders, embeds every record once (each rank a hash-share of the
  records, gathered), and trains the E-DCC-CAE on pairs drawn every epoch: the natural
  (speech, EEG) pairs of parallel data, or, for non-parallel data (no record with both),
  every speech sample with a random EEG sample of the same joint label, drawn afresh each
  epoch. Each epoch probes the three inference paths with logistic regressions fitted on the
  train embeddings (``val_f1_speech_only`` ... for Ray Tune).
* ``classifier`` fits the final logistic regressions on exactly the inference
  representations, plus the ablation baselines (raw features, JEC-SSL embeddings), and
  writes the servable bundle.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from emoray.config import SplitConfig
from emoray.data.features import batch_to_tensors, feature_metadata
from emoray.data.shards import shard_files
from emoray.errors import ConfigError, DataError
from emoray.models.jmml_model import JMML_MODALITIES, JMMLModel, Standardizer, joint_label
from emoray.models.losses import feature_mask, gaussian_noise, supcon_loss
from emoray.train.checkpoint import check_contract, read_bundle_meta
from emoray.train.runner import (StageCommon, all_reduce, check_columns, confusion,
                                 fit_stage, macro_f1, mine, non_null_columns, report,
                                 restore, split_datasets, split_records)

SPEECH_FEATURE = "audio_stats"
TARGETS = ("valence", "arousal")


class IntraStageConfig(StageCommon):
    """JEC-SSL: one MLP encoder per modality, class + supervised contrastive loss."""

    modalities: list[str] = Field(default_factory=lambda: ["speech", "eeg"])
    targets: list[str] = Field(default_factory=lambda: list(TARGETS))
    eeg_feature: Literal["eeg_de", "eeg_bp"] = "eeg_de"
    encoders: dict[str, str] = Field(default_factory=lambda: {"speech": "tiny", "eeg": "tiny"})
    ssl_weight: float = Field(1.0, ge=0)
    temperature: float = Field(0.1, gt=0)
    mask_p: float = Field(0.2, ge=0, lt=1)
    noise_std: float = Field(0.1, ge=0)
    epochs: int = Field(20, gt=0)
    batch_size: int = Field(32, gt=1)

    @field_validator("modalities")
    @classmethod
    def _modalities(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v) or any(m not in JMML_MODALITIES for m in v):
            raise ValueError(f"expected distinct modalities from {list(JMML_MODALITIES)}, "
                             f"got {v}")
        return v

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v) or any(t not in TARGETS for t in v):
            raise ValueError(f"expected distinct targets from {list(TARGETS)}, got {v}")
        return v


class InterStageConfig(StageCommon):
    """E-DCC-CAE: ``-corr + alpha L_self + beta L_cross + gamma L_cls`` (METHODS.md)."""

    k: int = Field(8, gt=0, description="common-space size")
    hidden: int = Field(64, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    alpha: float = Field(0.1, ge=0)
    beta: float = Field(0.1, ge=0)
    gamma: float = Field(0.5, ge=0)
    cca_reg: float = Field(1e-3, gt=0)
    top_o: int | None = Field(None, gt=0)
    pairing: Literal["auto", "natural", "label"] = "auto"
    l2: float = Field(1e-2, ge=0, description="ridge of the per-epoch logistic probes")
    from_checkpoint: str | None = Field(None, description="an intra bundle (default: the "
                                        "plan's intra stage)")
    epochs: int = Field(30, gt=0)
    batch_size: int = Field(64, gt=1)

    @model_validator(mode="after")
    def _dcca_batch(self):
        if self.batch_size <= self.k + 1:
            raise ValueError(f"batch_size ({self.batch_size}) must exceed k + 1 "
                             f"({self.k + 1}): DCCA estimates k x k covariances per batch")
        if self.top_o is not None and self.top_o > self.k:
            raise ValueError(f"top_o ({self.top_o}) must be <= k ({self.k})")
        return self


class ClassifierStageConfig(StageCommon):
    """Logistic regressions on the inference representations (and ablation baselines)."""

    l2: float = Field(1e-2, ge=0)
    balanced: bool = True
    max_iter: int = Field(200, gt=0)
    from_checkpoint: str | None = Field(None, description="an inter bundle (default: the "
                                        "plan's inter stage)")
    epochs: int = Field(1, ge=1, le=1, description="one pass: fit, score, save")
    num_workers: int = Field(1, gt=0)


# -- drivers ------------------------------------------------------------------------------

def _columns(features: dict[str, str], targets: list[str]) -> list[str]:
    return ["record_id"] + [f"{t}_high" for t in targets] + list(features.values())


def _check_targets(files: list[Path], targets: list[str], stage: str) -> None:
    cols = [f"{t}_high" for t in targets]
    missing = [c for c in cols if c not in non_null_columns(files, cols)]
    if missing:
        raise DataError(str(files[0].parent), f"the {stage} stage needs binary labels "
                        f"{cols}, but {missing} is null in every shard (does the dataset "
                        f"carry valence/arousal?)", kind="label", field=missing[0])


def preflight_intra(features: Path, cfg: IntraStageConfig) -> dict[str, Any]:
    """Check the shards for the intra stage; return ``(meta, files, JMMLModel config)``."""
    meta = feature_metadata(features)
    files = shard_files(features)
    cols = {m: SPEECH_FEATURE if m == "speech" else cfg.eeg_feature for m in cfg.modalities}
    check_columns(files, cols, "intra")
    _check_targets(files, cfg.targets, "intra")
    for m in cfg.modalities:
        from emoray.models import encoder_class

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
    datasets = split_datasets(features, _columns(cols, cfg.targets), train_ids, val_ids,
                              cfg.materialize)
    loop_config = {"cfg": cfg.model_dump(mode="json"), "meta": pre["meta"],
                   "model_config": pre["model_config"]}
    out = fit_stage(intra_loop, loop_config, cfg, datasets, run_dir, name,
                    datasets_to_split=["train"])
    return {**out, "n_train": len(train_ids), "n_val": len(val_ids)}


def _init_bundle(init: str | None, expected: tuple[str, ...], stage: str,
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


def preflight_inter(features: Path, cfg: InterStageConfig) -> dict[str, Any]:
    meta = feature_metadata(features)
    files = shard_files(features)
    return {"meta": meta, "files": files}


def train_inter(features: str | Path, run_dir: str | Path, cfg: InterStageConfig,
                name: str = "inter", split: SplitConfig | None = None,
                init: str | None = None) -> dict[str, Any]:
    """Train the E-DCC-CAE on frozen JEC-SSL embeddings; ``init`` is the intra bundle
    (``cfg.from_checkpoint`` wins)."""
    cfg = cfg if isinstance(cfg, InterStageConfig) else InterStageConfig.from_dict(cfg)
    features = Path(features).resolve()
    pre = preflight_inter(features, cfg)
    init = cfg.from_checkpoint or init
    bundle = _init_bundle(init, ("intra",), "inter", pre["meta"])
    model_config = dict(bundle["model_config"])
    cols = model_config["features"]
    if set(cols) != set(JMML_MODALITIES):
        raise ConfigError(f"stages.inter: the intra bundle {init} has encoders for "
                          f"{sorted(cols)}; E-DCC-CAE needs speech and eeg")
    check_columns(pre["files"], cols, "inter")
    model_config["cae"] = {"k": cfg.k, "hidden": cfg.hidden, "dropout": cfg.dropout}
    train_ids, val_ids = split_records(pre["files"], split, str(features))
    datasets = split_datasets(features, _columns(cols, model_config["targets"]), train_ids,
                              val_ids, cfg.materialize)
    loop_config = {"cfg": cfg.model_dump(mode="json"), "meta": pre["meta"],
                   "model_config": model_config, "init": str(Path(init).resolve())}
    from emoray.train.jmml_inter import inter_loop

    out = fit_stage(inter_loop, loop_config, cfg, datasets, run_dir, name,
                    datasets_to_split=[])
    return {**out, "n_train": len(train_ids), "n_val": len(val_ids)}


def train_classifier(features: str | Path, run_dir: str | Path, cfg: ClassifierStageConfig,
                     name: str = "classifier", split: SplitConfig | None = None,
                     init: str | None = None) -> dict[str, Any]:
    """Fit the logistic regressions of the inference paths; ``init`` is the inter bundle."""
    cfg = cfg if isinstance(cfg, ClassifierStageConfig) else \
        ClassifierStageConfig.from_dict(cfg)
    features = Path(features).resolve()
    meta = feature_metadata(features)
    files = shard_files(features)
    init = cfg.from_checkpoint or init
    bundle = _init_bundle(init, ("inter",), "classifier", meta)
    model_config = dict(bundle["model_config"])
    cols = model_config["features"]
    check_columns(files, cols, "classifier")
    train_ids, val_ids = split_records(files, split, str(features))
    datasets = split_datasets(features, _columns(cols, model_config["targets"]), train_ids,
                              val_ids, cfg.materialize)
    loop_config = {"cfg": cfg.model_dump(mode="json"), "meta": meta,
                   "model_config": model_config, "init": str(Path(init).resolve())}
    from emoray.train.jmml_inter import classifier_loop

    out = fit_stage(classifier_loop, loop_config, cfg, datasets, run_dir, name,
                    datasets_to_split=[])
    return {**out, "n_train": len(train_ids), "n_val": len(val_ids)}


# -- worker helpers ------------------------------------------------------------------------

def _context():
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device()


def _tensors(batch, meta, device, targets: list[str]) -> dict[str, torch.Tensor]:
    t = batch_to_tensors(batch, meta, device)
    t["y"] = torch.stack([t[f"{x}_high"] for x in targets], 1)      # (B, n_targets)
    t["joint"] = joint_label(t["y"])                                 # (B,)
    return t


def _bundle_extra(model: JMMLModel) -> dict[str, Any]:
    return {"targets": model.targets, "target_classes": ["low", "high"],
            "features": model.features}


def _progress(stage: str, epoch: int, epochs: int, metrics: dict[str, Any],
              keys: list[str]) -> None:
    shown = " ".join(f"{k}={metrics[k]:.3f}" for k in keys if k in metrics)
    print(f"[{stage}] epoch {epoch + 1}/{epochs} {shown}", flush=True)


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
    rank, world, device = _context()
    torch.manual_seed(cfg.seed * 1009 + rank)
    model = JMMLModel.from_config(config["model_config"]).to(device)
    restored = restore(model, device)
    if restored is None:                     # standardisers from the train split's sums
        sums = {m: torch.zeros(3, model.encoders[m].norm.mean.numel(), dtype=torch.float64,
                               device=device) for m in model.modalities}
        for batch in ray.train.get_dataset_shard("train").iter_batches(
                batch_size=256, batch_format="numpy"):
            t = _tensors(batch, meta, device, model.targets)
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
        t0 = time.perf_counter()
        for batch in ray.train.get_dataset_shard("train").iter_batches(
                batch_size=cfg.batch_size, batch_format="numpy"):
            t = _tensors(batch, meta, device, model.targets)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                loss, parts = ddp(t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += torch.cat([parts.double(), torch.ones(1, dtype=torch.float64,
                                                          device=device)])
        all_reduce(sums, world)
        metrics = _intra_val(model, meta, cfg, device, rank, world)
        metrics.update(epoch=epoch, resumed_from=start, train_seconds=time.perf_counter() - t0)
        for j, m in enumerate(model.modalities):
            metrics[f"train_loss_{m}"] = float(sums[j] / sums[-1].clamp_min(1))
        metrics["train_loss"] = float(sums[:-1].sum() / sums[-1].clamp_min(1))
        history.append(metrics)
        if rank == 0:
            _progress("intra", epoch, cfg.epochs, metrics, ["train_loss", "val_f1"] +
                      [f"val_f1_{m}" for m in model.modalities])
        report(metrics, rank=rank, model=model, model_config=model.config(), meta=meta,
               label_names=model.targets, stage="intra", extra=_bundle_extra(model),
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
            t = _tensors({k: v[keep] for k, v in batch.items()}, meta, device, model.targets)
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
