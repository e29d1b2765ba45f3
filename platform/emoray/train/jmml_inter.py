"""Worker loops of JMML's ``inter`` (E-DCC-CAE) and ``classifier`` stages.

Both start by embedding every train and val record with the frozen JEC-SSL encoders:
every rank reads the whole (small, feature-level) split, embeds the records whose id hash
falls to it, and the shares are gathered, so every rank holds the same table sorted by
record id (:func:`embed_split`). The E-DCC-CAE then trains on pairs drawn from that table
each epoch (each rank an equal slice, DDP over the E-DCC-CAE); logistic regressions are
deterministic full-batch fits that every rank computes identically.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from emoray.models.jmml import pair_by_label
from emoray.models.jmml_model import PATHS, JMMLModel, LogisticHead
from emoray.train.checkpoint import MODEL_FILE
from emoray.train.runner import all_gather_objects, confusion, macro_f1, mine, report, restore

#: representation -> the modalities a record needs for it
NEEDS = {"raw_speech": ("speech",), "raw_eeg": ("eeg",), "jec_speech": ("speech",),
         "jec_eeg": ("eeg",), "speech_only": ("speech",), "eeg_only": ("eeg",),
         "combined": ("speech", "eeg")}


def embed_split(model: JMMLModel, split: str, meta: dict[str, Any], device, rank: int,
                world: int) -> dict[str, torch.Tensor | list]:
    """Raw (standardised) features, JEC-SSL embeddings, presence and labels of every record
    of ``split``, identical on every rank, on CPU, sorted by record id."""
    import ray.train

    from emoray.train.jmml import _tensors

    keys = [f"raw_{m}" for m in model.modalities] + [f"jec_{m}" for m in model.modalities]
    local: dict[str, list] = {k: [] for k in keys + ["has_speech", "has_eeg", "y", "ids"]}
    model.eval()
    with torch.no_grad():
        for batch in ray.train.get_dataset_shard(split).iter_batches(
                batch_size=256, batch_format="numpy"):
            keep = mine(batch["record_id"], rank, world)
            if not keep.any():
                continue
            t = _tensors({k: v[keep] for k, v in batch.items()}, meta, device, model.targets)
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


def _codes(model: JMMLModel, table: dict[str, Any], device) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        emb = {m: table[f"jec_{m}"].to(device) for m in model.modalities}
        return {k: v.float().cpu() for k, v in model.codes(emb).items()}


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
    from emoray.models.jmml_model import joint_label

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

    from emoray.errors import ConfigError
    from emoray.train.jmml import InterStageConfig, _context, _progress, _bundle_extra

    cfg = InterStageConfig.model_validate(config["cfg"])
    meta = config["meta"]
    rank, world, device = _context()
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
        print(f"[inter] {len(rows_s)} {pairing} pairs: batch size {batch_size} instead of "
              f"{cfg.batch_size}", flush=True)
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
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += [parts["total"], parts["corr"], parts["self"], parts["cross"], 1.0]
        model.cae.eval()
        metrics, _ = probe(_codes(model, train, device), train, _codes(model, val, device),
                           val, model.targets, l2=cfg.l2)
        n = max(sums[4], 1.0)
        metrics.update(epoch=epoch, resumed_from=start, pairing=pairing,
                       train_loss=float(sums[0] / n), train_corr=float(sums[1] / n),
                       train_self=float(sums[2] / n), train_cross=float(sums[3] / n),
                       n_pairs=int(len(rows_s)), train_seconds=time.perf_counter() - t0)
        metrics["val_f1"] = metrics.get("val_f1_speech_only", 0.0)
        history.append(metrics)
        if rank == 0:
            _progress("inter", epoch, cfg.epochs, metrics,
                      ["train_loss", "train_corr", "val_f1_speech_only", "val_f1_eeg_only",
                       "val_f1_combined"])
        report(metrics, rank=rank, model=model, model_config=model.config(), meta=meta,
               label_names=model.targets, stage="inter", extra=_bundle_extra(model),
               train_state={"optimizer": opt.state_dict(), "epoch": epoch,
                            "history": history})


def classifier_loop(config: dict[str, Any]) -> None:
    """Ray Train worker loop of the classifier stage: fit, score, save the servable bundle."""
    from emoray.train.jmml import ClassifierStageConfig, _context, _bundle_extra

    cfg = ClassifierStageConfig.model_validate(config["cfg"])
    meta = config["meta"]
    rank, world, device = _context()
    model = JMMLModel.from_config(config["model_config"]).to(device)
    state = torch.load(f"{config['init']}/{MODEL_FILE}", map_location=device,
                       weights_only=True)
    model.load_state_dict(state, strict=True)
    t0 = time.perf_counter()
    train = embed_split(model, "train", meta, device, rank, world)
    val = embed_split(model, "val", meta, device, rank, world)
    reps_train = {k: train[k] for k in train if k.startswith(("raw_", "jec_"))}
    reps_val = {k: val[k] for k in val if k.startswith(("raw_", "jec_"))}
    reps_train.update(_codes(model, train, device))
    reps_val.update(_codes(model, val, device))
    metrics, heads = probe(reps_train, train, reps_val, val, model.targets, l2=cfg.l2,
                           balanced=cfg.balanced, max_iter=cfg.max_iter)
    fitted = [p for p in PATHS if all(f"{p}__{t}" in heads for t in model.targets)]
    final_config = dict(model.config(), classifiers=fitted)
    final = JMMLModel.from_config(final_config)
    final.load_state_dict(model.state_dict(), strict=False)
    for p in fitted:
        for t in model.targets:
            final.classifiers[f"{p}__{t}"].load_state_dict(heads[f"{p}__{t}"].state_dict())
    metrics.update(epoch=0, resumed_from=0, train_seconds=time.perf_counter() - t0,
                   n_train=len(train["ids"]), n_val=len(val["ids"]),
                   paths=",".join(fitted))
    metrics["val_f1"] = metrics.get("val_f1_speech_only", 0.0)
    if rank == 0:
        from emoray.train.jmml import _progress

        _progress("classifier", 0, 1, metrics, [f"val_f1_{r}" for r in reps_train])
    report(metrics, rank=rank, model=final, model_config=final.config(), meta=meta,
           label_names=final.targets, stage="classifier", extra=_bundle_extra(final),
           train_state={"optimizer": {}, "epoch": 0, "history": [metrics]})
