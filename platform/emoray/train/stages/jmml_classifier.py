"""JMML's ``classifier`` stage: the final logistic regressions on exactly the inference
representations (speech only, EEG only, combined), plus the ablation baselines (raw
features, JEC-SSL embeddings); writes the servable bundle."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from emoray.bundle import MODEL_FILE
from emoray.config import SplitConfig
from emoray.config.train import TARGETS, ClassifierStageConfig
from emoray.data.features import feature_metadata
from emoray.data.shards import shard_files
from emoray.models.jmml_model import PATHS, JMMLModel
from emoray.train.loop import fit_stage, report
from emoray.train.split import check_columns, split_datasets, split_records
from emoray.train.stages.base import Stage, register_stage
from emoray.train.stages.jmml_common import (bundle_extra, codes, columns, context,
                                             embed_split, init_bundle, preflight_frozen, probe,
                                             probed_metrics,                                              progress)


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
    bundle = init_bundle(init, ("inter",), "classifier", meta)
    model_config = dict(bundle["model_config"])
    cols = model_config["features"]
    check_columns(files, cols, "classifier")
    train_ids, val_ids = split_records(files, split, str(features))
    datasets = split_datasets(features, columns(cols, model_config["targets"]), train_ids,
                              val_ids, cfg.materialize)
    loop_config = {"cfg": cfg.model_dump(mode="json"), "meta": meta,
                   "model_config": model_config, "init": str(Path(init).resolve())}
    out = fit_stage(classifier_loop, loop_config, cfg, datasets, run_dir, name,
                    datasets_to_split=[])
    return {**out, "n_train": len(train_ids), "n_val": len(val_ids)}


def classifier_loop(config: dict[str, Any]) -> None:
    """Ray Train worker loop of the classifier stage: fit, score, save the servable bundle."""
    cfg = ClassifierStageConfig.model_validate(config["cfg"])
    meta = config["meta"]
    rank, world, device = context()
    model = JMMLModel.from_config(config["model_config"]).to(device)
    state = torch.load(f"{config['init']}/{MODEL_FILE}", map_location=device,
                       weights_only=True)
    model.load_state_dict(state, strict=True)
    t0 = time.perf_counter()
    train = embed_split(model, "train", meta, device, rank, world)
    val = embed_split(model, "val", meta, device, rank, world)
    reps_train = {k: train[k] for k in train if k.startswith(("raw_", "jec_"))}
    reps_val = {k: val[k] for k in val if k.startswith(("raw_", "jec_"))}
    reps_train.update(codes(model, train, device))
    reps_val.update(codes(model, val, device))
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
        progress("classifier", 0, 1, metrics, [f"val_f1_{r}" for r in reps_train])
    report(metrics, rank=rank, model=final, model_config=final.config(), meta=meta,
           label_names=final.targets, stage=STAGE.name, servable=STAGE.servable, extra=bundle_extra(final),
           train_state={"optimizer": {}, "epoch": 0, "history": [metrics]})


def reported_metrics(cfg: ClassifierStageConfig) -> set[str]:
    baselines = [f"{kind}_{m}" for kind in ("raw", "jec") for m in ("speech", "eeg")]
    return probed_metrics() | {f"val_f1_{b}" for b in baselines} | {
        f"val_{k}_{b}_{t}" for b in baselines for t in TARGETS for k in ("f1", "acc", "n")}


STAGE = register_stage(Stage("classifier", train=train_classifier, loop=classifier_loop,
                     model="jmml", metrics=reported_metrics,
                     preflight=preflight_frozen("classifier"), after="inter", servable=True))
