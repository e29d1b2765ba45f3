"""The config machinery every section shares: strict models, YAML files, ``--set``
overrides, dotted-field checks with suggestions, resolved dumps."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError

from emoray.errors import ConfigError


def _plain_folder_name(cls, v: str) -> str:
    """A run or campaign name becomes one folder: no separators, not '.' or '..'."""
    if "/" in v or "\\" in v or v in (".", ".."):
        raise PydanticCustomError("run_name", "expected a plain folder name (no '/')")
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"synth.subjects=6"`` -> (["synth", "subjects"], 6); values are YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. synth.subjects=6")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: {key!r} is not a dotted field name")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({exc})") from None
    return key.split("."), value


def _check_path(model: type[BaseModel], parts: list[str], full: str) -> None:
    """Raise a ConfigError with a suggestion if ``parts`` names no field of ``model``."""
    cls: Any = model
    for i, part in enumerate(parts):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return  # inside a free-form dict (e.g. ingest.options): anything goes
        fields = cls.model_fields
        if part not in fields:
            prefix = ".".join(parts[:i])
            near = difflib.get_close_matches(part, list(fields), n=1)
            hint = f"; did you mean {'.'.join(parts[:i] + near)!r}?" if near else ""
            raise ConfigError(f"unknown config field {full!r}: {prefix or 'the config'} has "
                              f"no field {part!r} (fields: {sorted(fields)}){hint}")
        cls = fields[part].annotation


def _set_in(tree: dict, parts: list[str], value: Any) -> None:
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections at the top "
                          f"level, found {type(data).__name__}")
    return data


def dump(cfg: BaseModel, path: str | Path, sections: list[str] | None = None) -> Path:
    """Write the resolved config (optionally only some sections) as YAML."""
    data = cfg.model_dump(mode="json")
    if sections is not None:
        data = {k: v for k, v in data.items() if k in sections}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def merge_trees(base: dict, over: dict) -> dict:
    """Deep-merge two plain config trees (``over`` wins)."""
    return _merge(base, over)
