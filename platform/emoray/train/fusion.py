"""Attention-fusion stage on Ray Train: EEG (eegformer) + speech (ast) + video (vit).

:func:`train_fusion` is the driver: it checks the inputs before any worker starts, splits
the feature shards within subject (METHODS.md: per subject and class, the first 70 % of
segments by record order train, the rest validate) with Ray Data filters, and fits a
:class:`~ray.train.torch.TorchTrainer` whose workers run :func:`train_loop`. Every epoch
reports fused and per-modality validation metrics and a checkpoint bundle
(:mod:`emoray.train.checkpoint`) that alone rebuilds the model and its preprocessing.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import nn

from emoray.data.contract import PreprocessContract
from emoray.data.features import batch_to_tensors, feature_metadata, read_features
from emoray.data.shards import shard_files
from emoray.errors import ConfigError, DataError
from emoray.models import AttentionFusion, FusionOutput, create_encoder, encoder_class
from emoray.train.checkpoint import TRAIN_STATE_FILE, MODEL_FILE, save_bundle

#: modality -> (encoder name, feature column it reads)
ENCODER_OF = {"eeg": ("eegformer", "eeg"), "speech": ("ast", "logmel"),
              "video": ("vit", "video")}
TRAIN_FRACTION = 0.7
_ID_COLUMNS = ["record_id", "subject", "session", "trial", "segment", "label"]


class FusionStageConfig(BaseModel):
    """Settings of the fusion stage (YAML overlay of a training plan)."""

    model_config = ConfigDict(extra="forbid")

    modalities: list[str] = Field(default_factory=lambda: ["eeg", "speech", "video"])
    encoders: dict[str, str] = Field(
        default_factory=lambda: {"eeg": "tiny", "speech": "tiny", "video": "tiny"})
    dim: int = Field(64, gt=0)
    heads: int = Field(4, gt=0)
    layers: int = Field(2, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    modality_dropout: float = Field(0.2, ge=0, lt=1)
    aux_weight: float = Field(0.3, ge=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(16, gt=0)
    num_workers: int = Field(2, gt=0)
    cpus_per_worker: float = Field(0.5, gt=0)     # RAY.md trap 2: leave CPUs to Ray Data
    use_gpu: bool | None = None                   # None: torch.cuda.is_available()
    seed: int = 0
    max_failures: int = Field(1, ge=-1)
    controller_failure_limit: int = Field(-1, ge=-1)  # tests: 0 (RAY.md trap 4)
    materialize: bool = False    # cache the split datasets in the object store (small data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FusionStageConfig":
        """Validate ``data``; problems raise :class:`ConfigError` naming each field."""
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            bad = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}"
                            for e in err.errors())
            raise ConfigError(f"fusion stage config: {bad}") from None

    @field_validator("modalities")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in ENCODER_OF]
        if bad or not v or len(set(v)) != len(v):
            raise ValueError(f"expected a non-empty list of distinct modalities from "
                             f"{list(ENCODER_OF)}, got {v}")
        return v


class FusionModel(nn.Module):
    """Per-modality encoders + :class:`~emoray.models.AttentionFusion` over their tokens.

    Parameters
    ----------
    encoders : dict[str, dict]
        Per modality ``{"name", "preset", "kwargs"}`` for :func:`create_encoder`.
    fusion : dict
        Keyword arguments of :class:`AttentionFusion` except ``modality_dims``.
    """

    def __init__(self, encoders: dict[str, dict[str, Any]], fusion: dict[str, Any]):
        super().__init__()
        self._config = {"encoders": json.loads(json.dumps(encoders)), "fusion": dict(fusion)}
        self.modalities = list(encoders)
        self.encoders = nn.ModuleDict({
            m: create_encoder(e["name"], e["preset"], **e["kwargs"])
            for m, e in encoders.items()})
        dims = {m: enc.dim for m, enc in self.encoders.items()}
        self.fusion = AttentionFusion(dims, **fusion)

    @classmethod
    def from_contract(cls, contract: PreprocessContract, *, n_classes: int,
                      cfg: FusionStageConfig) -> "FusionModel":
        """Build the model for features made with ``contract`` (EEG channels named)."""
        n_chans = len(contract.eeg.channels or [])
        if "eeg" in cfg.modalities and n_chans == 0:
            raise ConfigError("contract.eeg.channels: the features' contract names no EEG "
                              "channels; cannot size the eegformer")
        shapes = contract.output_shapes(n_chans)
        contract_kwargs = {
            "eeg": dict(n_chans=n_chans, sfreq=contract.eeg.sfreq, n_times=shapes["eeg"][1]),
            "speech": dict(n_mels=contract.audio.n_mels, n_frames=shapes["logmel"][1]),
            "video": dict(n_frames=contract.video.n_frames, size=contract.video.size)}
        encoders = {}
        for m in cfg.modalities:
            name = ENCODER_OF[m][0]
            preset = cfg.encoders.get(m, "tiny")
            if preset not in encoder_class(name).presets:
                raise ConfigError(f"encoders.{m}: unknown preset {preset!r} for encoder "
                                  f"{name!r}; expected one of "
                                  f"{sorted(encoder_class(name).presets)}")
            encoders[m] = {"name": name, "preset": preset, "kwargs": contract_kwargs[m]}
        fusion = dict(n_classes=n_classes, dim=cfg.dim, heads=cfg.heads, layers=cfg.layers,
                      dropout=cfg.dropout, modality_dropout=cfg.modality_dropout,
                      aux_heads=cfg.aux_weight > 0)
        return cls(encoders, fusion)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "FusionModel":
        """Rebuild from :meth:`config` (as saved in a bundle)."""
        return cls(config["encoders"], config["fusion"])

    def config(self) -> dict[str, Any]:
        """JSON-able keyword arguments that rebuild this model."""
        return json.loads(json.dumps(self._config))

    def forward(self, batch: dict[str, torch.Tensor],
                modalities: list[str] | None = None) -> FusionOutput:
        """Fuse the modalities found in ``batch`` (as :func:`batch_to_tensors` makes it).

        A modality whose feature key is absent from ``batch`` (or not in ``modalities``)
        is left out; ``<modality>_present`` masks absent samples.
        """
        tokens, present = {}, {}
        for m in self.modalities:
            key = ENCODER_OF[m][1]
            if key not in batch or (modalities is not None and m not in modalities):
                continue
            tokens[m] = self.encoders[m](batch[key]).tokens              # (B, T_m, D_m)
            if f"{m}_present" in batch:
                present[m] = batch[f"{m}_present"]                      # (B,)
        return self.fusion(tokens, present=present)


# -- driver ---------------------------------------------------------------------------------

def train_fusion(features: str | Path, run_dir: str | Path, cfg: FusionStageConfig,
                 name: str = "fusion") -> dict[str, Any]:
    """Train the fusion stage on Ray Train; return metrics and the checkpoint path.

    Running again with the same ``run_dir`` and ``name`` resumes from the run's latest
    checkpoint (Ray Train V2 resumes by name and storage path).

    Raises
    ------
    DataError
        ``features`` is not a folder of feature shards, a modality the config needs is
        absent from every shard, or the within-subject split leaves train or val empty.
    ConfigError
        An invalid config, e.g. an unknown encoder preset.
    """
    from ray.train import (CheckpointConfig, DataConfig, FailureConfig, RunConfig,
                           ScalingConfig)
    from ray.train.torch import TorchTrainer

    if not isinstance(cfg, FusionStageConfig):
        cfg = FusionStageConfig.from_dict(cfg)
    features = Path(features).resolve()
    meta = feature_metadata(features)
    files = shard_files(features)
    _check_modalities(files, meta, cfg.modalities)
    contract = PreprocessContract.from_json(json.dumps(meta["contract"]),
                                            source=f"{features} contract")
    label_names = list(meta.get("label_names") or [])
    if len(label_names) < 2:
        raise DataError(str(features), f"label_names {label_names}: need >= 2 classes",
                        kind="label")
    model = FusionModel.from_contract(contract, n_classes=len(label_names), cfg=cfg)
    train_ids, val_ids = within_subject_split(files)
    if not train_ids or not val_ids:
        raise DataError(str(features), f"within-subject split gives {len(train_ids)} train "
                        f"and {len(val_ids)} val records; need both non-empty", kind="label")
    columns = ["record_id", "label"] + _feature_columns(meta, cfg.modalities)
    ds = read_features(features, columns=columns)
    datasets = {"train": _keep(ds, train_ids), "val": _keep(ds, val_ids)}
    if cfg.materialize:     # blocks go to the object store, not into the driver's memory
        datasets = {k: v.materialize() for k, v in datasets.items()}
    use_gpu = torch.cuda.is_available() if cfg.use_gpu is None else cfg.use_gpu
    loop_config = {"cfg": cfg.model_dump(mode="json"), "meta": meta,
                   "model_config": model.config(), "label_names": label_names}
    trainer = TorchTrainer(
        train_loop, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(
            name=name, storage_path=str(Path(run_dir).resolve()),
            failure_config=FailureConfig(max_failures=cfg.max_failures,
                                         controller_failure_limit=cfg.controller_failure_limit),
            checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets=datasets,
        # val is read whole by every rank (each scores its share of batches): no rows lost
        dataset_config=DataConfig(datasets_to_split=["train"]))
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"fusion run {name!r} finished without a checkpoint")
    return {"metrics": dict(result.metrics or {}), "checkpoint": result.checkpoint.path,
            "path": result.path, "n_train": len(train_ids), "n_val": len(val_ids)}


def within_subject_split(files: list[Path],
                         fraction: float = TRAIN_FRACTION) -> tuple[set[str], set[str]]:
    """Record ids of the within-subject split (reads the id columns only).

    Per (subject, label), records sorted by (session, trial, segment): the first
    ``round(fraction * n)`` (at least one) train, the rest validate. Unlabelled records
    (label null or < 0) are in neither.
    """
    table = pa.concat_tables([pq.read_table(f, columns=_ID_COLUMNS) for f in files])
    rows = table.to_pylist()
    groups: dict[tuple[str, int], list[tuple]] = {}
    for r in rows:
        if r["label"] is None or r["label"] < 0:
            continue
        key = (r["session"], r["trial"], int(r["segment"]), r["record_id"])
        groups.setdefault((r["subject"], int(r["label"])), []).append(key)
    train, val = set(), set()
    for keys in groups.values():
        keys.sort()
        n_train = min(len(keys), max(1, int(math.floor(fraction * len(keys) + 0.5))))
        train.update(k[-1] for k in keys[:n_train])
        val.update(k[-1] for k in keys[n_train:])
    return train, val


def _keep(ds, ids: set[str]):
    """Rows of ``ds`` whose ``record_id`` is in ``ids`` (vectorised, on the Ray Data side)."""
    return ds.map_batches(_filter_ids, fn_kwargs={"ids": sorted(ids)},
                          batch_format="pyarrow", zero_copy_batch=True)


def _filter_ids(batch: pa.Table, ids: list[str]) -> pa.Table:
    return batch.filter(pc.is_in(batch["record_id"], value_set=pa.array(ids, pa.string())))


def _feature_columns(meta: dict[str, Any], modalities: list[str]) -> list[str]:
    cols = []
    for m in modalities:
        col = ENCODER_OF[m][1]
        cols.append("video_f32" if col == "video" and meta.get("video_storage") == "float32"
                    else col)
    return cols


def _check_modalities(files: list[Path], meta: dict[str, Any], modalities: list[str]) -> None:
    """Raise DataError for a needed modality that is null in every row of every shard
    (read from the Parquet statistics; no signal is loaded)."""
    columns = _feature_columns(meta, modalities)
    found = {c: False for c in columns}
    for f in files:
        md = pq.ParquetFile(f).metadata
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            for j in range(rg.num_columns):
                col = rg.column(j)
                top = col.path_in_schema.split(".")[0]
                if top in found and not found[top]:
                    stats = col.statistics
                    nulls = stats.null_count if stats is not None and stats.has_null_count \
                        else 0
                    found[top] = col.num_values > nulls
    missing = [m for m, c in zip(modalities, columns) if not found[c]]
    if missing:
        raise DataError(str(files[0].parent), f"the fusion stage needs modalities "
                        f"{modalities}, but {missing} is absent from every shard (column "
                        f"{[_feature_columns(meta, [m])[0] for m in missing]} is all null)",
                        kind="layout", field=missing[0])


# -- worker loop ----------------------------------------------------------------------------

def train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker loop of the fusion stage (see the module docstring)."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    cfg = FusionStageConfig.model_validate(config["cfg"])
    meta, label_names = config["meta"], config["label_names"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed + rank)
    device = ray.train.torch.get_device()
    model = FusionModel.from_config(config["model_config"])
    optimizer_state, start_epoch, history = None, 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:                      # own restart or a re-run of the same name
        with checkpoint.as_directory() as d:
            model.load_state_dict(torch.load(Path(d) / MODEL_FILE, weights_only=True))
            state = torch.load(Path(d) / TRAIN_STATE_FILE, weights_only=False)
        optimizer_state, start_epoch, history = state["optimizer"], state["epoch"] + 1, \
            state["history"]
    ddp = ray.train.torch.prepare_model(
        model, parallel_strategy_kwargs={"find_unused_parameters": True})
    raw: FusionModel = ddp.module if hasattr(ddp, "module") else ddp
    opt = torch.optim.AdamW(ddp.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
    amp = device.type == "cuda"
    contract = meta["contract"]
    for epoch in range(start_epoch, cfg.epochs):
        ddp.train()
        loss_sum = torch.zeros(2, dtype=torch.float64, device=device)   # (sum, count)
        for batch in ray.train.get_dataset_shard("train").iter_batches(
                batch_size=cfg.batch_size, batch_format="numpy"):
            t = _labelled(batch_to_tensors(batch, meta, device))
            if t is None:
                continue
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                out = ddp(t)
            loss, _ = raw.fusion.loss(out, t["label"], aux_weight=cfg.aux_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += torch.tensor([float(loss.detach()) * len(t["label"]), len(t["label"])],
                                     dtype=torch.float64, device=device)
        metrics = _evaluate(raw, meta, cfg, device, rank, world, len(label_names), amp)
        _all_reduce(loss_sum, world)
        metrics.update(epoch=epoch, train_loss=float(loss_sum[0] / loss_sum[1].clamp_min(1)))
        history.append(metrics)
        if rank == 0:
            parts = " ".join(f"{k}={v:.3f}" for k, v in metrics.items()
                             if k.startswith("val_acc") or k == "val_f1")
            print(f"[fusion] epoch {epoch + 1}/{cfg.epochs} loss={metrics['train_loss']:.4f} "
                  f"{parts}", flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                save_bundle(tmp, raw.state_dict(), model_config=raw.config(),
                            contract=contract, label_names=label_names, metrics=metrics,
                            stage="fusion")
                torch.save({"optimizer": opt.state_dict(), "epoch": epoch,
                            "history": history}, Path(tmp) / TRAIN_STATE_FILE)
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)               # a barrier: every rank reports


def _labelled(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """Drop rows without a label; None if none is left."""
    keep = t["label"] >= 0
    if not keep.any():
        return None
    if keep.all():
        return t
    return {k: v[keep] for k, v in t.items()}


def _evaluate(model: FusionModel, meta, cfg, device, rank, world, n_classes, amp) -> dict:
    """Fused confusion matrix and per-modality accuracy over the whole val set: every rank
    reads it, rank r scores batches r, r+world, ...; counts are summed across ranks."""
    import ray.train

    model.eval()
    conf = torch.zeros(n_classes, n_classes, dtype=torch.float64, device=device)
    single = torch.zeros(len(model.modalities), 2, dtype=torch.float64, device=device)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        batches = ray.train.get_dataset_shard("val").iter_batches(
            batch_size=cfg.batch_size, batch_format="numpy")
        for i, batch in enumerate(batches):
            if i % world != rank:
                continue
            t = _labelled(batch_to_tensors(batch, meta, device))
            if t is None:
                continue
            y = t["label"]
            pred = model(t).logits.argmax(1)
            conf.index_put_((y, pred), torch.ones_like(y, dtype=torch.float64),
                            accumulate=True)
            for j, m in enumerate(model.modalities):
                sel = t[f"{m}_present"]
                if sel.any():
                    sub = {k: v[sel] for k, v in t.items()}
                    p = model(sub, modalities=[m]).logits.argmax(1)
                    single[j, 0] += (p == sub["label"]).sum()
                    single[j, 1] += sel.sum()
    _all_reduce(conf, world)
    _all_reduce(single, world)
    model.train()
    total = float(conf.sum())
    out = {"val_acc": float(conf.diag().sum()) / max(total, 1.0), "val_f1": macro_f1(conf),
           "val_n": int(total)}
    for j, m in enumerate(model.modalities):
        out[f"val_acc_{m}"] = float(single[j, 0] / single[j, 1].clamp_min(1))
    return out


def macro_f1(conf: torch.Tensor) -> float:
    """Macro-F1 of a confusion matrix ``(true, pred)``, averaged over the classes that
    occur as a true or a predicted label (sklearn's ``f1_score(average="macro")``)."""
    tp = conf.diag()
    support, predicted = conf.sum(1), conf.sum(0)
    used = (support + predicted) > 0
    if not used.any():
        return 0.0
    f1 = 2 * tp / (support + predicted).clamp_min(1e-12)
    return float(f1[used].mean())


def _all_reduce(t: torch.Tensor, world: int) -> None:
    if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
