"""JMML's ``inter`` stage (E-DCC-CAE, METHODS.md A): the encoders are frozen, every record
is embedded once (each rank a hash-share of the records, gathered), and the E-DCC-CAE
trains on pairs drawn every epoch: the natural (speech, EEG) pairs of parallel data, or,
for non-parallel data (no record with both), every speech sample with a random EEG sample
of the same joint label, drawn afresh each epoch. Each epoch probes the three inference
paths with logistic regressions fitted on the train embeddings (``val_f1_speech_only`` ...
for Ray Tune).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emoray.bundle import MODEL_FILE
from emoray.config import SplitConfig
from emoray.config.train import JMML_MODALITIES, InterStageConfig
from emoray.console import remote_echo
from emoray.data.features import feature_metadata
from emoray.data.shards import shard_files
from emoray.errors import ConfigError
from emoray.models.jmml import pair_by_label
from emoray.models.jmml_model import JMMLModel, joint_label
from emoray.train.loop import count_steps, fit_stage, optimizer_step, report, restore
from emoray.train.split import check_columns, split_datasets, split_records
from emoray.train.stages.base import Stage, register_stage
from emoray.train.stages.jmml_common import (bundle_extra, codes, columns, context,
                                             embed_split, init_bundle, preflight_frozen, probe,
                                             probed_metrics, progress)


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
    bundle = init_bundle(init, ("intra",), "inter", pre["meta"])
    model_config = dict(bundle["model_config"])
    cols = model_config["features"]
    if set(cols) != set(JMML_MODALITIES):
        raise ConfigError(f"stages.inter: the intra bundle {init} has encoders for "
                          f"{sorted(cols)}; E-DCC-CAE needs speech and eeg")
    check_columns(pre["files"], cols, "inter")
    model_config["cae"] = {"k": cfg.k, "hidden": cfg.hidden, "dropout": cfg.dropout}
    train_ids, val_ids = split_records(pre["files"], split, str(features))
    datasets = split_datasets(features, columns(cols, model_config["targets"]), train_ids,
                              val_ids, cfg.materialize)
    loop_config = {"cfg": cfg.model_dump(mode="json"), "meta": pre["meta"],
                   "model_config": model_config, "init": str(Path(init).resolve())}
    out = fit_stage(inter_loop, loop_config, cfg, datasets, run_dir, name,
                    datasets_to_split=[])
    return {**out, "n_train": len(train_ids), "n_val": len(val_ids)}


def _pairs(train: dict[str, Any], pairing: str, rng: np.random.Generator
           ) -> tuple[np.ndarray, np.ndarray]:
    """(speech row, EEG row) index pairs for one epoch."""
    s = train["has_speech"].numpy().astype(bool)
    e = train["has_eeg"].numpy().astype(bool)
    joint = _joint(train)
    if pairing == "natural":
        rows = np.flatnonzero(s & e & (joint >= 0))
        return rows, rows
    rows_s = np.flatnonzero(s & (joint >= 0))
    rows_e = np.flatnonzero(e & (joint >= 0))
    usable = np.isin(joint[rows_s], joint[rows_e])   # labels with an EEG partner
    rows_s = rows_s[usable]
    idx = pair_by_label(joint[rows_s], joint[rows_e], rng)
    return rows_s, rows_e[idx]


def _joint(table: dict[str, Any]) -> np.ndarray:
    return joint_label(table["y"]).numpy()


def choose_pairing(requested: str, train: dict[str, Any]) -> str:
    """``auto``: natural pairs if any train record has both modalities, else by label."""
    if requested != "auto":
        return requested
    both = (train["has_speech"].bool() & train["has_eeg"].bool()).any()
    return "natural" if bool(both) else "label"


def inter_loop(config: dict[str, Any]) -> None:
    """Ray Train worker loop of the inter stage (E-DCC-CAE on frozen embeddings)."""
    import ray.train.torch

    cfg = InterStageConfig.model_validate(config["cfg"])
    meta = config["meta"]
    rank, world, device = context()
    torch.manual_seed(cfg.seed * 1009 + rank)
    model = JMMLModel.from_config(config["model_config"]).to(device)
    restored = restore(model, device)
    if restored is None:
        state = torch.load(f"{config['init']}/{MODEL_FILE}", map_location=device,
                           weights_only=True)
        model.load_state_dict(state, strict=False)   # encoders; the E-DCC-CAE is new
    model.encoders.requires_grad_(False)
    train = embed_split(model, "train", meta, device, rank, world)
    val = embed_split(model, "val", meta, device, rank, world)
    if restored is None:
        for m in model.modalities:
            rows = train[f"has_{m}"].bool()
            model.emb_norm[m].set_from_sums(
                model.emb_norm[m].sums(train[f"jec_{m}"][rows]).to(device))
    pairing = choose_pairing(cfg.pairing, train)
    rows_s, _ = _pairs(train, pairing, np.random.default_rng(cfg.seed))
    per_worker = len(rows_s) // world
    batch_size = min(cfg.batch_size, per_worker)     # small data: one batch per worker
    if batch_size <= cfg.k + 1:
        raise ConfigError(f"stages.inter: {len(rows_s)} {pairing} training pairs over "
                          f"{world} workers give {per_worker} per worker; DCCA needs "
                          f"batches larger than k + 1 ({cfg.k + 1}): lower k or num_workers")
    if batch_size < cfg.batch_size and rank == 0:
        remote_echo(f"[inter] {len(rows_s)} {pairing} pairs: batch size {batch_size} "
                    f"instead of {cfg.batch_size}")
    opt_state, start, history = restored or (None, 0, [])
    cae = ray.train.torch.prepare_model(model.cae)
    opt = torch.optim.AdamW(cae.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    norm_s, norm_e = model.emb_norm["speech"], model.emb_norm["eeg"]
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        cae.train()
        rng = np.random.default_rng([cfg.seed, epoch])        # same pairs on every rank
        rows_s, rows_e = _pairs(train, pairing, rng)
        order = rng.permutation(len(rows_s))
        per = len(order) // world
        mine_idx = order[rank * per:(rank + 1) * per]
        joint = _joint(train)
        sums = np.zeros(5)
        for b in range(0, per - batch_size + 1, batch_size):   # full batches only
            sel = mine_idx[b:b + batch_size]
            e_s = norm_s(train["jec_speech"][rows_s[sel]].to(device))
            e_e = norm_e(train["jec_eeg"][rows_e[sel]].to(device))
            y = torch.from_numpy(joint[rows_s[sel]]).to(device)
            out = cae(e_s, e_e)
            loss, parts = model.cae.loss(out, e_s, e_e, y, alpha=cfg.alpha, beta=cfg.beta,
                                         gamma=cfg.gamma, r=cfg.cca_reg, top_o=cfg.top_o)
            optimizer_step(loss, opt)
            sums += [parts["total"], parts["corr"], parts["self"], parts["cross"], 1.0]
        model.cae.eval()
        metrics, _ = probe(codes(model, train, device), train, codes(model, val, device),
                           val, model.targets, l2=cfg.l2)
        n = max(sums[4], 1.0)
        metrics.update(epoch=epoch, resumed_from=start, pairing=pairing,
                       train_loss=float(sums[0] / n), train_corr=float(sums[1] / n),
                       train_self=float(sums[2] / n), train_cross=float(sums[3] / n),
                       n_pairs=int(len(rows_s)), train_seconds=time.perf_counter() - t0,
                       **count_steps(history, int(sums[4])))
        metrics["val_f1"] = metrics.get("val_f1_speech_only", 0.0)
        history.append(metrics)
        if rank == 0:
            progress("inter", epoch, cfg.epochs, metrics,
                      ["steps", "train_loss", "train_corr", "val_f1_speech_only", "val_f1_eeg_only",
                       "val_f1_combined"])
        report(metrics, rank=rank, model=model, model_config=model.config(), meta=meta,
               label_names=model.targets, stage=STAGE.name, servable=STAGE.servable, extra=bundle_extra(model),
               train_state={"optimizer": opt.state_dict(), "epoch": epoch,
                            "history": history})


def reported_metrics(cfg: InterStageConfig) -> set[str]:
    return probed_metrics() | {"train_loss", "train_corr", "train_self", "train_cross",
                               "n_pairs"}


STAGE = register_stage(Stage("inter", train=train_inter, loop=inter_loop, model="jmml",
                     metrics=reported_metrics,
                     preflight=preflight_frozen("inter"), after="intra"))
