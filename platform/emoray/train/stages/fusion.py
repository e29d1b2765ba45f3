"""The attention-fusion stage on Ray Train (METHODS.md B): EEG (eegformer) + speech (ast) + video (vit).

:func:`train_fusion` is the driver: it checks the inputs before any worker starts, splits
the feature shards within subject (METHODS.md: per subject and class, the first 70 % of
trials train with all their segments, the rest validate) with Ray Data filters, and fits a
:class:`~ray.train.torch.TorchTrainer` whose workers run :func:`train_loop`. Every epoch
reports fused and per-modality validation metrics and a checkpoint bundle
(:mod:`emoray.bundle`) that alone rebuilds the model and its preprocessing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emoray.config import SplitConfig
from emoray.config.train import FusionStageConfig
from emoray.config.contract import PreprocessContract
from emoray.console import remote_echo
from emoray.data.features import batch_to_tensors, feature_metadata
from emoray.data.shards import shard_files
from emoray.errors import DataError
from emoray.data.subject_norm import STATS_FILE, SubjectStats, normalize, stats_of_features
from emoray.models import FusionModel
from emoray.models.fusion_model import input_column
from emoray.models.losses import gaussian_noise
from emoray.train.loop import (all_reduce, count_steps, fit_stage, mine, optimizer_step,
                               report, restore, scheduled_lr)
from emoray.train.metrics import confusion, macro_f1
from emoray.train.split import (check_columns, inner_split, split_datasets, split_records,
                                unseen_subject_records)
from emoray.train.stages.base import Stage, register_stage

__all__ = ["train_fusion", "train_loop"]

def train_fusion(features: str | Path, run_dir: str | Path, cfg: FusionStageConfig,
                 name: str = "fusion", split: SplitConfig | None = None) -> dict[str, Any]:
    """Train the fusion stage on Ray Train; return metrics and the checkpoint path.

    Running again with the same ``run_dir`` and ``name`` resumes from the run's latest
    checkpoint (Ray Train V2 resumes by name and storage path).

    Parameters
    ----------
    features : str | Path
        A preprocess output folder.
    run_dir : str | Path
        Storage root; the Ray Train run is ``run_dir/name``.
    cfg : FusionStageConfig
        The stage settings (a dict is validated).
    name : str
        The Ray Train run name.
    split : SplitConfig | None
        Which records train and which validate (default: within-subject).

    Raises
    ------
    DataError
        ``features`` is not a folder of feature shards, a modality the config needs is
        absent from every shard, or the split leaves train or val empty.
    ConfigError
        An invalid config, e.g. an unknown encoder preset.
    """
    if not isinstance(cfg, FusionStageConfig):
        cfg = FusionStageConfig.from_dict(cfg)
    features = Path(features).resolve()
    meta = feature_metadata(features)
    files = shard_files(features)
    check_columns(files, dict(zip(cfg.modalities, feature_columns(meta, cfg.modalities,
                                                                   cfg.architectures))),
                  "fusion")
    contract = PreprocessContract.from_json(json.dumps(meta["contract"]),
                                            source=f"{features} contract")
    label_names = list(meta.get("label_names") or [])
    if len(label_names) < 2:
        raise DataError(str(features), f"label_names {label_names}: need >= 2 classes",
                        kind="label")
    model = FusionModel.from_contract(contract, n_classes=len(label_names), cfg=cfg)
    train_ids, val_ids = split_records(files, split, str(features))
    fit_ids, inner_ids = (inner_split(files, train_ids, cfg.inner_fraction, str(features))
                          if "inner" in (cfg.select_epoch, cfg.fuse_weights)
                          else (train_ids, set()))
    columns = ["record_id", "subject", "label"] + feature_columns(meta, cfg.modalities,
                                                                  cfg.architectures)
    datasets = split_datasets(features, columns, fit_ids, val_ids, cfg.materialize,
                              inner_ids=inner_ids)
    # statistics of the train split (inner records included: labels unused); a held-out
    # subject is normalised with the pooled statistics, as an uncalibrated user would be,
    # or with ``calibrate_unseen`` with its own records' (labels unused), as a calibrated
    # one; validation records of training subjects never enter
    stats = None
    if cfg.subject_norm:
        fitted = stats_of_features(features, cfg.subject_norm, train_ids)
        calibration = (unseen_subject_records(files, train_ids, val_ids)
                       if cfg.calibrate_unseen else set())
        if calibration:                      # pooled statistics stay the train split's
            own = stats_of_features(features, cfg.subject_norm, calibration)
            for subject in own.subjects:
                fitted = fitted.adopt(subject, own)
        stats = fitted.to_bytes()
    loop_config = {"cfg": cfg.model_dump(mode="json"), "meta": meta,
                   "model_config": model.config(), "label_names": label_names,
                   "subject_stats": stats}
    # val is read whole by every rank (each scores its share of batches): no rows lost
    out = fit_stage(train_loop, loop_config, cfg, datasets, run_dir, name,
                    datasets_to_split=["train"])
    return {**out, "n_train": len(fit_ids), "n_val": len(val_ids), "n_inner": len(inner_ids)}


def feature_columns(meta: dict[str, Any], modalities: list[str],
                    architectures: dict[str, str] | None = None) -> list[str]:
    """The shard columns the encoders of ``modalities`` read (``architectures``: modality
    -> encoder name, default :data:`~emoray.models.ENCODER_OF`)."""
    return [_stored(meta, input_column(m, (architectures or {}).get(m))) for m in modalities]


def model_columns(meta: dict[str, Any], model: FusionModel) -> list[str]:
    """The shard columns a built fusion model's encoders read."""
    return [_stored(meta, model.columns[m]) for m in model.modalities]


def _stored(meta: dict[str, Any], column: str) -> str:
    return ("video_f32" if column == "video" and meta.get("video_storage") == "float32"
            else column)


# -- worker loop ----------------------------------------------------------------------------

def train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker loop of the fusion stage (see the module docstring)."""
    import ray.train
    import ray.train.torch

    cfg = FusionStageConfig.model_validate(config["cfg"])
    meta, label_names = config["meta"], config["label_names"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed + rank)
    device = ray.train.torch.get_device()
    model = FusionModel.from_config(config["model_config"])
    stats_bytes = config.get("subject_stats")
    if stats_bytes:
        model.subject_stats = SubjectStats.from_bytes(stats_bytes)
    files = {STATS_FILE: stats_bytes} if stats_bytes else None
    mixer = np.random.default_rng(cfg.seed * 7919 + rank)
    noiser = torch.Generator().manual_seed(cfg.seed * 7919 + rank)   # feature_noise
    kept: dict[str, Any] = {}
    restored = restore(model, device, extra=kept)  # own restart or a re-run of the same name
    optimizer_state, start_epoch, history = restored or (None, 0, [])
    ddp = ray.train.torch.prepare_model(
        model, parallel_strategy_kwargs={"find_unused_parameters": True})
    raw: FusionModel = ddp.module if hasattr(ddp, "module") else ddp
    opt = torch.optim.AdamW(ddp.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
    amp = device.type == "cuda"
    resumed_from = start_epoch
    select = cfg.select_epoch == "inner"
    use_inner = select or cfg.fuse_weights == "inner"
    best = kept.get("selected") if select else None   # the inner-split choice so far
    for epoch in range(start_epoch, cfg.epochs):
        ddp.train()
        lr = scheduled_lr(cfg.lr, epoch, cfg.epochs, cfg.warmup_epochs, cfg.schedule)
        for group in opt.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros(2, dtype=torch.float64, device=device)   # (sum, count)
        n_steps = 0
        t_epoch = time.perf_counter()
        shuffle = ({"local_shuffle_buffer_size": cfg.shuffle_buffer,
                    "local_shuffle_seed": cfg.seed * 100_003 + epoch * 101 + rank}
                   if cfg.shuffle_buffer else {})
        for batch in ray.train.get_dataset_shard("train").iter_batches(
                batch_size=cfg.batch_size, batch_format="numpy", **shuffle):
            t = _labelled(_tensors(batch, meta, device, raw))
            if t is None:
                continue
            if cfg.feature_noise:
                _add_noise(t, cfg.feature_noise, noiser)
            mix = _mixup(t, raw, cfg.mixup, mixer) if cfg.mixup > 0 else None
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                out = ddp(t)
            loss, _ = raw.fusion.loss(out, t["label"], aux_weight=cfg.aux_weight, mix=mix)
            optimizer_step(loss, opt, ddp.parameters(), cfg.grad_clip)
            n_steps += 1
            loss_sum += torch.tensor([float(loss.detach()) * len(t["label"]), len(t["label"])],
                                     dtype=torch.float64, device=device)
        train_seconds = time.perf_counter() - t_epoch
        metrics = _evaluate(raw, meta, cfg, device, rank, world, len(label_names), amp)
        if use_inner:
            best = _select(raw, metrics, best, epoch, cfg,
                           lambda split: _evaluate(raw, meta, cfg, device, rank, world,
                                                   len(label_names), amp, split=split),
                           lambda: _fit_expert_weights(raw, meta, cfg, device, rank, world,
                                                       amp))
        all_reduce(loss_sum, world)
        metrics.update(epoch=epoch, lr=lr,
                       train_loss=float(loss_sum[0] / loss_sum[1].clamp_min(1)),
                       train_samples=int(loss_sum[1]), train_seconds=train_seconds,
                       resumed_from=resumed_from, **count_steps(history, n_steps))
        history.append(metrics)
        if rank == 0:
            parts = " ".join(f"{k}={v:.3f}" for k, v in metrics.items()
                             if k.startswith("val_acc") or k == "val_f1")
            remote_echo(f"[fusion] epoch {epoch + 1}/{cfg.epochs} steps={metrics['steps']} "
                        f"loss={metrics['train_loss']:.4f} {parts}")
        state = {"optimizer": opt.state_dict(), "epoch": epoch, "history": history}
        if best is not None:                 # a restarted run goes on choosing
            state["selected"] = best
        report(metrics, rank=rank, model=raw, model_config=raw.config(), meta=meta,
               label_names=label_names, stage=STAGE.name, servable=STAGE.servable,
               files=files, train_state=state)


def _select(model: FusionModel, metrics: dict[str, Any], best: dict[str, Any] | None,
            epoch: int, cfg: FusionStageConfig, score, fit_weights) -> dict[str, Any]:
    """Score this epoch on the inner split (``score(split) -> metrics``); under
    ``select_epoch: inner`` keep its weights if it is the best so far (ties: the earlier
    epoch). At the last epoch load the best weights, under ``fuse_weights: inner`` fit
    the experts' weights on the inner split (``fit_weights() -> weights``), and report
    the validation metrics of the shipped model in ``metrics``."""
    inner = score("inner")["val_acc"]
    metrics["inner_acc"] = inner
    if cfg.select_epoch == "inner" and (best is None or inner > best["acc"]):
        best = {"epoch": epoch, "acc": inner,
                "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
    if epoch == cfg.epochs - 1:
        changed = best is not None and best["epoch"] != epoch
        if changed:
            model.load_state_dict(best["state"])
        if cfg.fuse_weights == "inner":
            weights = fit_weights()
            metrics.update({f"expert_weight_{name}": float(w) for name, w in
                            zip(["head", *model.modalities], weights)})
            metrics["inner_acc_weighted"] = score("inner")["val_acc"]
            changed = True
        if changed:
            metrics.update(score("val"))
    if best is not None:
        metrics["selected_epoch"] = best["epoch"]
    return best


def _fit_expert_weights(model: FusionModel, meta, cfg, device, rank, world,
                        amp) -> torch.Tensor:
    """The fused model's expert weights fitted on the whole inner split: each rank scores
    its hash-share of the records, every rank fits on all of them (same rows, same order,
    deterministic L-BFGS: the same weights everywhere)."""
    import ray.train

    from emoray.train.loop import all_gather_objects

    model.eval()
    local: dict[str, list] = {"ids": [], "head": [], "kept": [], "y": [],
                              **{f"aux_{m}": [] for m in model.modalities}}
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        for batch in ray.train.get_dataset_shard("inner").iter_batches(
                batch_size=cfg.batch_size, batch_format="numpy"):
            keep = mine(batch["record_id"], rank, world)
            if not keep.any():
                continue
            labelled = keep & (np.asarray(batch["label"], dtype=float) >= 0)  # None: nan
            if not labelled.any():
                continue
            rows = {k: v[labelled] for k, v in batch.items()}
            t = _tensors(rows, meta, device, model)
            out = model(t)
            local["ids"] += [str(r) for r in rows["record_id"]]
            local["head"].append(out.head_logits.float().cpu())
            local["kept"].append(out.kept.cpu())
            local["y"].append(t["label"].cpu())
            for m in model.modalities:
                a = out.aux_logits.get(m)
                local[f"aux_{m}"].append(a.float().cpu() if a is not None
                                         else torch.zeros_like(out.head_logits.float().cpu()))
    parts = all_gather_objects(local, world)
    ids = [r for p in parts for r in p["ids"]]
    order = torch.from_numpy(np.argsort(np.array(ids, dtype=object), kind="stable"))
    cat = {k: torch.cat([c for p in parts for c in p[k]])[order] for k in local if k != "ids"}
    model.train()
    return model.fusion.fit_expert_weights(
        cat["head"], {m: cat[f"aux_{m}"] for m in model.modalities}, cat["kept"], cat["y"])


def _tensors(batch: dict[str, np.ndarray], meta: dict[str, Any], device,
             model: FusionModel) -> dict[str, torch.Tensor]:
    """The batch's tensors, standardised with each row's subject's statistics."""
    return normalize(batch_to_tensors(batch, meta, device), model, batch.get("subject"))


def _add_noise(t: dict[str, torch.Tensor], stds: dict[str, float],
               generator: torch.Generator) -> None:
    """Add Gaussian noise of ``stds[column]`` to each named column of ``t`` in place
    (:func:`~emoray.models.losses.gaussian_noise`, drawn from ``generator``, so a seed
    replays it)."""
    for column, std in stds.items():
        if column in t and std > 0:
            t[column] = gaussian_noise(t[column], std, generator)


def _mixup(t: dict[str, torch.Tensor], model: FusionModel, alpha: float,
           rng: np.random.Generator) -> tuple[torch.Tensor, float]:
    """Mix every row of ``t`` with a random other row in place (each modality's input and
    presence); returns mixup's second labels and weight for the loss."""
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(len(t["label"]))).to(t["label"].device)
    for m, key in model.columns.items():
        if key in t:
            t[key] = lam * t[key] + (1.0 - lam) * t[key][perm]
        if f"{m}_present" in t:
            t[f"{m}_present"] = t[f"{m}_present"] | t[f"{m}_present"][perm]
    return t["label"][perm], lam


def _labelled(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """Drop rows without a label; None if none is left."""
    keep = t["label"] >= 0
    if not keep.any():
        return None
    if keep.all():
        return t
    return {k: v[keep] for k, v in t.items()}


def _evaluate(model: FusionModel, meta, cfg, device, rank, world, n_classes, amp,
              split: str = "val") -> dict:
    """Fused and per-modality confusion matrices over the whole ``split`` (val, or the
    inner split): every rank reads it and scores the records whose id hash falls to it;
    counts are summed across ranks (keys ``val_*`` whichever the split)."""
    import ray.train

    model.eval()
    names = ["fused"] + list(model.modalities)
    conf = torch.zeros(len(names), n_classes, n_classes, dtype=torch.float64, device=device)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        batches = ray.train.get_dataset_shard(split).iter_batches(
            batch_size=cfg.batch_size, batch_format="numpy")
        for batch in batches:
            keep = mine(batch["record_id"], rank, world)
            if not keep.any():
                continue
            t = _labelled(_tensors({k: v[keep] for k, v in batch.items()}, meta, device,
                                   model))
            if t is None:
                continue
            scores = model.scores(t)
            for j, name in enumerate(names):
                if name in scores:
                    logits, rows = scores[name]
                    conf[j] += confusion(t["label"][rows], logits.argmax(1), n_classes)
    all_reduce(conf, world)
    model.train()
    total = float(conf[0].sum())
    out = {"val_acc": float(conf[0].diag().sum()) / max(total, 1.0), "val_f1": macro_f1(conf[0]),
           "val_n": int(total)}
    for j, m in enumerate(model.modalities, start=1):
        n = float(conf[j].sum())
        out[f"val_acc_{m}"] = float(conf[j].diag().sum()) / max(n, 1.0)
        out[f"val_f1_{m}"] = macro_f1(conf[j])
        out[f"val_n_{m}"] = int(n)
    return out


def reported_metrics(cfg: FusionStageConfig) -> set[str]:
    per = [f"val_{k}_{m}" for m in cfg.modalities for k in ("acc", "f1", "n")]
    return {"train_loss", "val_acc", "val_f1", "val_n", *per}


def preflight(features: Path, cfg: FusionStageConfig, plan: dict[str, Any]) -> None:
    """The feature columns are there and the model builds from the features' contract."""
    meta = feature_metadata(features)
    check_columns(shard_files(features),
                  dict(zip(cfg.modalities, feature_columns(meta, cfg.modalities,
                                                           cfg.architectures))), "fusion")
    contract = PreprocessContract.from_json(json.dumps(meta["contract"]),
                                            source=f"{features} contract")
    FusionModel.from_contract(contract, n_classes=max(2, len(meta.get("label_names") or [])),
                              cfg=cfg)


STAGE = register_stage(Stage("fusion", train=train_fusion, loop=train_loop, model="fusion",
                     metrics=reported_metrics, preflight=preflight,
                     servable=True))
