"""Models split at the encoder boundary: one encoder per modality, one head that combines.

Ray Serve runs each modality's encoder in its own deployment and the combination in the
router; in-process inference (:class:`emoray.predict.Predictor`) runs the same two halves in
one process, so both compute the same numbers by construction. What crosses the boundary,
per segment, is one modality's encoder *output*, never the activations of every layer:

* attention fusion: the encoder's output tokens ``(T_m, D_m)`` (a few dozen tokens), which
  the head projects, tags and fuses (:class:`~emoray.models.AttentionFusion`);
* JMML: the JEC-SSL embedding ``(D,)``, which the head maps into the common space and
  classifies along the path the present modalities allow (speech-only when EEG is absent).

Incongruence
    When speech and EEG are both present, the head compares the two modalities' own
    predictions: the score is the Jensen-Shannon divergence (bits, in ``[0, 1]``) of their
    class distributions, and the flag is raised when their labels differ and the score
    reaches the threshold — the acted-emotion case, where the voice says one thing and the
    brain another.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from emoray.errors import ConfigError
from emoray.predict.answer import (INCONGRUENCE_THRESHOLD, ModalityPrediction, Prediction,
                                   incongruence, named, valence_arousal)


class ModelParts:
    """A bundle's model cut into per-modality encoders and a combining head.

    Attributes
    ----------
    stage : str
        The bundle's stage.
    modalities : list[str]
        The modalities the model has an encoder for.
    label_names : list[str]
        The classes of :attr:`Prediction.probabilities`.
    """

    stage: str
    modalities: list[str]
    label_names: list[str]

    def __init__(self, model: torch.nn.Module, meta: Mapping[str, Any],
                 incongruence_threshold: float = INCONGRUENCE_THRESHOLD):
        self.model = model.eval()
        self.stage = str(meta.get("stage"))
        self.threshold = float(incongruence_threshold)
        self.device = next(model.parameters()).device

    def inputs(self, modality: str) -> list[str]:
        """The batch keys (:func:`~emoray.data.features.batch_to_tensors`) the encoder of
        ``modality`` reads."""
        raise NotImplementedError

    def encode(self, modality: str, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The encoder output of ``modality`` for ``B`` rows (float32, on CPU)."""
        raise NotImplementedError

    def combine(self, encoded: Mapping[str, torch.Tensor], present: Mapping[str, np.ndarray],
                owner: np.ndarray, n_samples: int) -> list[Prediction]:
        """Predictions of ``n_samples`` inputs from their rows' encoder outputs.

        Parameters
        ----------
        encoded : dict[str, Tensor]
            Per modality given, :meth:`encode`'s output for every row ``(B, ...)``.
        present : dict[str, ndarray]
            Per modality in ``encoded``, ``(B,)`` bool: the row has that modality.
        owner : ndarray
            ``(B,)`` int: the input each row (segment) belongs to.
        n_samples : int
            Number of inputs; each gets the mean over its segments.
        """
        raise NotImplementedError

    def _autocast(self):
        dev = self.device.type
        return torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda")

    def _on_device(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True)

    def _finish(self, owner: np.ndarray, n_samples: int, probs: np.ndarray,
                single: dict[str, np.ndarray], present: Mapping[str, np.ndarray],
                extra: dict[str, Any] | None = None) -> list[Prediction]:
        """Average over each input's segments and build the predictions."""
        names = self.label_names
        results = []
        for i in range(n_samples):
            sel = owner == i
            mean = probs[sel].mean(0)
            label, named_probs = named(names, mean)
            mods = [m for m in self.modalities if m in present and present[m][sel].all()]
            own = {m: single[m][sel].mean(0) for m in mods if m in single}
            v, a = self.valence_arousal(mean)
            conflict = incongruence(names, own["speech"], own["eeg"], self.threshold,
                                    face=own.get("video")) \
                if "speech" in own and "eeg" in own else None
            fields = {k: (val(sel) if callable(val) else val) for k, val in (extra or {}).items()}
            results.append(Prediction(
                stage=self.stage, label=label, probabilities=named_probs, modalities=mods,
                per_modality={m: ModalityPrediction(*named(names, p)) for m, p in own.items()},
                valence=v, arousal=a, n_segments=int(sel.sum()), incongruence=conflict,
                **fields))
        return results

    def valence_arousal(self, probs: np.ndarray) -> tuple[float | None, float | None]:
        return valence_arousal(self.label_names, probs)


class FusionParts(ModelParts):
    """Attention fusion: each modality's encoder (e.g. ``eegformer``/``ast``/``vit``) sends its output tokens;
    the head runs :class:`~emoray.models.AttentionFusion` on any subset of them."""

    def __init__(self, model, meta, incongruence_threshold: float = INCONGRUENCE_THRESHOLD):
        super().__init__(model, meta, incongruence_threshold)
        self.modalities = list(model.modalities)
        self.label_names = list(meta.get("label_names") or [])

    def inputs(self, modality: str) -> list[str]:
        return [self.model.columns[modality]]

    @torch.no_grad()
    def encode(self, modality: str, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        (key,) = self.inputs(modality)
        with self._autocast():
            out = self.model.encoders[modality](self._on_device(tensors[key]))
        return out.tokens.float().cpu()                                    # (B, T_m, D_m)

    @torch.no_grad()
    def combine(self, encoded, present, owner, n_samples):
        fusion = self.model.fusion
        tokens = {m: self._on_device(t) for m, t in encoded.items()}
        mask = {m: torch.as_tensor(present[m], device=self.device) for m in tokens}
        with self._autocast():
            out = fusion(tokens, present=mask)
            probs = out.logits.float().softmax(-1).cpu().numpy()          # (B, K)
            mass = out.attention_mass.float().cpu().numpy()               # (B, M)
            single = {}
            for m, logits in self.model.alone(out, tokens, mask).items():   # own rows only
                alone = np.full_like(probs, np.nan)
                alone[mask[m].cpu().numpy()] = logits.float().softmax(-1).cpu().numpy()
                single[m] = alone
        cols = out.modalities
        return self._finish(owner, n_samples, probs, single, present, extra={
            "attention_mass": lambda sel: {m: float(mass[sel, j].mean())
                                           for j, m in enumerate(cols)}})


class JMMLParts(ModelParts):
    """JMML: MLP encoders send their JEC-SSL embeddings; the head maps them into the common
    space and classifies along ``combined`` / ``speech_only`` / ``eeg_only``.

    The classes are the joint labels of the binary targets (``"high valence, low arousal"``
    ...), with ``P(joint) = prod_t P(target_t)``; ``valence``/``arousal`` are ``2 P(high) - 1``.
    """

    def __init__(self, model, meta, incongruence_threshold: float = INCONGRUENCE_THRESHOLD):
        super().__init__(model, meta, incongruence_threshold)
        if not model.classifiers:
            raise ConfigError(f"bundle of stage {self.stage!r} has no classifiers; serve the "
                              "JMML plan's final (classifier) checkpoint")
        self.modalities = list(model.modalities)
        self.targets = list(model.targets)
        self.label_names = [", ".join(f"{'high' if (j >> t) & 1 else 'low'} {name}"
                                      for t, name in enumerate(self.targets))
                            for j in range(2 ** len(self.targets))]

    def inputs(self, modality: str) -> list[str]:
        return [self.model.features[modality]]

    @torch.no_grad()
    def encode(self, modality: str, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        (key,) = self.inputs(modality)
        return self.model.encoders[modality](self._on_device(tensors[key])).float().cpu()

    def joint(self, per_target: Mapping[str, torch.Tensor]) -> np.ndarray:
        """``(B, 2)`` probabilities per target -> ``(B, 2**T)`` joint probabilities."""
        probs = [per_target[t].float().cpu().numpy() for t in self.targets]
        out = np.ones((probs[0].shape[0], len(self.label_names)))
        for j in range(out.shape[1]):
            for t, p in enumerate(probs):
                out[:, j] *= p[:, (j >> t) & 1]
        return out

    @torch.no_grad()
    def combine(self, encoded, present, owner, n_samples):
        b = len(owner)
        has = {m: torch.as_tensor(present[m]) if m in encoded else torch.zeros(b, dtype=bool)
               for m in self.modalities}
        emb = {m: self._on_device(encoded[m]) if m in encoded else
               torch.zeros(b, self.model.encoders[m].dim, device=self.device)
               for m in self.modalities}
        out = self.model.predict_embedded(emb, {m: h.to(self.device) for m, h in has.items()})
        probs = self.joint(out["probs"])
        single = {m: self.joint(out["paths"][f"{m}_only"]) for m in self.modalities
                  if m in encoded and f"{m}_only" in out["paths"]}
        paths = np.array(out["path"])
        return self._finish(owner, n_samples, probs, single, present, extra={
            "path": lambda sel: str(paths[sel][0])})

    def valence_arousal(self, probs: np.ndarray) -> tuple[float | None, float | None]:
        high = {t: sum(p for j, p in enumerate(probs) if (j >> i) & 1)
                for i, t in enumerate(self.targets)}
        v, a = high.get("valence"), high.get("arousal")
        return (None if v is None else float(2 * v - 1),
                None if a is None else float(2 * a - 1))


#: registered whole model -> how it splits at the encoder boundary
PARTS: dict[str, type[ModelParts]] = {"fusion": FusionParts, "jmml": JMMLParts}


def model_parts(model: torch.nn.Module, meta: Mapping[str, Any],
                incongruence_threshold: float = INCONGRUENCE_THRESHOLD) -> ModelParts:
    """The split of a bundle's model; ConfigError for a model that cannot predict."""
    name = meta.get("model")
    if name not in PARTS:
        raise ConfigError(f"bundle model {name!r} (stage {meta.get('stage')!r}) has no "
                          f"predictor; serve a 'fusion' or a JMML 'classifier' checkpoint "
                          "(the last stage of configs/train/fusion.yaml or jmml.yaml)")
    return PARTS[name](model, meta, incongruence_threshold)
