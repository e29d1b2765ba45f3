"""``emoray models``: every registered encoder and whole model, with its size and cost.

One row per (model, preset): the parameter count, the FLOPs of one forward pass on one
sample, and the input, all at the *default* contract (:class:`PreprocessContract` with
EAV's 30 channels: EEG 30 x 500 at 100 Hz, log-mel 128 x 501, 25 video frames of 224 x
224), so the numbers are those a default run trains. ``--json`` prints the same rows for
machines.

torch counts FLOPs (:class:`~torch.utils.flop_counter.FlopCounterMode`); what is written
by hand here is building every model at its real contract and keeping that cheap:

* an encoder's contract is the one the fusion model gives it
  (:meth:`FusionModel.from_contract` with that encoder as the modality's architecture),
  so the two cannot drift apart; a whole model is built as its training stages build it;
* models are built and run on the ``meta`` device (shapes only: no memory, no compute),
  and on the CPU at batch 1 where a model needs real values (``.item()``, a copy);
* attention runs on the math kernel while counting: the fused CPU attention kernels are
  not counted by the FLOP counter, the math kernel's matrix products are.
"""

from __future__ import annotations

import argparse
import functools
import json
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from emoray.config.contract import EEGContract, PreprocessContract
from emoray.errors import ConfigError

PRESETS = ("tiny", "small", "base")
#: braindecode encoders listed without ``--all``
BRAINDECODE_SHOWN = ("EEGNet", "ShallowFBCSPNet", "EEGConformer")


def default_contract() -> PreprocessContract:
    """The default preprocessing contract, with EAV's 30 EEG channels named."""
    from emoray.datasets.eav_layout import EAV_CHANNELS

    return PreprocessContract(eeg=EEGContract(channels=list(EAV_CHANNELS)))


def _built(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` on ``meta``, else (a model that needs real values) on the CPU."""
    try:
        with torch.device("meta"):
            return build()
    except Exception:                   # noqa: BLE001 - the CPU build raises the real error
        return build()


def measure(build: Callable[[], nn.Module], columns: dict[str, tuple[int, ...]],
            run: Callable[[nn.Module, dict[str, torch.Tensor]], Any]) -> dict[str, Any]:
    """Parameters and FLOPs of one forward at batch 1: on ``meta``, else on the CPU.

    Parameters
    ----------
    build : callable
        Makes the model (called under the device context).
    columns : dict
        Input name -> one sample's shape.
    run : callable
        ``run(model, inputs)``: one forward pass.
    """
    error: Exception | None = None
    for device in ("meta", "cpu"):
        try:
            with torch.device(device):
                model = build().eval()
            inputs = {c: torch.randn(1, *shape, device=device) for c, shape in columns.items()}
            with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
                run(model, inputs)
        except Exception as exc:       # a model that needs real values: retry on the CPU
            error = exc
            continue
        return {"params": sum(p.numel() for p in model.parameters()),
                "flops": int(counter.get_total_flops()), "device": device}
    raise error                        # type: ignore[misc]


def encoder_contract(name: str, contract: PreprocessContract) -> dict[str, Any]:
    """The contract keyword arguments encoder ``name`` gets under ``contract``."""
    from emoray.config.train import FusionStageConfig
    from emoray.models import FusionModel, encoder_class

    cls = encoder_class(name)
    if cls.modality not in ("eeg", "speech", "video"):      # feature vectors (JMML's MLPs)
        stats = {"in_features": contract.output_shapes(0)["audio_stats"][0]}
        return {k: v for k, v in stats.items() if k in cls.contract_fields}
    cfg = FusionStageConfig(modalities=[cls.modality], architectures={cls.modality: name})
    model = _built(functools.partial(FusionModel.from_contract, contract, n_classes=2, cfg=cfg))
    return model.config()["encoders"][cls.modality]["kwargs"]


def encoder_rows(names: list[str], contract: PreprocessContract) -> list[dict[str, Any]]:
    """One row per (encoder, preset); presets with the same sizes are measured once."""
    from emoray.models import create_encoder, encoder_class

    rows = []
    for name in names:
        cls = encoder_class(name)
        kwargs = encoder_contract(name, contract)
        shape = tuple(cls.input_shape(**kwargs))
        seen: dict[str, dict[str, Any]] = {}
        for preset in PRESETS:
            key = json.dumps(cls.presets[preset], sort_keys=True, default=str)
            if key not in seen:
                seen[key] = measure(functools.partial(create_encoder, name, preset, **kwargs),
                                    {"x": shape}, lambda m, x: m(x["x"]))
            shown = {k: v for k, v in kwargs.items() if k != "ch_names"}   # 30 names
            rows.append({"kind": "encoder", "name": name, "preset": preset,
                         "modality": cls.modality,
                         "input": {cls.input_column or "features": list(shape)},
                         "contract": shown, **seen[key]})
    return rows


def _fusion(contract: PreprocessContract, preset: str) -> nn.Module:
    from emoray.config.train import FusionStageConfig
    from emoray.labels import EAV_CLASSES
    from emoray.models import FusionModel

    cfg = FusionStageConfig(encoders={m: preset for m in ("eeg", "speech", "video")})
    return FusionModel.from_contract(contract, n_classes=len(EAV_CLASSES), cfg=cfg)


def _jmml(contract: PreprocessContract, preset: str) -> nn.Module:
    import math

    from emoray.config.train import InterStageConfig, IntraStageConfig
    from emoray.models import JMMLModel
    from emoray.models.jmml_model import PATHS

    intra, inter = IntraStageConfig(), InterStageConfig()
    shapes = contract.output_shapes(len(contract.eeg.channels or []))
    features = {"speech": "audio_stats", "eeg": intra.eeg_feature}
    return JMMLModel(features, {m: math.prod(shapes[c]) for m, c in features.items()},
                     {m: preset for m in features}, list(intra.targets),
                     cae={"k": inter.k, "hidden": inter.hidden, "dropout": inter.dropout},
                     classifiers=list(PATHS))


#: whole model -> how its training stages build it at a contract and preset
_WHOLE: dict[str, Callable[[PreprocessContract, str], nn.Module]] = {
    "fusion": _fusion, "jmml": _jmml}


def _run_whole(model: nn.Module, batch: dict[str, torch.Tensor]) -> Any:
    if type(model).forward is not nn.Module.forward:
        return model(batch)
    return model.predict(batch)                    # a model served through predict()


def model_rows(contract: PreprocessContract) -> list[dict[str, Any]]:
    """One row per (whole model, preset): every encoder of the model at that preset."""
    from emoray.models import model_class, model_names

    shapes = contract.output_shapes(len(contract.eeg.channels or []))
    rows = []
    for name in model_names():
        make = _WHOLE.get(name)
        for preset in PRESETS:
            if make is None:                       # no real contract known: its example
                cls = model_class(name)
                build = functools.partial(cls.from_config, cls.example_config())
            else:
                build = functools.partial(make, contract, preset)
            model = _built(build)
            used = dict(getattr(model, "columns", None) or getattr(model, "features", {}))
            columns = {c: shapes[c] for c in used.values()}
            rows.append({"kind": "model", "name": name, "preset": preset,
                         "modality": "+".join(used),
                         "input": {c: list(s) for c, s in columns.items()},
                         "config": "default contract" if make else "example config",
                         **measure(build, columns, _run_whole)})
    return rows


def collect(all_braindecode: bool = False) -> dict[str, Any]:
    """Every row (see the module notes) and the braindecode models refused at the contract."""
    from emoray.models import braindecode_names, encoder_names

    contract = default_contract()
    rows = encoder_rows(encoder_names(), contract)
    refused: dict[str, str] = {}
    for model in (braindecode_names(include_refused=True) if all_braindecode
                  else BRAINDECODE_SHOWN):
        try:
            rows += encoder_rows([f"braindecode:{model}"], contract)
        except ConfigError as exc:
            refused[f"braindecode:{model}"] = str(exc)
    shapes = contract.output_shapes(len(contract.eeg.channels or []))
    return {"contract": {"fingerprint": contract.fingerprint(),
                         "shapes": {k: list(v) for k, v in shapes.items()}},
            "encoders": rows, "models": model_rows(contract), "refused": refused}


def _count(n: float, unit: str = "") -> str:
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.3g}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def format_table(result: dict[str, Any]) -> str:
    """The rows as a table for a person."""
    shapes = result["contract"]["shapes"]
    lines = ["FLOPs of one forward on one sample at the default contract: eeg "
             f"{tuple(shapes['eeg'])}, logmel {tuple(shapes['logmel'])}, video "
             f"{tuple(shapes['video'])}", ""]
    header = (f"{'kind':<8} {'name':<28} {'preset':<6} {'modality':<16} {'params':>8} "
              f"{'FLOPs':>8}  input")
    lines += [header, "-" * len(header)]
    for row in result["encoders"] + result["models"]:
        shown = ", ".join(f"{c} {tuple(s)}" for c, s in row["input"].items())
        if row.get("config") == "example config":
            shown += " (example config)"
        lines.append(f"{row['kind']:<8} {row['name']:<28} {row['preset']:<6} "
                     f"{row['modality']:<16} {_count(row['params']):>8} "
                     f"{_count(row['flops']):>8}  {shown}")
    for reason in result["refused"].values():
        lines.append(f"refused  {reason}")
    lines.append("")
    lines.append("architectures.eeg takes braindecode:<Model>, any braindecode EEG model "
                 "(`emoray models --all`: every one, built at the default contract or refused)")
    return "\n".join(lines)


def run_models(args: argparse.Namespace) -> int:
    """``emoray models [--all] [--json]``."""
    result = collect(all_braindecode=args.all)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0
