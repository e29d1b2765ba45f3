"""Model bundles: a checkpoint folder that alone is enough to rebuild a model and its inputs.

A bundle is a folder with two files:

``model.pt``
    The model's ``state_dict`` (CPU tensors; loaded with ``weights_only=True``).
``bundle.json``
    ``{"format", "model", "stage", "emoray_version", "model_config", "contract",
    "label_names", "metrics"}``: the registered name of the whole model
    (:mod:`emoray.models.registry`) and the keyword arguments that rebuild it, the
    :class:`~emoray.config.contract.PreprocessContract` (as JSON) its features were made with,
    the label names of its outputs and the metrics of the epoch it was saved at.

A Ray Train checkpoint of a stage is such a folder (plus, during training, a
``train_state.pt`` with the optimizer state and epoch, which serving ignores).

Loading a bundle needs the model registry only, never the training code. Bundles written
before bundles named their model (emoray 0.1's first releases) carry only the stage; they
are read through :data:`LEGACY_MODEL_OF_STAGE`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from emoray import __version__
from emoray.config.contract import PreprocessContract
from emoray.data.subject_norm import STATS_FILE, SubjectStats
from emoray.errors import ConfigError
from emoray.models import create_model

BUNDLE_FORMAT = 1
MODEL_FILE = "model.pt"
META_FILE = "bundle.json"
TRAIN_STATE_FILE = "train_state.pt"
#: the model of a bundle that names only its stage (written before ``model`` was saved);
#: frozen: new stages save their model's name
LEGACY_MODEL_OF_STAGE = {"fusion": "fusion", "intra": "jmml", "inter": "jmml",
                         "classifier": "jmml"}
#: the stages whose bundles answered predictions, for bundles without ``servable``
LEGACY_SERVABLE_STAGES = ("fusion", "classifier")


def save_bundle(directory: str | Path, model_state: dict[str, torch.Tensor], *,
                model_config: dict[str, Any], contract: PreprocessContract | dict | str,
                label_names: list[str], metrics: dict[str, Any], stage: str, model: str,
                servable: bool = False, extra: dict[str, Any] | None = None,
                files: dict[str, bytes] | None = None) -> Path:
    """Write ``model.pt`` and ``bundle.json`` into ``directory`` (created if needed).

    Parameters
    ----------
    directory : str | Path
        The bundle folder.
    model_state : dict[str, Tensor]
        The model's ``state_dict`` (moved to CPU here).
    model_config : dict
        What :func:`load_bundle` passes to the model class to rebuild it (JSON-able).
    contract : PreprocessContract | dict | str
        The preprocessing contract of the training features (validated here).
    label_names : list[str]
        Class names in logit order.
    metrics : dict
        Metrics at saving time (JSON-able scalars).
    stage : str
        The training stage that produced the bundle (``fusion``, ``intra`` ...).
    model : str
        The registered name of the whole model (``fusion``, ``jmml`` ...).
    servable : bool
        Whether the bundle answers predictions (its stage is the last of a plan).
    extra : dict | None
        More JSON-able entries of ``bundle.json`` (e.g. JMML's ``targets``).
    files : dict[str, bytes] | None
        More files of the bundle by name, e.g. the subject statistics
        (:data:`~emoray.data.subject_norm.STATS_FILE`) that :func:`load_bundle` attaches to
        the model as ``subject_stats``.

    Returns
    -------
    Path
        ``directory``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    contract = _as_contract(contract, "contract")
    state = {k: v.detach().to("cpu") for k, v in model_state.items()}
    torch.save(state, directory / MODEL_FILE)
    for name, data in (files or {}).items():
        (directory / name).write_bytes(data)
    meta = {"format": BUNDLE_FORMAT, "model": model, "stage": stage, "servable": servable, "emoray_version": __version__,
            "model_config": model_config, "contract": json.loads(contract.to_json()),
            "label_names": list(label_names), "metrics": dict(metrics), **(extra or {})}
    tmp = directory / (META_FILE + ".tmp")
    # no sort_keys: the key order of the contract's eeg.bands is the band-feature order
    tmp.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    tmp.replace(directory / META_FILE)
    return directory


def read_bundle_meta(path: str | Path) -> dict[str, Any]:
    """The ``bundle.json`` of a bundle folder, with ``contract`` parsed to a
    :class:`PreprocessContract`. Raises :class:`ConfigError` naming the folder."""
    path = Path(path)
    file = path / META_FILE
    if not file.is_file() or not (path / MODEL_FILE).is_file():
        raise ConfigError(f"checkpoint {path}: not a model bundle (expected {META_FILE} "
                          f"and {MODEL_FILE} in it)")
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"checkpoint {path}: cannot read {META_FILE}: {err}") from None
    if meta.get("format") != BUNDLE_FORMAT:
        raise ConfigError(f"checkpoint {path}: bundle format {meta.get('format')!r}, this "
                          f"emoray reads format {BUNDLE_FORMAT}")
    meta["contract"] = _as_contract(meta.get("contract"), f"checkpoint {path}")
    if "model" not in meta:
        stage = meta.get("stage")
        if stage not in LEGACY_MODEL_OF_STAGE:
            raise ConfigError(f"checkpoint {path}: {META_FILE} names no model and its stage "
                              f"{stage!r} has no known model (known stages: "
                              f"{sorted(LEGACY_MODEL_OF_STAGE)})")
        meta["model"] = LEGACY_MODEL_OF_STAGE[stage]
    return meta


def servable(meta: dict[str, Any]) -> bool:
    """Whether a bundle (its :func:`read_bundle_meta`) answers predictions."""
    if "servable" in meta:
        return bool(meta["servable"])
    return meta.get("stage") in LEGACY_SERVABLE_STAGES


def load_servable(path: str | Path, source: str | Path | None = None,
                  device: str | torch.device | None = None):
    """:func:`load_bundle` of a bundle that answers predictions, on ``device`` (None: CUDA
    when present, else CPU); ConfigError naming ``source`` (default: the folder) for a
    bundle of a stage that is not the last of a plan."""
    meta = read_bundle_meta(path)
    if not servable(meta):
        raise ConfigError(f"checkpoint {source or path}: stage {meta.get('stage')!r} has no "
                          f"predictor; serve the last stage of a plan (a bundle its stage "
                          f"marks servable: a fusion or a JMML classifier bundle)")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return load_bundle(path, map_location=device)


def contract_mismatch(a: PreprocessContract | dict, b: PreprocessContract | dict) -> list[str]:
    """Dotted names of the contract fields where ``a`` and ``b`` differ (empty: equal)."""
    da = _as_contract(a, "contract").model_dump(mode="json")
    db = _as_contract(b, "contract").model_dump(mode="json")
    return _diff(da, db, "")


def check_contract(bundle_contract: PreprocessContract | dict,
                   feature_meta: dict[str, Any], *, source: str = "checkpoint") -> None:
    """Raise :class:`ConfigError` naming every field where a bundle's contract differs from
    the contract in ``feature_meta`` (the metadata of feature shards)."""
    if "contract" not in feature_meta:
        raise ConfigError(f"{source}: the feature metadata holds no preprocessing contract")
    bad = contract_mismatch(bundle_contract, feature_meta["contract"])
    if bad:
        raise ConfigError(f"{source}: its preprocessing contract does not match the "
                          f"features' contract in {', '.join(bad)}; re-preprocess the data "
                          f"with the checkpoint's contract or retrain")


def load_bundle(path: str | Path, *, feature_meta: dict[str, Any] | None = None,
                map_location: str | torch.device = "cpu"):
    """Rebuild the model of a bundle folder, in eval mode.

    Parameters
    ----------
    path : str | Path
        A bundle folder (e.g. ``Result.checkpoint.path`` of a stage).
    feature_meta : dict | None
        If given, the metadata of the features the model is about to see; a contract that
        does not match raises :class:`ConfigError` naming the differing fields.
    map_location : str | torch.device
        Device of the loaded weights.

    Returns
    -------
    (torch.nn.Module, dict)
        The model and the bundle metadata (``contract`` as a :class:`PreprocessContract`).
    """
    meta = read_bundle_meta(path)
    if feature_meta is not None:
        check_contract(meta["contract"], feature_meta, source=f"checkpoint {path}")
    model = create_model(meta["model"], meta["model_config"], source=f"checkpoint {path}")
    state = torch.load(Path(path) / MODEL_FILE, map_location=map_location, weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"checkpoint {path}: weights do not fit the model config (missing "
                          f"{list(missing)[:5]}, unexpected {list(unexpected)[:5]})")
    if (Path(path) / STATS_FILE).is_file():
        model.subject_stats = SubjectStats.load(Path(path) / STATS_FILE)
    return model.to(map_location).eval(), meta


def _as_contract(value: Any, source: str) -> PreprocessContract:
    if isinstance(value, PreprocessContract):
        return value
    if isinstance(value, dict):
        return PreprocessContract.from_json(json.dumps(value), source=source)
    if isinstance(value, (str, bytes)):
        return PreprocessContract.from_json(value, source=source)
    raise ConfigError(f"{source}: expected a preprocessing contract, got "
                      f"{type(value).__name__}")


def _diff(a: Any, b: Any, prefix: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in a or key not in b:
                out.append(name)
            else:
                out.extend(_diff(a[key], b[key], name))
        if not out and list(a) != list(b) and prefix.endswith("bands"):
            out.append(prefix)       # same bands in another order: another feature layout
        return out
    return [] if a == b else [prefix]
