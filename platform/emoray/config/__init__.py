"""Typed configs: pydantic models, YAML as an overlay, ``--set key=value`` overrides.

One YAML file may configure several commands; each command reads its own sections::

    ray:        {num_cpus: 2}
    synth:      {subjects: 4, seconds: 10}
    ingest:     {layout: manifest, source: corpus/, output: shards/}
    preprocess: {input: shards/, output: features/}
    train:      {name: fusion, features: features/, stages: {fusion: {epochs: 10}}}

Resolution order: model defaults -> ``--config`` YAML -> command-line flags -> ``--set``.
The resolved config is written as ``config.yaml`` into every run's output folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from emoray.config.base import (_check_path, _merge, _set_in, dump, load_yaml, merge_trees,
                                parse_override)
from emoray.config.sections import (SERVE_ROLES, AutoscalingConfig, DeploymentConfig,
                                    IngestConfig, ParamSpec, PreprocessConfig, RayConfig,
                                    SchedulerConfig, ServeConfig, StreamConfig,
                                    TrackingConfig, TuneConfig)
from emoray.config.train import (STAGE_CONFIGS, STAGE_NAMES, TRAIN_FRACTION,
                                 ClassifierStageConfig, FusionStageConfig, InterStageConfig,
                                 IntraStageConfig, SplitConfig, StageCommon, TrainConfig,
                                 stage_config)
from emoray.errors import ConfigError
from emoray.synth.config import SynthConfig

__all__ = ["AutoscalingConfig", "ClassifierStageConfig", "ConfigError", "FusionStageConfig",
           "InterStageConfig", "IntraStageConfig", "DeploymentConfig", "EmorayConfig",
           "IngestConfig", "ParamSpec", "PreprocessConfig", "RayConfig", "SERVE_ROLES",
           "STAGE_CONFIGS", "STAGE_NAMES", "SchedulerConfig", "ServeConfig", "SplitConfig",
           "StageCommon", "StreamConfig", "SynthConfig", "TRAIN_FRACTION", "TrackingConfig",
           "TrainConfig", "TuneConfig", "dump", "load_yaml", "merge_trees", "parse_override",
           "resolve", "stage_config"]


class EmorayConfig(BaseModel):
    """Every section a command may read."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    ray: RayConfig = Field(default_factory=RayConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)


def resolve(config_file: str | Path | None = None, flags: dict[str, Any] | None = None,
            overrides: list[str] | None = None, base: dict | None = None) -> EmorayConfig:
    """Build the typed config: defaults, then ``base`` (a command's own defaults, e.g. the
    quickstart's), then YAML, then flags (dotted keys), then ``--set``.

    Raises
    ------
    ConfigError
        For an unknown field (with a suggestion) or a value of the wrong type, naming the
        dotted field and what was expected.
    """
    tree: dict = _merge({}, base or {})
    source = "defaults"
    if config_file:
        loaded = load_yaml(config_file)
        source = str(config_file)
        for section, body in loaded.items():
            _check_path(EmorayConfig, [section], section)
            if isinstance(body, dict):
                for key in body:
                    _check_path(EmorayConfig, [section, key], f"{section}.{key}")
        tree = _merge(tree, loaded)
    for dotted, value in (flags or {}).items():
        if value is None:
            continue
        parts = dotted.split(".")
        _check_path(EmorayConfig, parts, dotted)
        _set_in(tree, parts, value)
    for text in overrides or []:
        parts, value = parse_override(text)
        _check_path(EmorayConfig, parts, ".".join(parts))
        _set_in(tree, parts, value)
    try:
        return EmorayConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


def _describe(exc: ValidationError, source: str) -> str:
    lines = [f"invalid config (from {source}):"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        got = err.get("input")
        got_text = f" (got {got!r})" if not isinstance(got, dict) else ""
        lines.append(f"  {where}: {err['msg']}{got_text}")
    if len(lines) == 2:                 # a single problem: one line
        return lines[0] + lines[1][1:]
    return "\n".join(lines)


