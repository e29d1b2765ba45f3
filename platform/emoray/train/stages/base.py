"""The registry of training stages: each stage registers, in its own file, everything a
plan, a campaign and a bundle need to know about it.

A :class:`Stage` names its settings (the config section registered under the same name in
:mod:`emoray.config.train`), the driver that trains it, its Ray Train worker loop, the
whole model its bundles hold, the metrics it reports every epoch, the stage whose bundle
it starts from, and whether its bundles can be served. The registry is filled one way:
:mod:`emoray.train.stages` imports every stage file; nothing here imports a stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from emoray.config.train import STAGE_CONFIGS, STAGE_NAMES
from emoray.errors import ConfigError


@dataclass(frozen=True)
class Stage:
    """One training stage.

    Attributes
    ----------
    name : str
        The stage's name in ``train.stages`` (and its config section's).
    train : callable
        The driver ``train(features, run_dir, cfg, name, split[, init])`` -> results.
    loop : callable
        The Ray Train worker loop ``loop(config)``.
    model : str
        The registered whole model (:mod:`emoray.models.registry`) its bundles hold.
    metrics : callable
        ``metrics(cfg) -> set[str]``: what it reports every epoch (what Tune may optimise).
    preflight : callable | None
        ``preflight(features, cfg, plan)``: every check of its inputs that needs no
        earlier stage's output, run for every stage before the first one starts (``plan``
        is the plan's stage name -> settings).
    after : str | None
        The stage whose bundle it starts from (``init``), if any.
    servable : bool
        Whether its bundles answer predictions (the last stage of a plan).
    """

    name: str
    train: Callable[..., dict[str, Any]]
    loop: Callable[[dict[str, Any]], None]
    model: str
    metrics: Callable[[Any], set[str]]
    preflight: Callable[[Path, Any, dict[str, Any]], None] | None = None
    after: str | None = None
    servable: bool = False

    @property
    def config(self) -> type:
        """The settings class of this stage (:data:`emoray.config.train.STAGE_CONFIGS`)."""
        return STAGE_CONFIGS[self.name]


_STAGES: dict[str, Stage] = {}


def register_stage(stage: Stage) -> Stage:
    """Register ``stage``; its settings must be registered under the same name."""
    if stage.name not in STAGE_CONFIGS:
        raise TypeError(f"stage {stage.name!r} has no config section: register one with "
                        f"emoray.config.train.stage_config({stage.name!r})")
    _STAGES[stage.name] = stage
    return stage


def stage_names() -> list[str]:
    """Registered stages, in the order a plan runs them."""
    return [n for n in STAGE_NAMES if n in _STAGES]


def get_stage(name: str) -> Stage:
    if name not in _STAGES:
        raise ConfigError(f"unknown stage {name!r}; known stages: {stage_names()}")
    return _STAGES[name]


def previous() -> dict[str, str]:
    """stage -> the stage whose bundle it starts from."""
    return {s.name: s.after for s in _STAGES.values() if s.after}


def reported_metrics(stage: str, cfg: Any) -> set[str]:
    """The numeric metrics ``stage`` reports to Ray Train every epoch under settings ``cfg``."""
    return get_stage(stage).metrics(cfg)
