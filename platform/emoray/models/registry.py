"""The registries of encoders and whole models: ``register`` in the model's own file,
``create`` by name (timm's ``register_model`` / ``create_model``).

The registries are filled one way: :mod:`emoray.models` (the package's ``__init__``)
imports every model file, and each file registers itself; nothing here imports a model.
A family of encoders made on demand (``braindecode:<Model>``) registers a *resolver* for
its prefix (:func:`register_resolver`); its members are not listed by :func:`encoder_names`.
A bundle names its whole model (``bundle.json``'s ``model``), and
:func:`emoray.bundle.load_bundle` rebuilds it with :func:`create_model`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from torch import nn

from emoray.errors import ConfigError
from emoray.models.base import BaseEncoder

_ENCODERS: dict[str, type[BaseEncoder]] = {}
#: prefix -> resolver of ``prefix:<member>`` names (e.g. ``braindecode``)
_RESOLVERS: dict[str, Callable[[str], type[BaseEncoder]]] = {}


def register_encoder(cls: type[BaseEncoder]) -> type[BaseEncoder]:
    """Class decorator: make an encoder available by ``cls.name``."""
    _ENCODERS[cls.name] = cls
    return cls


def register_resolver(prefix: str, resolve: Callable[[str], type[BaseEncoder]]) -> None:
    """Make the encoders named ``prefix:<member>`` available: ``resolve(member)`` returns
    the class (made on first use and cached by the resolver) or raises :class:`ConfigError`."""
    _RESOLVERS[prefix] = resolve


def encoder_names() -> list[str]:
    """The registered encoders (not the members of a resolver's family)."""
    return sorted(_ENCODERS)


def encoder_class(name: str) -> type[BaseEncoder]:
    if name in _ENCODERS:
        return _ENCODERS[name]
    prefix, sep, member = str(name).partition(":")
    if sep and prefix in _RESOLVERS:
        return _RESOLVERS[prefix](member)
    families = "".join(f" or {p}:<model>" for p in sorted(_RESOLVERS))
    raise ConfigError(f"unknown encoder {name!r}; expected one of {sorted(_ENCODERS)}"
                      f"{families}")


def create_encoder(name: str, preset: str = "tiny", weights: str | Path | None = None,
                   **kwargs: Any) -> BaseEncoder:
    """Build encoder ``name`` at ``preset`` size; ``kwargs`` are contract fields and size
    overrides (fields the class lists in ``optional_fields`` may be left out). Unknown
    names, presets or keyword arguments raise :class:`ConfigError`."""
    cls = encoder_class(name)
    if preset not in cls.presets:
        raise ConfigError(f"encoder {name!r} has no preset {preset!r}; expected one of "
                          f"{sorted(cls.presets)}")
    config = {**cls.presets[preset], **kwargs}
    allowed = set(cls.contract_fields) | set(cls.presets[preset])
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ConfigError(f"encoder {name!r} does not take {unknown}; its inputs are "
                          f"{list(cls.contract_fields)} and sizes {sorted(cls.presets[preset])}")
    optional = getattr(cls, "optional_fields", ())
    missing = [f for f in cls.contract_fields if f not in config and f not in optional]
    if missing:
        raise ConfigError(f"encoder {name!r} needs its input contract {missing}")
    model = cls(**config)
    model._config = dict(config)
    if weights is not None:
        model.load_weights(weights)
    return model


_MODELS: dict[str, type[nn.Module]] = {}


def register_model(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a whole model (a class with ``from_config(dict)``,
    ``config() -> dict`` and ``example_config() -> dict``, a small configuration the
    registry test builds) available by ``name``, the name its bundles carry."""
    def register(cls: type[nn.Module]) -> type[nn.Module]:
        for method in ("from_config", "config", "example_config"):
            if not callable(getattr(cls, method, None)):
                raise TypeError(f"model {name!r} ({cls.__name__}) needs a {method}() method")
        cls.model_name = name
        _MODELS[name] = cls
        return cls
    return register


def model_names() -> list[str]:
    return sorted(_MODELS)


def model_class(name: str, source: str = "model") -> type[nn.Module]:
    """The class registered as ``name``; an unknown name raises :class:`ConfigError`
    naming ``source`` (e.g. the bundle) and the known models."""
    if name not in _MODELS:
        raise ConfigError(f"{source}: unknown model {name!r} (known: {model_names()})")
    return _MODELS[name]


def create_model(name: str, config: dict[str, Any], source: str = "model") -> nn.Module:
    """Rebuild whole model ``name`` from its saved ``config``."""
    return model_class(name, source).from_config(config)
