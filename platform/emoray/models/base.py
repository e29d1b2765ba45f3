"""What every encoder shares: its output, its input contract, its weight files.

An encoder maps one modality's preprocessed tensor to tokens ``(B, T, D)`` and a pooled
``(B, D)`` embedding. Its constructor takes the modality's *contract* fields (derived from
the :class:`~emoray.config.contract.PreprocessContract` the features were made with) plus
the size fields of a preset; unknown keyword arguments are rejected with a clear error
(braindecode's ``EEGModuleMixin`` idea). No pretrained weights exist here: weights load
only from local files the project itself wrote (:meth:`BaseEncoder.load_weights`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from emoray.errors import ConfigError


@dataclass
class EncoderOutput:
    tokens: torch.Tensor      # (B, T, D)
    pooled: torch.Tensor      # (B, D)


class BaseEncoder(nn.Module):
    """Base class of the registered encoders.

    Subclasses set ``name``, ``modality`` (``eeg``/``speech``/``video``/``features``),
    ``input_column`` (the feature column a fused model feeds it, if any),
    ``contract_fields`` (the input-contract keyword names) and ``presets`` (``tiny``,
    ``small``, ``base`` -> size keyword values) and ``example`` (a small contract), and
    implement ``input_shape(**contract)`` and ``forward(x) -> EncoderOutput``. ``self.dim`` is the width D of tokens and pooled output.
    """

    name: ClassVar[str]
    modality: ClassVar[str]
    #: the feature column it reads in a fused model (:func:`batch_to_tensors` key)
    input_column: ClassVar[str] = ""
    contract_fields: ClassVar[tuple[str, ...]]
    example: ClassVar[dict[str, Any]]          # a small contract (tests build every preset)
    presets: ClassVar[dict[str, dict[str, Any]]]
    dim: int

    @classmethod
    def input_shape(cls, **contract: Any) -> tuple[int, ...]:
        """The shape of one sample's input under ``contract`` (without the batch)."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this encoder (saved with its weights)."""
        return dict(self._config)

    def save_weights(self, path: str | Path) -> Path:
        """Write ``{"encoder": name, "config": ..., "state_dict": ...}`` to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"encoder": self.name, "config": self.config(),
                    "state_dict": self.state_dict()}, path)
        return path

    def load_weights(self, path: str | Path, *, strict: bool = True) -> "BaseEncoder":
        """Load weights written by :meth:`save_weights` (or a bare state dict).

        Raises :class:`ConfigError` naming the file for a missing/unreadable file, a file
        for another encoder, or mismatched tensor names/shapes.
        """
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"weights file {path} not found")
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:   # torch raises several types for non-checkpoint files
            raise ConfigError(f"weights file {path} is not a torch checkpoint "
                              f"({type(exc).__name__}: {exc})") from None
        state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
        if not isinstance(state, dict):
            raise ConfigError(f"weights file {path}: expected a state dict")
        if isinstance(blob, dict) and blob.get("encoder") not in (None, self.name):
            raise ConfigError(f"weights file {path} holds encoder {blob['encoder']!r}, "
                              f"not {self.name!r}")
        own = self.state_dict()
        bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
               for k, v in state.items() if k in own and own[k].shape != v.shape]
        if bad:
            raise ConfigError(f"weights file {path} does not fit {self.name} "
                              f"({self._config}): " + "; ".join(bad[:5]))
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):       # checked first: nothing half-loaded
            raise ConfigError(f"weights file {path} does not fit {self.name}: missing "
                              f"{missing[:5]}, unexpected {unexpected[:5]}; the model is "
                              f"unchanged")
        self.load_state_dict(state, strict=False)
        return self
