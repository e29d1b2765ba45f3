"""The JMML model as it is trained stage by stage and served: encoders, E-DCC-CAE, classifiers.

:class:`JMMLModel` grows with the plan (METHODS.md section A):

* after ``intra`` it holds one :class:`JECEncoder` per modality (input standardiser, MLP
  encoder, one binary head per target);
* after ``inter`` also embedding standardisers and the :class:`~emoray.models.jmml.EDCCCAE`;
* after ``classifier`` also one :class:`LogisticHead` per (representation, target) for the
  three inference paths: ``speech_only`` ``[z_s, g_e(z_s)]``, ``eeg_only``
  ``[z_e, g_s(z_e)]`` and ``combined`` ``[z_s, z_e]``.

:meth:`JMMLModel.predict` picks the path per sample from the presence masks, so a speech-only
request never needs EEG. The ``targets`` (default valence and arousal, binary high/low) are
read from the ``<target>_high`` label columns; their combination is the *joint label* used
for supervised contrast and label pairing, so paired samples agree on every target.
"""

from __future__ import annotations

import json
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from emoray.config.train import JMML_MODALITIES
from emoray.errors import ConfigError
from emoray.models.registry import create_encoder, register_model
from emoray.models.jmml import EDCCCAE

#: The inference paths of a JMML model; ``raw_*``/``jec_*`` exist for the ablation only.
PATHS = ("speech_only", "eeg_only", "combined")


def joint_label(y: torch.Tensor) -> torch.Tensor:
    """``(B, n_targets)`` binary labels (-1 missing) -> ``(B,)`` joint label, -1 if any is
    missing (``sum_t y_t 2^t``)."""
    weights = 2 ** torch.arange(y.shape[1], device=y.device)
    joint = (y.clamp_min(0) * weights).sum(1)
    return torch.where((y >= 0).all(1), joint, torch.full_like(joint, -1))


class Standardizer(nn.Module):
    """``(x - mean) / std`` with buffers fitted from sums (so ranks can all-reduce them)."""

    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))

    @torch.no_grad()
    def set_from_sums(self, stats: torch.Tensor) -> None:
        """``stats`` is ``(3, n)``: sum, sum of squares, count (broadcast)."""
        n = stats[2].clamp_min(1)
        mean = stats[0] / n
        var = (stats[1] / n - mean ** 2).clamp_min(0)
        self.mean.copy_(mean.to(self.mean))
        self.std.copy_(var.sqrt().clamp_min(1e-6).to(self.std))

    @staticmethod
    def sums(x: torch.Tensor) -> torch.Tensor:
        """``(3, n)`` float64 sums of ``x`` ``(B, n)`` for :meth:`set_from_sums`."""
        x = x.double()
        return torch.stack([x.sum(0), (x ** 2).sum(0),
                            torch.full_like(x[0], float(x.shape[0]))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1).float() - self.mean) / self.std


class JECEncoder(nn.Module):
    """JEC-SSL encoder of one modality: standardiser -> MLP -> embedding; binary heads."""

    def __init__(self, in_features: int, preset: str, targets: list[str]):
        super().__init__()
        self.norm = Standardizer(in_features)
        self.mlp = create_encoder("mlp", preset, in_features=in_features)
        self.dim = self.mlp.dim
        self.heads = nn.ModuleDict({t: nn.Linear(self.dim, 2) for t in targets})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_features)`` (or ``(B, C, bands)``) -> ``(B, dim)`` embedding."""
        return self.mlp(self.norm(x)).pooled


class LogisticHead(nn.Module):
    """Multinomial logistic regression on standardised inputs (buffers + one Linear)."""

    def __init__(self, in_features: int, n_classes: int = 2):
        super().__init__()
        self.norm = Standardizer(in_features)
        self.linear = nn.Linear(in_features, n_classes)

    @torch.no_grad()
    def fit(self, x: torch.Tensor, y: torch.Tensor, *, l2: float = 1e-2,
            balanced: bool = True, max_iter: int = 200) -> "LogisticHead":
        """Fit on ``x`` ``(N, F)``, ``y`` ``(N,)``; see :func:`fit_logistic`."""
        self.norm.set_from_sums(Standardizer.sums(x))
        w, b = fit_logistic(self.norm(x).double(), y, self.linear.out_features, l2=l2,
                            balanced=balanced, max_iter=max_iter)
        self.linear.weight.copy_(w.to(self.linear.weight))
        self.linear.bias.copy_(b.to(self.linear.bias))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x))                         # (B, n_classes)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, *, l2: float = 1e-2,
                 balanced: bool = True, max_iter: int = 200
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise ``sum_i w_i CE(W x_i + b, y_i) / sum_i w_i + l2 * |W|^2`` by L-BFGS.

    ``w_i`` are balanced class weights (``N / (n_present_classes * N_c)``) or ones. Float64,
    deterministic; returns ``W (n_classes, F)`` and ``b (n_classes,)``.
    """
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise ConfigError(f"fit_logistic: expected x (N, F) with N > 0 and y (N,), got "
                          f"{tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.double(), y.long().to(x.device)
    counts = torch.bincount(y, minlength=n_classes).double()
    if balanced:
        per_class = torch.where(counts > 0, len(y) / ((counts > 0).sum() * counts.clamp_min(1)),
                                torch.zeros_like(counts))
    else:
        per_class = torch.ones_like(counts)
    sw = per_class[y]
    w = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, device=x.device,
                    requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        ce = F.cross_entropy(x @ w.T + b, y, reduction="none")
        loss = (sw * ce).sum() / sw.sum() + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


@register_model("jmml")
class JMMLModel(nn.Module):
    """Encoders (+ E-DCC-CAE (+ classifiers)) of a JMML plan; rebuilt from :meth:`config`.

    Parameters
    ----------
    features : dict[str, str]
        Modality (``speech``, ``eeg``) -> the feature column it reads.
    in_features : dict[str, int]
        Modality -> flattened feature length.
    presets : dict[str, str]
        Modality -> MLP preset.
    targets : list[str]
        Binary targets (``valence``, ``arousal``), read from ``<target>_high``.
    cae : dict | None
        ``EDCCCAE`` keyword arguments (``k``, ``hidden``, ``dropout``), after ``inter``.
    classifiers : list[str] | None
        Paths (of :data:`PATHS`) with fitted classifiers, after ``classifier``.
    """

    def __init__(self, features: dict[str, str], in_features: dict[str, int],
                 presets: dict[str, str], targets: list[str], cae: dict | None = None,
                 classifiers: list[str] | None = None):
        super().__init__()
        self._config = json.loads(json.dumps(dict(
            features=features, in_features=in_features, presets=presets, targets=targets,
            cae=cae, classifiers=classifiers)))
        self.modalities = [m for m in JMML_MODALITIES if m in features]
        self.features, self.targets = dict(features), list(targets)
        self.encoders = nn.ModuleDict({m: JECEncoder(in_features[m], presets[m], targets)
                                       for m in self.modalities})
        self.cae = None
        if cae is not None:
            if set(self.modalities) != set(JMML_MODALITIES):
                raise ConfigError("JMMLModel: the inter stage needs both speech and eeg "
                                  f"encoders, have {self.modalities}")
            self.emb_norm = nn.ModuleDict({m: Standardizer(self.encoders[m].dim)
                                           for m in self.modalities})
            self.cae = EDCCCAE(self.encoders["speech"].dim, self.encoders["eeg"].dim,
                               n_classes=2 ** len(targets), **cae)
        self.classifiers = nn.ModuleDict({
            f"{p}__{t}": LogisticHead(self.path_dim(p)) for p in classifiers or []
            for t in targets})

    @classmethod
    def example_config(cls) -> dict[str, Any]:
        """A small configuration with every part (the registry test builds and runs it)."""
        return {"features": {"speech": "audio_stats", "eeg": "eeg_de"},
                "in_features": {"speech": 20, "eeg": 12},
                "presets": {"speech": "tiny", "eeg": "tiny"},
                "targets": ["valence", "arousal"], "cae": {"k": 4, "hidden": 16},
                "classifiers": list(PATHS)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "JMMLModel":
        return cls(**config)

    def config(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._config))

    def path_dim(self, path: str) -> int:
        """Width of a representation (see :meth:`representations`)."""
        if self.cae is None:
            raise ConfigError(f"JMMLModel: path {path!r} needs the inter stage's E-DCC-CAE")
        k, ds, de = self.cae.k, self.cae.dim_s, self.cae.dim_e
        dims = {"speech_only": k + de, "eeg_only": k + ds, "combined": 2 * k}
        if path not in dims:
            raise ConfigError(f"JMMLModel: unknown path {path!r}; expected one of {PATHS}")
        return dims[path]

    def embed(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Modality -> ``(B, D)`` JEC-SSL embedding (zeros rows stay where absent)."""
        return {m: self.encoders[m](batch[self.features[m]]) for m in self.modalities
                if self.features[m] in batch}

    def codes(self, emb: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Representations of :data:`PATHS` from embeddings (needs the E-DCC-CAE)."""
        e_s = self.emb_norm["speech"](emb["speech"])
        e_e = self.emb_norm["eeg"](emb["eeg"])
        z_s, z_e = self.cae.f_s(e_s), self.cae.f_e(e_e)            # (B, k)
        return {"speech_only": torch.cat([z_s, self.cae.g_e(z_s)], 1),
                "eeg_only": torch.cat([z_e, self.cae.g_s(z_e)], 1),
                "combined": torch.cat([z_s, z_e], 1)}

    def representations(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every representation the ablation compares: ``raw_<m>`` (standardised input
        features), ``jec_<m>`` (embeddings) and, with the E-DCC-CAE, the three paths."""
        out = {f"raw_{m}": self.encoders[m].norm(batch[self.features[m]])
               for m in self.modalities}
        emb = self.embed(batch)
        out.update({f"jec_{m}": e for m, e in emb.items()})
        if self.cae is not None:
            out.update(self.codes(emb))
        return out

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Per target ``(B, 2)`` probabilities along each sample's path.

        A sample with both modalities takes ``combined`` (or the mean of the two unimodal
        paths if no combined classifier was fitted, e.g. non-parallel training data), one
        with speech alone ``speech_only``, one with EEG alone ``eeg_only``.

        Returns
        -------
        dict
            ``{"probs": {target: (B, 2)}, "path": list[str], "paths": {path: {target:
            (B, 2)}}}`` (``paths`` holds every path computable for the batch).
        """
        first = next(iter(batch.values()))
        b, device = first.shape[0], first.device
        has = {m: batch.get(f"{m}_present", torch.ones(b, dtype=torch.bool, device=device))
               if self.features[m] in batch
               else torch.zeros(b, dtype=torch.bool, device=device) for m in self.modalities}
        filled = dict(batch)
        for m in self.modalities:                  # zeros for an absent modality's input
            if self.features[m] not in filled:
                n = self.encoders[m].norm.mean.numel()
                filled[self.features[m]] = torch.zeros(b, n, device=device)
        return self.predict_embedded(self.embed(filled), has)

    @torch.no_grad()
    def predict_embedded(self, emb: dict[str, torch.Tensor],
                         has: dict[str, torch.Tensor]) -> dict[str, Any]:
        """:meth:`predict` from JEC-SSL embeddings ``(B, D)`` per modality (what the
        serving encoders send) and ``(B,)`` presence masks. A sample's path uses only the
        modalities it has, so an absent modality's embedding rows may hold anything."""
        if not self.classifiers:
            raise ConfigError("JMMLModel.predict: no classifiers (run the classifier stage)")
        b = has[self.modalities[0]].shape[0]
        reps = self.codes(emb)
        per_path = {p: {t: self.classifiers[f"{p}__{t}"](reps[p]).softmax(-1)
                        for t in self.targets}
                    for p in PATHS if f"{p}__{self.targets[0]}" in self.classifiers}
        if "combined" not in per_path:
            per_path["combined"] = {t: 0.5 * (per_path["speech_only"][t]
                                              + per_path["eeg_only"][t]) for t in self.targets}
        s, e = has["speech"].cpu(), has["eeg"].cpu()
        path = ["combined" if si and ei else "speech_only" if si else "eeg_only" if ei
                else "none" for si, ei in zip(s.tolist(), e.tolist())]
        probs = {}
        for t in self.targets:
            out = torch.full((b, 2), float("nan"))
            for p in PATHS:
                rows = torch.tensor([q == p for q in path])
                if rows.any():
                    out[rows] = per_path[p][t][rows.to(per_path[p][t].device)].float().cpu()
            probs[t] = out
        return {"probs": probs, "path": path, "paths": per_path}
