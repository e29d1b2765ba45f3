"""braindecode's EEG models as emoray encoders: ``braindecode:<Model>`` in ``architectures.eeg``.

``architectures: {eeg: braindecode:EEGConformer}`` builds braindecode's ``EEGConformer``
from the features' EEG contract (``n_chans``, ``sfreq``, ``n_times`` and the channel names
as ``chs_info``) and uses what reaches its ``final_layer`` as the encoder's tokens. The
classes are made on demand, one per model name (:func:`braindecode_encoder`, cached), and
found through the registry's resolver for the ``braindecode:`` prefix, so
:func:`~emoray.models.encoder_names` keeps listing emoray's own encoders and importing
:mod:`emoray.models` does not import braindecode (about 4 s).

What braindecode does not do, and is written here by hand:

* **features instead of logits.** braindecode models are classifiers; by convention (1.x)
  their head is the module ``final_layer``. It is replaced by :class:`_Tap`, which stops
  the forward pass where the head would run and hands back its input. A list of heads
  (ATCNet's one per sliding window) becomes identities and the model's own aggregate of
  their inputs is the output.
* **the token layout.** The head's input is ``(B, D)``, ``(B, F, T[, 1])`` or
  ``(B, T, D)`` depending on the model. The head's first layer tells which axis is the
  feature axis (a ``Linear`` on the last axis; a convolution, pooling or batch norm on
  axis 1); a head that begins by flattening gets one token of what it would flatten.
* **refusals in one line, before training.** braindecode raises deep inside a
  constructor or a forward (an einops pattern, a kernel longer than the input). The build
  and a dry forward run when the encoder is made (when the fusion model is built from the
  contract, before any worker starts), and any failure becomes a one-line
  :class:`~emoray.errors.ConfigError` naming the model and the contract. Models for other
  signals (sEMG, MEG in braindecode's model table) and models that download files when
  built (:data:`_NETWORK`) are refused by name: a bundle must rebuild the same network
  offline.
* **channel positions.** ``chs_info`` is made from the channel names and MNE's 10-20
  montage (:func:`emoray.io.eeg.standard_montage`), as a recording's would be.
* **quiet construction.** Warnings and log records of braindecode and MNE are dropped
  while a model is imported and built.
* **sizes.** ``base`` is braindecode's defaults; ``tiny``/``small`` narrow the width
  arguments of the models in :data:`_WIDTHS`; every other model is the same at all three
  presets.

Examples
--------
>>> from emoray.models import create_encoder
>>> enc = create_encoder("braindecode:ShallowFBCSPNet", "tiny", n_chans=30, sfreq=100.0,
...                      n_times=500)
>>> enc(torch.randn(2, 30, 500)).tokens.shape        # 27 time tokens of 10 filters
torch.Size([2, 27, 10])
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import warnings
from typing import Any, ClassVar, Iterator

import torch
from torch import nn

from emoray.errors import ConfigError
from emoray.models.base import BaseEncoder, EncoderOutput
from emoray.models.layers import check_input, check_positive
from emoray.models.registry import register_resolver

PREFIX = "braindecode"
#: width given to braindecode's ``n_outputs``: the head it sizes is dropped, but a few
#: models (BDTCN, SSTDPN) also size the last feature layer with it
_N_OUTPUTS = 64
#: names braindecode has retired -> the class that replaced them
_ALIASES = {"EEGNetv4": "EEGNet"}
#: models that fetch files from the network when they are built (found in their source)
_NETWORK = {
    "REVE": "downloads its electrode-position bank from huggingface.co when built",
    "STEEGFormer": "downloads its channel vocabulary from the Hugging Face Hub when built "
                   "with channel names",
}
#: model -> width argument -> (tiny, small); base is braindecode's default
_WIDTHS: dict[str, dict[str, tuple[int, int]]] = {
    "EEGNet": {"F1": (4, 6)},
    "ShallowFBCSPNet": {"n_filters_time": (10, 20), "n_filters_spat": (10, 20)},
    "EEGConformer": {"n_filters_time": (20, 40), "num_layers": (1, 3), "num_heads": (4, 10)},
    "ATCNet": {"conv_block_n_filters": (4, 8)},
    "Deep4Net": {"n_filters_time": (8, 12), "n_filters_spat": (8, 12), "n_filters_2": (16, 25),
                 "n_filters_3": (32, 50), "n_filters_4": (64, 100)},
    "EEGNeX": {"filter_1": (4, 8), "filter_2": (8, 16)},
    "EEGInceptionERP": {"n_filters": (4, 6)},
    "TIDNet": {"t_filters": (8, 16), "s_growth": (6, 12)},
}
_QUIET_LOGGERS = ("braindecode", "mne", "pooch", "huggingface_hub")
_SKIP = (nn.Dropout, nn.Identity, nn.ReLU, nn.ELU, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.Tanh,
         nn.Sigmoid, nn.Softmax, nn.LogSoftmax)
_CHANNEL_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm,
                  nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d,
                  nn.AdaptiveMaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.MaxPool1d, nn.MaxPool2d)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Drop warnings and braindecode/MNE log records below ERROR (model import and build)."""
    loggers = [logging.getLogger(n) for n in _QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


@functools.lru_cache(maxsize=1)
def _models() -> dict[str, type[nn.Module]]:
    """braindecode's model table (name -> class), imported once, quietly."""
    with _quiet():
        from braindecode.models.util import _init_models_dict, models_dict

        if not models_dict:
            _init_models_dict()
    return dict(models_dict)


@functools.lru_cache(maxsize=1)
def _signal_of() -> dict[str, str]:
    """Model -> the signal braindecode's model table lists it for (``EEG``, ``sEMG``, ...)."""
    with _quiet():
        from braindecode.models.util import get_summary_table

        table = get_summary_table()
    return {str(k).strip(): str(v).strip() for k, v in table["Modality"].items()}


def _static_refusal(model: str) -> str | None:
    """Why ``model`` can never be an emoray EEG encoder, or None."""
    if model in _NETWORK:
        return _NETWORK[model] + " (emoray builds models offline)"
    signal = _signal_of().get(model, "EEG")
    if "EEG" not in signal:
        return f"is a {signal} model in braindecode's model table, not an EEG one"
    return None


def braindecode_names(include_refused: bool = False) -> list[str]:
    """The braindecode models that may be used as ``braindecode:<name>``: EEG models that
    build offline (``include_refused``: every model of braindecode's table). Whether one
    accepts a given contract is known only when it is built (:func:`braindecode_encoder`),
    e.g. ``Labram`` needs its own 128-channel order."""
    return sorted(m for m in _models() if include_refused or _static_refusal(m) is None)


@functools.lru_cache(maxsize=None)
def braindecode_encoder(model: str) -> type["BraindecodeEncoder"]:
    """The encoder class of braindecode model ``model`` (registered as the resolver of
    ``braindecode:<model>``); unknown or unusable models raise :class:`ConfigError`."""
    target = _ALIASES.get(model, model)
    if target not in _models():
        raise ConfigError(f"unknown braindecode model {model!r}; available: "
                          f"{', '.join(braindecode_names())}")
    reason = _static_refusal(target)
    if reason:
        raise ConfigError(f"encoder '{PREFIX}:{model}': braindecode's {target} {reason}")
    cls = _models()[target]
    return type(f"Braindecode{model}", (BraindecodeEncoder,), {
        "name": f"{PREFIX}:{model}", "model_class": cls, "presets": _presets(target, cls),
        "__doc__": f"braindecode's ``{target}`` as an EEG encoder "
                   f"(see :class:`BraindecodeEncoder`)."})


def _presets(model: str, cls: type[nn.Module]) -> dict[str, dict[str, Any]]:
    widths = _WIDTHS.get(model, {})
    defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()}
    return {"tiny": {k: v[0] for k, v in widths.items()},
            "small": {k: v[1] for k, v in widths.items()},
            "base": {k: defaults[k] for k in widths}}


def _chs_info(ch_names: list[str], sfreq: float) -> list[dict[str, Any]]:
    """MNE channel records with 10-20 positions (NaN where a name is not in the montage)."""
    import mne

    from emoray.io.eeg import standard_montage

    with _quiet():
        info = mne.create_info(list(ch_names), float(sfreq), "eeg")
        info.set_montage(standard_montage(), on_missing="ignore")
    return [dict(ch) for ch in info["chs"]]


def _one_line(exc: BaseException) -> str:
    lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


class _Tapped(BaseException):
    """Carries the head's input out of the model's forward (a BaseException, so that a
    model's own ``except Exception`` does not swallow it)."""

    def __init__(self, x: Any):
        super().__init__()
        self.x = x


class _Tap(nn.Module):
    """Stands where braindecode's ``final_layer`` was: stops the forward with its input
    (the first argument: EEGDINO's head also takes the channel count)."""

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        raise _Tapped(x)


def _layout(head: nn.Module, x: torch.Tensor) -> str:
    """Where the features of the head's input ``x`` are, from the head's first layer:
    ``last`` axis (a Linear), axis 1 (``channels``: conv, pooling, batch norm), or
    ``flat`` (one token of everything, e.g. a head that begins with a Flatten)."""
    for mod in head.modules():
        if isinstance(mod, nn.Linear):
            return "last" if mod.in_features == x.shape[-1] else "flat"
        if isinstance(mod, _CHANNEL_FIRST):
            channels = getattr(mod, "in_channels", getattr(mod, "num_features", x.shape[1]))
            return "channels" if channels == x.shape[1] else "flat"
        if isinstance(mod, _SKIP) or any(True for _ in mod.children()):
            continue             # a pass-through layer, or a container: look further
        return "flat"            # a reshaping layer (Flatten, Rearrange, ...) comes first
    return "flat"


def _as_tokens(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The head's input -> tokens ``(B, T, D)``."""
    if x.ndim == 2:
        return x.unsqueeze(1)                              # (B, 1, D)
    if layout == "last":
        return x.flatten(1, -2)                            # (B, ..., D) -> (B, T, D)
    if layout == "channels":
        return x.flatten(2).transpose(1, 2)                # (B, F, ...) -> (B, T, F)
    return x.flatten(1).unsqueeze(1)                       # (B, 1, prod)


class BraindecodeEncoder(BaseEncoder):
    """A braindecode model without its head, on z-scored EEG ``(B, n_chans, n_times)``.

    One subclass per braindecode model, made by :func:`braindecode_encoder`; build it with
    ``create_encoder("braindecode:<Model>", preset, **contract)``.

    Parameters
    ----------
    n_chans : int
        Number of EEG channels C (contract).
    sfreq : float
        Sampling rate in Hz (contract).
    n_times : int
        Samples per segment T (contract); the input must have exactly this length.
    ch_names : list[str] | None
        The contract's channel names, passed as ``chs_info`` with 10-20 positions; models
        that need names or positions are refused without them.
    **sizes
        The preset's width arguments of the braindecode model (:data:`_WIDTHS`).

    Notes
    -----
    ``tokens`` are the features the model's head would read (see the module notes for the
    layout), ``pooled`` their mean. ``dim`` and the token count are found by a forward
    pass on one random sample when the encoder is built.
    """

    name: ClassVar[str] = PREFIX
    modality: ClassVar[str] = "eeg"
    input_column: ClassVar[str] = "eeg"
    contract_fields: ClassVar[tuple[str, ...]] = ("n_chans", "sfreq", "n_times", "ch_names")
    #: contract fields that may be left out (see :func:`~emoray.models.create_encoder`)
    optional_fields: ClassVar[tuple[str, ...]] = ("ch_names",)
    example: ClassVar[dict[str, Any]] = {
        "n_chans": 8, "sfreq": 128.0, "n_times": 512,
        "ch_names": ["Fp1", "Fp2", "C3", "C4", "P3", "P4", "O1", "O2"]}
    presets: ClassVar[dict[str, dict[str, Any]]] = {"tiny": {}, "small": {}, "base": {}}
    model_class: ClassVar[type[nn.Module]]

    def __init__(self, n_chans: int, sfreq: float, n_times: int,
                 ch_names: list[str] | None = None, **sizes: Any):
        super().__init__()
        check_positive(self.name, n_chans=n_chans, n_times=n_times)
        if isinstance(sfreq, bool) or not isinstance(sfreq, (int, float)) or sfreq <= 0:
            raise ConfigError(f"encoder {self.name!r}: sfreq must be a positive number "
                              f"(Hz), got {sfreq!r}")
        if ch_names is not None and len(ch_names) != n_chans:
            raise ConfigError(f"encoder {self.name!r}: {len(ch_names)} ch_names for "
                              f"n_chans={n_chans}")
        self.n_chans, self.sfreq, self.n_times = n_chans, float(sfreq), n_times
        where = (f"encoder {self.name!r} does not accept the EEG contract (n_chans={n_chans}, "
                 f"sfreq={self.sfreq:g} Hz, n_times={n_times})")
        kwargs = dict(n_outputs=_N_OUTPUTS, n_chans=n_chans, n_times=n_times,
                      sfreq=self.sfreq, **sizes)
        if ch_names is not None:
            kwargs["chs_info"] = _chs_info(ch_names, self.sfreq)
        try:
            with _quiet():
                self.net = self.model_class(**kwargs)
        except Exception as exc:         # braindecode raises many types for a bad contract
            raise ConfigError(f"{where}: {_one_line(exc)}") from None
        head = getattr(self.net, "final_layer", None)
        if not isinstance(head, nn.Module):
            raise ConfigError(f"{where}: it has no final_layer module to cut")
        self._stop = not isinstance(head, nn.ModuleList)
        first = head if self._stop else (head[0] if len(head) else nn.Identity())
        if self._stop:
            self.net.final_layer = _Tap()
        else:                            # one head per window: the model aggregates inputs
            self.net.final_layer = nn.ModuleList(nn.Identity() for _ in head)
        try:
            self._dry_run(first)
        except Exception as exc:
            raise ConfigError(f"{where}: {_one_line(exc)}") from None

    def _dry_run(self, head: nn.Module) -> None:
        """One forward on a random sample: the feature layout, width D and token count."""
        p = next(self.net.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        x = torch.randn(1, self.n_chans, self.n_times,
                        generator=torch.Generator().manual_seed(0)).to(device)
        training = self.training
        self.eval()
        try:
            with torch.no_grad(), _quiet():
                feats = self._features(x)
        finally:
            self.train(training)
        if not torch.is_tensor(feats) or feats.ndim < 2:
            raise ValueError(f"the head's input is not a (B, ...) tensor ({type(feats)})")
        self._layout = _layout(head, feats)
        tokens = _as_tokens(feats, self._layout)
        if device.type != "meta" and not torch.isfinite(tokens).all():
            raise ValueError("its features are not finite on a random input (channel "
                             "positions unknown?)")
        self.dim, self.n_tokens = tokens.shape[2], tokens.shape[1]

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        try:
            out = self.net(x)
        except _Tapped as tapped:
            return tapped.x
        if self._stop:
            raise ValueError("its forward never reached final_layer")
        return out

    @classmethod
    def input_shape(cls, **contract: Any) -> tuple[int, ...]:
        """One sample's input shape under ``contract``: (B, C, T) EEG without B."""
        return (contract["n_chans"], contract["n_times"])

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        """Encode z-scored EEG ``(B, n_chans, n_times)``."""
        check_input(self.name, x, {"n_chans": self.n_chans, "n_times": self.n_times})
        tokens = _as_tokens(self._features(x), self._layout)     # (B, T', D)
        return EncoderOutput(tokens=tokens, pooled=tokens.mean(1))


def __getattr__(name: str) -> Any:
    """``Braindecode<Model>``: the made class, so that pickle finds it by name (PEP 562)."""
    if name.startswith("Braindecode") and name != "BraindecodeEncoder":
        return braindecode_encoder(name[len("Braindecode"):])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


register_resolver(PREFIX, braindecode_encoder)
