"""What every training stage shares: Ray Train settings, the record split, and the fit.

A stage (fusion, intra, inter, classifier) is a driver that checks its inputs, builds Ray
Data datasets of the feature shards, and calls :func:`fit_stage`, which runs the stage's
worker loop on a :class:`~ray.train.torch.TorchTrainer` with the settings of
:class:`StageCommon`. Checks that read the shards (:func:`check_columns`) use Parquet
metadata only, so bad input fails before any worker starts.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import zlib
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from emoray.config import TRAIN_FRACTION, SplitConfig
from emoray.data.features import read_features
from emoray.data.shards import keep_ids
from emoray.errors import ConfigError, DataError

_ID_COLUMNS = ["record_id", "subject", "session", "trial", "segment", "label"]


class StageCommon(BaseModel):
    """Settings every stage has: optimisation basics and the Ray Train scaling.

    Placement on a multi-node cluster: each Train worker asks for ``cpus_per_worker``
    CPUs plus ``worker_resources`` (custom resources of the nodes meant to train, e.g.
    ``{"trainer": 1}`` when the worker nodes are started with that resource, so no worker
    lands on the head); ``placement_strategy`` is the strategy of the workers' placement
    group: ``PACK`` (Ray's default: as few nodes as fit), ``SPREAD`` (different nodes
    where possible), ``STRICT_SPREAD`` (every worker on its own node, or the stage waits)
    or ``STRICT_PACK`` (all on one node).
    """

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(16, gt=0)
    num_workers: int = Field(2, gt=0)
    cpus_per_worker: float = Field(0.5, gt=0)     # RAY.md trap 2: leave CPUs to Ray Data
    use_gpu: bool | None = None     # None: this machine or the cluster has GPUs (gpu_auto)
    seed: int = 0
    max_failures: int = Field(1, ge=-1)
    controller_failure_limit: int = Field(-1, ge=-1)  # tests: 0 (RAY.md trap 4)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    worker_resources: dict[str, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)
    materialize: bool = False    # cache the split datasets in the object store (small data)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"   # Ray Train's own

    @field_validator("worker_resources")
    @classmethod
    def _custom_only(cls, v: dict[str, float]) -> dict[str, float]:
        builtin = [k for k in v if k.upper() in ("CPU", "GPU")]
        if builtin:
            raise ValueError(f"{builtin} are set by cpus_per_worker and use_gpu; "
                             "worker_resources holds custom resources only")
        return v

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Validate ``data``; problems raise :class:`ConfigError` naming each field."""
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            bad = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}"
                            for e in err.errors())
            raise ConfigError(f"{cls.__name__}: {bad}") from None


# -- split ------------------------------------------------------------------------------

def _id_table(files: list[Path]) -> pa.Table:
    return pa.concat_tables([pq.read_table(f, columns=_ID_COLUMNS) for f in files])


def within_subject_split(files: list[Path],
                         fraction: float = TRAIN_FRACTION) -> tuple[set[str], set[str]]:
    """Record ids of the within-subject split (reads the id columns only).

    Per (subject, label), records sorted by (session, trial, segment): the first
    ``round(fraction * n)`` (at least one) train, the rest validate. Unlabelled records
    (label null or < 0) are in neither.
    """
    groups: dict[tuple[str, int], list[tuple]] = {}
    for r in _id_table(files).to_pylist():
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


def subjects_of(files: list[Path]) -> list[str]:
    """The distinct subjects of the shards, sorted."""
    table = pa.concat_tables([pq.read_table(f, columns=["subject"]) for f in files])
    return sorted({s for s in table["subject"].to_pylist() if s is not None})


def split_records(files: list[Path], split: SplitConfig | None,
                  source: str) -> tuple[set[str], set[str]]:
    """Train and val record ids under ``split``; DataError if either side is empty.

    With ``protocol="subjects"`` every record of ``val_subjects`` validates (labelled or
    not: the stage decides what it can score) and every other record trains.
    """
    split = split or SplitConfig()
    if split.protocol == "within-subject":
        train, val = within_subject_split(files, split.fraction)
    else:
        known = subjects_of(files)
        unknown = [s for s in split.val_subjects if s not in known]
        if unknown or not split.val_subjects:
            raise ConfigError(f"train.split.val_subjects: expected a non-empty list of "
                              f"subjects of {source} ({known}), got {split.val_subjects}")
        held = set(split.val_subjects)
        train, val = set(), set()
        for r in _id_table(files).select(["record_id", "subject"]).to_pylist():
            (val if r["subject"] in held else train).add(r["record_id"])
    if not train or not val:
        raise DataError(source, f"the {split.protocol} split gives {len(train)} train and "
                        f"{len(val)} val records; need both non-empty", kind="label")
    return train, val


def split_datasets(features: Path, columns: list[str], train_ids: set[str],
                   val_ids: set[str], materialize: bool) -> dict[str, Any]:
    """``{"train", "val"}`` Ray Datasets of ``columns`` (blocks stay in the object store)."""
    ds = read_features(features, columns=columns)
    # the workers' per-epoch reads would print a progress bar each; the stage prints its own
    # progress line per epoch instead
    ds.context.enable_progress_bars = False
    datasets = {"train": keep_ids(ds, train_ids), "val": keep_ids(ds, val_ids)}
    if materialize:
        datasets = {k: v.materialize() for k, v in datasets.items()}
    return datasets


# -- checks -----------------------------------------------------------------------------

def non_null_columns(files: list[Path], columns: list[str]) -> set[str]:
    """Which of ``columns`` hold a non-null value in some row (Parquet statistics only)."""
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
    return {c for c, ok in found.items() if ok}


def check_columns(files: list[Path], needed: dict[str, str], stage: str) -> None:
    """Raise DataError naming each modality whose column is null in every shard row.

    ``needed`` maps modality -> feature column.
    """
    present = non_null_columns(files, list(needed.values()))
    missing = [m for m, c in needed.items() if c not in present]
    if missing:
        raise DataError(str(files[0].parent), f"the {stage} stage needs modalities "
                        f"{list(needed)}, but {missing} is absent from every shard (column "
                        f"{[needed[m] for m in missing]} is all null)", kind="layout",
                        field=missing[0])


# -- fit --------------------------------------------------------------------------------

_CALLBACKS: contextvars.ContextVar[tuple] = contextvars.ContextVar("emoray_train_callbacks",
                                                                   default=())


@contextlib.contextmanager
def run_callbacks(*callbacks: Any):
    """Ray Train callbacks (e.g. Tune's ``TuneReportCallback``) that every
    :func:`fit_stage` inside the ``with`` block adds to its ``RunConfig``."""
    token = _CALLBACKS.set(tuple(callbacks))
    try:
        yield
    finally:
        _CALLBACKS.reset(token)


def gpu_auto() -> bool:
    """``use_gpu: null``: train on GPUs when the driver's machine has CUDA or the cluster
    has GPU nodes now (a driver on a GPU-less head of a GPU cluster). A GPU group scaled to
    zero shows no GPUs yet: set ``use_gpu: true`` there (the train RayJob does)."""
    import ray

    if torch.cuda.is_available():
        return True
    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0


def fit_stage(loop: Callable[[dict], None], loop_config: dict[str, Any], cfg: StageCommon,
              datasets: dict[str, Any], run_dir: str | Path, name: str,
              datasets_to_split: list[str]) -> dict[str, Any]:
    """Run ``loop`` on a TorchTrainer; return ``{"metrics", "checkpoint", "path"}``.

    Running again with the same ``run_dir`` and ``name`` resumes from the run's latest
    checkpoint (Ray Train V2 resumes by name and storage path, RAY.md trap 1).
    """
    from ray.train import (CheckpointConfig, DataConfig, FailureConfig, LoggingConfig,
                           RunConfig, ScalingConfig)
    from ray.train.torch import TorchTrainer

    use_gpu = gpu_auto() if cfg.use_gpu is None else cfg.use_gpu
    trainer = TorchTrainer(
        loop, train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker, **cfg.worker_resources},
            placement_strategy=cfg.placement_strategy),
        run_config=RunConfig(
            name=name, storage_path=str(Path(run_dir).resolve()),
            failure_config=FailureConfig(max_failures=cfg.max_failures,
                                         controller_failure_limit=cfg.controller_failure_limit),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            logging_config=LoggingConfig(log_level=cfg.log_level),
            callbacks=list(_CALLBACKS.get()) or None),
        datasets=datasets, dataset_config=DataConfig(datasets_to_split=datasets_to_split))
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"stage run {name!r} finished without a checkpoint")
    return {"metrics": dict(result.metrics or {}), "checkpoint": result.checkpoint.path,
            "path": result.path}


def all_reduce(t: torch.Tensor, world: int) -> None:
    """Sum ``t`` across the Train workers in place (no-op for one worker)."""
    if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)


def all_gather_objects(obj: Any, world: int) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` for one worker)."""
    if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        out: list[Any] = [None] * world
        torch.distributed.all_gather_object(out, obj)
        return out
    return [obj]


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


def confusion(y: torch.Tensor, pred: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``(n_classes, n_classes)`` float64 counts of (true, predicted)."""
    conf = torch.zeros(n_classes, n_classes, dtype=torch.float64, device=y.device)
    conf.index_put_((y.long(), pred.long()), torch.ones_like(y, dtype=torch.float64),
                    accumulate=True)
    return conf


# -- checkpoints inside a worker loop ----------------------------------------------------

def restore(model: torch.nn.Module, device: torch.device):
    """Load the run's latest checkpoint (own restart, or a re-run of the same name) into
    ``model``; return ``(optimizer_state, start_epoch, history)`` or None for a fresh run."""
    import ray.train

    from emoray.train.checkpoint import MODEL_FILE, TRAIN_STATE_FILE

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        model.load_state_dict(torch.load(Path(d) / MODEL_FILE, map_location=device,
                                         weights_only=True))
        state = torch.load(Path(d) / TRAIN_STATE_FILE, map_location="cpu", weights_only=False)
    return state["optimizer"], state["epoch"] + 1, state["history"]


def report(metrics: dict[str, Any], *, rank: int, model: torch.nn.Module,
           model_config: dict[str, Any], meta: dict[str, Any], label_names: list[str],
           stage: str, train_state: dict[str, Any], extra: dict[str, Any] | None = None
           ) -> None:
    """Report ``metrics`` from every rank (a barrier); rank 0 attaches the bundle and the
    training state (optimizer, epoch, history) as the checkpoint."""
    import tempfile

    import ray.train
    from ray.train import Checkpoint

    from emoray.train.checkpoint import TRAIN_STATE_FILE, save_bundle

    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_bundle(tmp, model.state_dict(), model_config=model_config,
                    contract=meta["contract"], label_names=label_names, metrics=metrics,
                    stage=stage, extra=extra)
        torch.save(train_state, Path(tmp) / TRAIN_STATE_FILE)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))


def mine(record_ids, rank: int, world: int) -> np.ndarray:
    """Boolean mask of the rows rank ``rank`` of ``world`` owns (by a hash of the record
    id, so every rank agrees whatever order its reader yields the rows in)."""
    return np.array([zlib.crc32(str(r).encode()) % world == rank for r in record_ids],
                    dtype=bool)
