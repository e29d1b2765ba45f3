"""A campaign's search space: dotted training-plan fields -> Tune distributions.

A key names a field of one stage of the plan, ``stages.<stage>.<field>`` (a leading
``train.`` is allowed), e.g. ``stages.inter.k`` or ``stages.fusion.dropout``. Every key is
checked against the stage's config class before any trial starts: the field must exist and
take a scalar, both bounds (and every choice) must be values the field accepts, and every
corner of the space (each key at its low or high end) must give a valid stage config, so a
trial never fails on a constraint between fields (``top_o <= k``, ``batch_size > k + 1``).
"""

from __future__ import annotations

import difflib
import itertools
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from emoray.config import ParamSpec
from emoray.errors import ConfigError

#: corners checked at most (2 ** 8): larger spaces check a deterministic subset
MAX_CORNERS = 256


def split_key(key: str) -> tuple[str, str]:
    """``"stages.inter.k"`` (or ``"train.stages.inter.k"``) -> ``("inter", "k")``."""
    parts = key.split(".")
    if parts[:1] == ["train"]:
        parts = parts[1:]
    if len(parts) != 3 or parts[0] != "stages" or not all(parts):
        raise ConfigError(f"tune.space.{key}: expected a plan field 'stages.<stage>.<field>' "
                          f"(e.g. stages.inter.k, stages.fusion.dropout)")
    return parts[1], parts[2]


def _scalar_kinds(annotation: Any) -> set[type]:
    """The scalar types a field annotation admits (``int | None`` -> {int, NoneType})."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_scalar_kinds(a) for a in typing.get_args(annotation)))
    if origin is typing.Literal:
        return {type(a) for a in typing.get_args(annotation)}
    return {annotation} if isinstance(annotation, type) else {object}


def _check_field(key: str, stage: str, field: str, spec: ParamSpec, stages: dict[str, Any]
                 ) -> None:
    if stage not in stages:
        raise ConfigError(f"tune.space.{key}: the plan has no stage {stage!r} (its stages: "
                          f"{list(stages)})")
    fields = type(stages[stage]).model_fields
    if field not in fields:
        near = difflib.get_close_matches(field, list(fields), n=1)
        hint = f"; did you mean stages.{stage}.{near[0]}?" if near else ""
        raise ConfigError(f"tune.space.{key}: names no config field (stage {stage!r} has "
                          f"{sorted(fields)}){hint}")
    kinds = _scalar_kinds(fields[field].annotation) - {type(None)}
    if not kinds <= {int, float, bool, str}:
        raise ConfigError(f"tune.space.{key}: stages.{stage}.{field} is not a scalar field "
                          f"(type {fields[field].annotation}); only scalars can be searched")
    if spec.type == "float" and float not in kinds:
        raise ConfigError(f"tune.space.{key}: stages.{stage}.{field} takes {_names(kinds)}, "
                          f"so a float range does not fit; use type "
                          f"{'int or ' if int in kinds else ''}choice")
    if spec.type == "int" and not kinds & {int, float}:
        raise ConfigError(f"tune.space.{key}: stages.{stage}.{field} takes {_names(kinds)}; "
                          f"use type choice")


def _names(kinds: set[type]) -> str:
    return " or ".join(sorted(k.__name__ for k in kinds))


def ends(spec: ParamSpec) -> list[Any]:
    """The values at the edges of a dimension: low and high, or every choice."""
    if spec.type == "choice":
        return list(spec.values or [])
    if spec.type == "int":
        return [int(spec.low), int(spec.high)]
    return [float(spec.low), float(spec.high)]


def apply(stages: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The plan's stage configs with ``params`` (dotted keys -> values) set and validated.

    Raises :class:`ConfigError` naming the stage and the values when the result is invalid.
    """
    updates: dict[str, dict[str, Any]] = {}
    for key, value in params.items():
        stage, field = split_key(key)
        updates.setdefault(stage, {})[field] = value
    out = dict(stages)
    for stage, fields in updates.items():
        base: BaseModel = stages[stage]
        try:
            out[stage] = type(base).model_validate({**base.model_dump(), **fields})
        except ValidationError as err:
            bad = "; ".join(f"{'.'.join(map(str, e['loc'])) or stage}: {e['msg']}"
                            for e in err.errors())
            raise ConfigError(f"tune.space: stages.{stage} with {fields} is invalid: "
                              f"{bad}") from None
    return out


def check_space(space: dict[str, ParamSpec], stages: dict[str, Any]) -> None:
    """Every check of the space against the plan's stage configs (see the module doc)."""
    if not space:
        raise ConfigError("tune.space: empty; name at least one plan field to search, e.g. "
                          "stages.inter.k: {type: int, low: 4, high: 32}")
    for key, spec in space.items():
        stage, field = split_key(key)
        _check_field(key, stage, field, spec, stages)
        for value in ends(spec):
            try:
                apply(stages, {key: value})
            except ConfigError as err:
                raise ConfigError(f"tune.space.{key}: the value {value!r} at the edge of the "
                                  f"range is not valid for the plan: {err}") from None
    keys = list(space)
    corners = itertools.product(*(ends(space[k]) for k in keys))
    for combo in itertools.islice(corners, MAX_CORNERS):
        params = dict(zip(keys, combo))
        try:
            apply(stages, params)
        except ConfigError as err:
            raise ConfigError(f"tune.space: the corner {params} gives an invalid plan "
                              f"({err}); narrow the ranges so that every combination is "
                              f"valid") from None


def tune_space(space: dict[str, ParamSpec]) -> dict[str, Any]:
    """The Tune ``param_space`` of a checked space (OptunaSearch converts it to Optuna's)."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, spec in space.items():
        if spec.type == "choice":
            out[key] = tune.choice(list(spec.values or []))
        elif spec.type == "int":
            low, high = int(spec.low), int(spec.high)
            if spec.log:
                out[key] = tune.lograndint(low, high + 1)
            elif spec.step:
                out[key] = tune.qrandint(low, high, int(spec.step))
            else:
                out[key] = tune.randint(low, high + 1)          # upper bound exclusive
        elif spec.log:
            out[key] = tune.loguniform(spec.low, spec.high)
        elif spec.step:
            out[key] = tune.quniform(spec.low, spec.high, spec.step)
        else:
            out[key] = tune.uniform(spec.low, spec.high)
    return out


def check_points(points: list[dict[str, Any]], space: dict[str, ParamSpec],
                 stages: dict[str, Any]) -> list[dict[str, Any]]:
    """Each configuration of ``tune.points_to_evaluate`` sets exactly the space's keys to
    values the plan accepts; returns them as the fields' types (YAML reads ``1e-7`` as a
    string, the field as a float)."""
    out = []
    for i, point in enumerate(points):
        if set(point) != set(space):
            raise ConfigError(f"tune.points_to_evaluate[{i}]: expected the keys "
                              f"{sorted(space)}, got {sorted(point)}")
        try:
            applied = apply(stages, point)
        except ConfigError as err:
            raise ConfigError(f"tune.points_to_evaluate[{i}]: {err}") from None
        out.append({k: getattr(applied[split_key(k)[0]], split_key(k)[1]) for k in point})
    return out
