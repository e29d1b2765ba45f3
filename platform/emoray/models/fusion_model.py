"""The attention-fusion model (METHODS.md B): one registered encoder per modality
(``eegformer``, ``ast``, ``vit``) and :class:`~emoray.models.fusion.AttentionFusion` over
their tokens. Registered as the whole model ``fusion``."""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from emoray.config.train import FusionStageConfig
from emoray.config.contract import PreprocessContract
from emoray.errors import ConfigError
from emoray.models.fusion import AttentionFusion, FusionOutput
from emoray.models.legacy import LEGACY_NAMES
from emoray.models.registry import create_encoder, encoder_class, register_model


#: modality -> (default encoder name, the feature column it reads)
#: the encoder generation new models are built with (see :mod:`emoray.models.legacy`)
ENCODER_GENERATION = 2
ENCODER_OF = {"eeg": ("eegformer", "eeg"), "speech": ("ast", "logmel"),
              "video": ("vit", "video")}


def input_column(modality: str, encoder: str | None = None) -> str:
    """The feature column the fused model feeds ``modality``'s encoder (by default the
    modality's default encoder, :data:`ENCODER_OF`)."""
    name = encoder or ENCODER_OF[modality][0]
    column = encoder_class(name).input_column
    if not column:
        raise ConfigError(f"encoder {name!r} reads no feature column of its own; it cannot "
                          f"encode {modality!r} in the fusion model")
    return column


@register_model("fusion")
class FusionModel(nn.Module):
    """Per-modality encoders + :class:`~emoray.models.AttentionFusion` over their tokens.

    Each encoder reads its own feature column (``input_column``: ``eeg``, ``eeg_bp``,
    ``logmel``, ``video``), so a modality's architecture is a setting (``architectures``).

    Parameters
    ----------
    encoders : dict[str, dict]
        Per modality ``{"name", "preset", "kwargs"}`` for :func:`create_encoder`.
    fusion : dict
        Keyword arguments of :class:`AttentionFusion` except ``modality_dims``.
    encoder_generation : int
        2: ``eegformer``/``ast``/``vit`` are the published architectures; 1 (a config saved
        without this key, i.e. every bundle written before them): those names build the old
        classes of :mod:`emoray.models.legacy` (``eegformer-v0``, ...).
    per_modality : str
        Where a modality's own prediction comes from: ``aux`` (its auxiliary head, trained
        on that modality alone at every step) or ``fusion`` (the fused head given only that
        modality, which modality dropout trains only now and then; bundles written before
        this setting existed).
    """

    def __init__(self, encoders: dict[str, dict[str, Any]], fusion: dict[str, Any],
                 per_modality: str = "fusion", encoder_generation: int = ENCODER_GENERATION):
        super().__init__()
        if encoder_generation < ENCODER_GENERATION:     # a bundle written before: old classes
            encoders = {m: {**e, "name": LEGACY_NAMES.get(e["name"], e["name"])}
                        for m, e in encoders.items()}
        if per_modality not in ("aux", "fusion"):
            raise ConfigError(f"per_modality: expected 'aux' or 'fusion', got {per_modality!r}")
        if per_modality == "aux" and not fusion.get("aux_heads", True):
            raise ConfigError("per_modality 'aux' needs the auxiliary heads (aux_heads)")
        self._config = {"encoders": json.loads(json.dumps(encoders)), "fusion": dict(fusion),
                        "encoder_generation": encoder_generation}
        if per_modality != "fusion":
            self._config["per_modality"] = per_modality
        self.per_modality = per_modality
        self.modalities = list(encoders)
        self.encoders = nn.ModuleDict({
            m: create_encoder(e["name"], e["preset"], **e["kwargs"])
            for m, e in encoders.items()})
        dims = {m: enc.dim for m, enc in self.encoders.items()}
        self.fusion = AttentionFusion(dims, **fusion)
        #: modality -> the feature column its encoder reads
        self.columns = {m: enc.input_column for m, enc in self.encoders.items()}
        #: per-subject input statistics (:mod:`emoray.data.subject_norm`), set by the
        #: training stage or by :func:`~emoray.bundle.load_bundle`; None: inputs as they are
        self.subject_stats = None

    @classmethod
    def from_contract(cls, contract: PreprocessContract, *, n_classes: int,
                      cfg: FusionStageConfig) -> "FusionModel":
        """Build the model for features made with ``contract`` (EEG channels named)."""
        n_chans = len(contract.eeg.channels or [])
        if "eeg" in cfg.modalities and n_chans == 0:
            raise ConfigError("contract.eeg.channels: the features' contract names no EEG "
                              "channels; cannot size the eegformer")
        shapes = contract.output_shapes(n_chans)
        contract_kwargs = {
            "eeg": dict(n_chans=n_chans, sfreq=contract.eeg.sfreq, n_times=shapes["eeg"][1],
                        n_bands=len(contract.eeg.bands),
                        ch_names=list(contract.eeg.channels or [])),
            "speech": dict(n_mels=contract.audio.n_mels, n_frames=shapes["logmel"][1],
                           in_features=shapes["audio_stats"][0]),
            "video": dict(n_frames=contract.video.n_frames, size=contract.video.size)}
        encoders = {}
        for m in cfg.modalities:
            name = cfg.architectures.get(m) or ENCODER_OF[m][0]
            cls_ = encoder_class(name)
            if cls_.modality != m:
                raise ConfigError(f"architectures.{m}: encoder {name!r} encodes "
                                  f"{cls_.modality!r}, not {m!r}")
            preset = cfg.encoders.get(m, "tiny")
            if preset not in encoder_class(name).presets:
                raise ConfigError(f"encoders.{m}: unknown preset {preset!r} for encoder "
                                  f"{name!r}; expected one of "
                                  f"{sorted(encoder_class(name).presets)}")
            kwargs = {k: v for k, v in contract_kwargs[m].items() if k in cls_.contract_fields}
            encoders[m] = {"name": name, "preset": preset, "kwargs": kwargs}
        fusion = dict(n_classes=n_classes, dim=cfg.dim, heads=cfg.heads, layers=cfg.layers,
                      dropout=cfg.dropout, modality_dropout=cfg.modality_dropout,
                      aux_heads=cfg.aux_weight > 0)
        if cfg.fuse_aux:
            fusion["fuse_aux"] = True
        if cfg.fuse_weights == "inner":
            fusion["expert_weights"] = True
        return cls(encoders, fusion, cfg.per_modality)

    @classmethod
    def example_config(cls) -> dict[str, Any]:
        """A small configuration (the registry test builds and runs it)."""
        encoders = {m: {"name": name, "preset": "tiny", "kwargs": encoder_class(name).example}
                    for m, (name, _) in ENCODER_OF.items()}
        return {"encoders": encoders, "fusion": {"n_classes": 3, "dim": 32, "heads": 2,
                                                 "layers": 1}, "per_modality": "aux"}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "FusionModel":
        """Rebuild from :meth:`config` (as saved in a bundle)."""
        return cls(config["encoders"], config["fusion"], config.get("per_modality", "fusion"),
                   config.get("encoder_generation", 1))

    def config(self) -> dict[str, Any]:
        """JSON-able keyword arguments that rebuild this model."""
        return json.loads(json.dumps(self._config))

    def forward(self, batch: dict[str, torch.Tensor],
                modalities: list[str] | None = None) -> FusionOutput:
        """Fuse the modalities found in ``batch`` (as :func:`batch_to_tensors` makes it).

        A modality whose feature key is absent from ``batch`` (or not in ``modalities``)
        is left out; ``<modality>_present`` masks absent samples.
        """
        tokens, present = {}, {}
        for m in self.modalities:
            key = self.columns[m]
            if key not in batch or (modalities is not None and m not in modalities):
                continue
            tokens[m] = self.encoders[m](batch[key]).tokens              # (B, T_m, D_m)
            if f"{m}_present" in batch:
                present[m] = batch[f"{m}_present"]                      # (B,)
        return self.fusion(tokens, present=present)

    def scores(self, batch: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """What evaluation scores: ``{"fused": (logits, rows), <modality>: (logits, rows)}``,
        ``rows`` a bool mask of the batch rows the logits are for (a modality's own logits
        come from its aux head or the fused head on it alone, see ``per_modality``)."""
        out = self(batch)
        rows_all = torch.ones(out.logits.shape[0], dtype=torch.bool, device=out.logits.device)
        result = {"fused": (out.logits, rows_all)}
        for m in self.modalities:
            sel = batch.get(f"{m}_present")
            if sel is None or self.columns[m] not in batch or not sel.any():
                continue
            if self.per_modality == "aux" and m in out.aux_logits:
                result[m] = (out.aux_logits[m][sel], sel)
            else:
                sub = {k: v[sel] for k, v in batch.items()}
                result[m] = (self(sub, modalities=[m]).logits, sel)
        return result

    def alone(self, out: FusionOutput, tokens: dict[str, torch.Tensor],
              rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each modality's own logits on the rows that have it (``rows[m]``: a bool mask):
        its auxiliary head's from the fused pass ``out``, or the fused head run on that
        modality alone (see ``per_modality``)."""
        single, todo = {}, []
        for m, keep in rows.items():
            if not keep.any():
                continue
            if self.per_modality == "aux" and m in out.aux_logits:
                single[m] = out.aux_logits[m][keep]
            else:
                todo.append(m)
        if len(todo) == 1:
            m = todo[0]
            single[m] = self.fusion({m: tokens[m][rows[m]]}).logits
        elif todo:
            # one pass for every modality alone: each one's rows, stacked, with only that
            # modality present (a masked modality counts as absent: same logits, one call)
            names = [n for n in tokens if n in rows]
            stacked = {n: torch.cat([tokens[n][rows[m]] for m in todo]) for n in names}
            present = {n: torch.cat([torch.full((int(rows[m].sum()),), n == m,
                                                dtype=torch.bool, device=rows[m].device)
                                     for m in todo]) for n in names}
            logits = self.fusion(stacked, present=present).logits
            sizes = [int(rows[m].sum()) for m in todo]
            single.update(zip(todo, torch.split(logits, sizes)))
        return single
