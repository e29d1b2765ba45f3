"""In-process prediction with a checkpoint bundle: the path serving builds on.

:class:`Predictor` loads a bundle (:mod:`emoray.bundle`) and turns raw signals into
predictions: :func:`~emoray.predict.inputs.prepare_inputs` repeats the training transform
from the bundle's contract alone, and the model runs as :mod:`emoray.predict.heads` splits
it (each present modality's encoder, then the combining head), exactly as the Serve
deployments run it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from emoray.bundle import load_servable
from emoray.config.contract import PreprocessContract
from emoray.data.subject_norm import normalize
from emoray.predict.answer import INCONGRUENCE_THRESHOLD, Prediction
from emoray.predict.heads import model_parts
from emoray.predict.inputs import (MODALITIES, EEGInput, SpeechInput, VideoInput,
                                   _as_samples, prepare_inputs)


class Predictor:
    """A model of a bundle and its contract: raw signals in, :class:`Prediction` out.

    The model runs as :mod:`emoray.predict.heads` splits it (each present modality's encoder, then
    the combining head), exactly as the Serve deployments run it.

    Parameters
    ----------
    model : torch.nn.Module
        The bundle's model (put in eval mode here).
    meta : dict
        The bundle metadata (``stage``, ``contract``, ``label_names`` ...).
    incongruence_threshold : float | None
        JS divergence (bits) from which differing speech/EEG labels are flagged
        (None: :data:`emoray.predict.answer.INCONGRUENCE_THRESHOLD`).
    """

    def __init__(self, model: torch.nn.Module, meta: dict[str, Any],
                 incongruence_threshold: float | None = None):
        contract = meta.get("contract")
        if not isinstance(contract, PreprocessContract):
            contract = PreprocessContract.model_validate(contract)
        self.parts = model_parts(model, meta, INCONGRUENCE_THRESHOLD
                                 if incongruence_threshold is None else incongruence_threshold)
        self.model = self.parts.model
        self.meta = meta
        self.stage: str = self.parts.stage
        self.contract = contract
        self.label_names: list[str] = self.parts.label_names
        self.device = self.parts.device

    @classmethod
    def from_bundle(cls, path: str | Path, device: str | torch.device | None = None,
                    incongruence_threshold: float | None = None):
        """Load a bundle folder; ``device`` None picks CUDA when available, else CPU."""
        model, meta = load_servable(path, device=device)
        return cls(model, meta, incongruence_threshold)

    def prepare(self, eeg=None, speech=None, video=None) -> dict[str, torch.Tensor]:
        """Batch tensors of one sample (inputs) or several (equal-length lists of inputs,
        None where a sample lacks a modality); see :func:`prepare_inputs`."""
        return prepare_inputs(self.contract, _as_samples(eeg, speech, video), self.device)

    def predict(self, eeg: EEGInput | None = None, speech: SpeechInput | None = None,
                video: VideoInput | None = None, subject: str | None = None) -> Prediction:
        """The prediction for one sample from any non-empty subset of modalities
        (``subject``: whose statistics standardise the inputs, for a model trained with
        per-subject statistics; None or an unknown subject: the pooled ones)."""
        return self.predict_batch([{"eeg": eeg, "speech": speech, "video": video,
                                    "subject": subject}])[0]

    def predict_batch(self, samples: Sequence[Mapping[str, Any]]) -> list[Prediction]:
        """Predictions for several samples (dicts of inputs by modality, and optionally a
        ``subject``) in one batch."""
        batch = prepare_inputs(self.contract, samples, self.device)
        owner = batch["sample_index"].cpu().numpy()
        normalize(batch, self.model, [samples[i].get("subject") for i in owner])
        parts = self.parts
        present = {m: batch[f"{m}_present"].cpu().numpy() for m in parts.modalities
                   if f"{m}_present" in batch}
        encoded = {m: parts.encode(m, batch) for m in present}
        results = parts.combine(encoded, present, owner, len(samples))
        given = {m: batch[f"{m}_present"].cpu().numpy() for m in MODALITIES
                 if m not in parts.modalities and f"{m}_present" in batch}
        for i, r in enumerate(results):
            r.ignored = [m for m, p in given.items() if p[owner == i].any()]
        return results
