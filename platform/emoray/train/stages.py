"""The registry of training stages: config class, driver and bundle model class by name.

:data:`STAGE_CONFIGS` is what :class:`emoray.config.TrainConfig` validates a plan's stages
with; :func:`model_class` is how :func:`emoray.train.checkpoint.load_bundle` rebuilds the
model of a bundle from its ``stage``.
"""

from __future__ import annotations

from typing import Any

from emoray.errors import ConfigError
from emoray.train.fusion import FusionModel, FusionStageConfig
from emoray.train.jmml import ClassifierStageConfig, InterStageConfig, IntraStageConfig

STAGE_CONFIGS: dict[str, type] = {"intra": IntraStageConfig, "inter": InterStageConfig,
                                  "classifier": ClassifierStageConfig,
                                  "fusion": FusionStageConfig}

#: stage -> the stage whose bundle it starts from
PREVIOUS = {"inter": "intra", "classifier": "inter"}


def model_class(stage: Any, source: str = "checkpoint") -> type:
    """The model class of a bundle written by ``stage``."""
    from emoray.models.jmml_model import JMMLModel

    classes = {"fusion": FusionModel, "intra": JMMLModel, "inter": JMMLModel,
               "classifier": JMMLModel}
    if stage not in classes:
        raise ConfigError(f"{source}: stage {stage!r} has no model loader (known: "
                          f"{sorted(classes)})")
    return classes[stage]


def driver(stage: str):
    """The function that trains ``stage``: ``f(features, run_dir, cfg, name, split[, init])``."""
    from emoray.train.fusion import train_fusion
    from emoray.train.jmml import train_classifier, train_inter, train_intra

    return {"intra": train_intra, "inter": train_inter, "classifier": train_classifier,
            "fusion": train_fusion}[stage]


def reported_metrics(stage: str, cfg: Any) -> set[str]:
    """The numeric metrics ``stage`` reports to Ray Train every epoch under settings ``cfg``
    (what a Tune campaign may optimise)."""
    if stage == "fusion":
        per = [f"val_{k}_{m}" for m in cfg.modalities for k in ("acc", "f1", "n")]
        return {"train_loss", "val_acc", "val_f1", "val_n", *per}
    if stage == "intra":
        return {"train_loss", "val_f1", *(f"train_loss_{m}" for m in cfg.modalities),
                *(f"val_f1_{m}" for m in cfg.modalities),
                *(f"val_f1_{m}_{t}" for m in cfg.modalities for t in cfg.targets)}
    from emoray.models.jmml_model import PATHS

    targets = ("valence", "arousal")       # the probes score every target the model has
    probed = [f"val_{k}_{p}_{t}" for p in PATHS for t in targets for k in ("f1", "acc", "n")]
    common = {"val_f1", *(f"val_f1_{p}" for p in PATHS), *probed}
    if stage == "inter":
        return common | {"train_loss", "train_corr", "train_self", "train_cross", "n_pairs"}
    baselines = [f"{kind}_{m}" for kind in ("raw", "jec") for m in ("speech", "eeg")]
    return common | {f"val_f1_{b}" for b in baselines} | {
        f"val_{k}_{b}_{t}" for b in baselines for t in targets for k in ("f1", "acc", "n")}
