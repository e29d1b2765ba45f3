"""What every stage's driver and worker loop share: the fit on Ray Train, collectives,
checkpoints inside a worker loop.

A stage (one file under :mod:`emoray.train.stages`) is a driver that checks its inputs,
builds Ray Data datasets of the feature shards, and calls :func:`fit_stage`, which runs
the stage's worker loop on a :class:`~ray.train.torch.TorchTrainer` with the settings of
:class:`~emoray.config.StageCommon`.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from emoray.bundle import MODEL_FILE, TRAIN_STATE_FILE, save_bundle
from emoray.config import StageCommon


_CALLBACKS: contextvars.ContextVar[tuple] = contextvars.ContextVar("emoray_train_callbacks",
                                                                   default=())


@contextlib.contextmanager
def run_callbacks(*callbacks: Any):
    """Ray Train callbacks (e.g. Tune's ``TuneReportCallback``) that every
    :func:`fit_stage` inside the ``with`` block adds to its ``RunConfig`` (with those of
    enclosing blocks)."""
    token = _CALLBACKS.set(_CALLBACKS.get() + tuple(callbacks))
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

    from emoray.train.process_group import NodeStoreConfig

    use_gpu = gpu_auto() if cfg.use_gpu is None else cfg.use_gpu
    trainer = TorchTrainer(
        loop, train_loop_config=loop_config, torch_config=NodeStoreConfig(),
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
        datasets=datasets, dataset_config=DataConfig(datasets_to_split=datasets_to_split,
                                                     execution_options=ordered_ingest()))
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"stage run {name!r} finished without a checkpoint")
    return {"metrics": dict(result.metrics or {}), "checkpoint": result.checkpoint.path,
            "path": result.path}


def ordered_ingest():
    """The driver's Ray Data execution options (what Train's default ingest options copy)
    with ``preserve_order``: each worker's share of a
    split dataset, and its row order, are then the same from one run to the next (Ray
    Data otherwise hands blocks out as its tasks finish, which a busy machine reorders);
    a seeded stage trains on the same batches twice. On several nodes this forgoes Ray
    Data's locality hints (blocks may cross nodes), a small cost for feature rows."""
    import copy

    from ray.data import DataContext

    # Train's default_ingest_options() copies the driver's options through the constructor,
    # which prints a deprecation warning for exclude_resources on Ray 2.60
    options = copy.deepcopy(DataContext.get_current().execution_options)
    options.preserve_order = True
    return options


def optimizer_step(loss: torch.Tensor, opt: torch.optim.Optimizer, params=None,
                   grad_clip: float | None = None) -> None:
    """Backpropagate ``loss`` and step ``opt``, first clipping the gradients of ``params``
    (default: every parameter ``opt`` steps) to a global norm of ``grad_clip`` (None: as
    they are)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        if params is None:
            params = [p for group in opt.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()


def scheduled_lr(lr: float, epoch: int, epochs: int, warmup: int, schedule: str) -> float:
    """The learning rate of ``epoch``: linear warmup over ``warmup`` epochs, then constant
    or a cosine decay to 5 % of ``lr`` at the last epoch (a function of the epoch alone, so
    a resumed run continues the same schedule)."""
    if epoch < warmup:
        return lr * (epoch + 1) / (warmup + 1)
    if schedule == "constant":
        return lr
    t = (epoch - warmup) / max(1, epochs - 1 - warmup)
    return lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0))))


def count_steps(history: list[dict[str, Any]], steps: int) -> dict[str, int]:
    """``{"train_steps": steps, "steps": total}``: this epoch's optimiser steps of one worker
    and the total since the stage began (the last epoch's ``steps`` in ``history`` plus
    ``steps``), so that a resumed run keeps counting. On few records an epoch is a handful
    of steps: the step count, not the epoch count, says how much a stage trained."""
    before = int(history[-1].get("steps", 0)) if history else 0
    return {"train_steps": int(steps), "steps": before + int(steps)}


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


def restore(model: torch.nn.Module, device: torch.device,
            extra: dict[str, Any] | None = None):
    """Load the run's latest checkpoint (own restart, or a re-run of the same name) into
    ``model``; return ``(optimizer_state, start_epoch, history)`` or None for a fresh run.
    ``extra`` receives the training state's other entries (what a stage added to it)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        model.load_state_dict(torch.load(Path(d) / MODEL_FILE, map_location=device,
                                         weights_only=True))
        state = torch.load(Path(d) / TRAIN_STATE_FILE, map_location="cpu", weights_only=False)
    if extra is not None:
        extra.update({k: v for k, v in state.items()
                      if k not in ("optimizer", "epoch", "history")})
    return state["optimizer"], state["epoch"] + 1, state["history"]


def report(metrics: dict[str, Any], *, rank: int, model: torch.nn.Module,
           model_config: dict[str, Any], meta: dict[str, Any], label_names: list[str],
           stage: str, train_state: dict[str, Any], extra: dict[str, Any] | None = None,
           servable: bool = False, files: dict[str, bytes] | None = None) -> None:
    """Report ``metrics`` from every rank (a barrier); rank 0 attaches the bundle and the
    training state (optimizer, epoch, history) as the checkpoint; ``servable`` marks a
    bundle that answers predictions (the stage's :attr:`~emoray.train.stages.Stage.servable`)."""
    import tempfile

    import ray.train
    from ray.train import Checkpoint

    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_bundle(tmp, model.state_dict(), model_config=model_config,
                    contract=meta["contract"], label_names=label_names, metrics=metrics,
                    stage=stage, model=type(getattr(model, "module", model)).model_name,
                    servable=servable, extra=extra, files=files)
        torch.save(train_state, Path(tmp) / TRAIN_STATE_FILE)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))


def mine(record_ids, rank: int, world: int) -> np.ndarray:
    """Boolean mask of the rows rank ``rank`` of ``world`` owns (by a hash of the record
    id, so every rank agrees whatever order its reader yields the rows in)."""
    return np.array([zlib.crc32(str(r).encode()) % world == rank for r in record_ids],
                    dtype=bool)
