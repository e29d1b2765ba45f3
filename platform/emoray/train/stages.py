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
