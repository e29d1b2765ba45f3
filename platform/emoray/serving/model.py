"""The served model: a checkpoint found, loaded and cut into what each deployment runs.

:func:`resolve_checkpoint` accepts what users have at hand: a bundle folder, a training run
folder (its last servable stage), a tuning campaign folder (its promoted ``best``), or any of
these behind a pyarrow filesystem URI (``s3://``, ``gs://``, ``file://`` ...), downloaded once
into a local cache.

:class:`ServedModel` holds the bundle's model split by :mod:`emoray.predict.heads` for one *role*:
an encoder replica keeps only its modality's encoder, the router only the combining head
(attention fusion or the JMML common space and classifiers), so no replica holds weights
it never uses. :meth:`ServedModel.prepare` applies the checkpoint's preprocessing contract
(:func:`emoray.predict.prepare_inputs`, the code the training features were made with) and
splits the batch into what each modality's encoder reads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emoray.data.subject_norm import MODALITY, SubjectStats
from emoray.errors import ConfigError
from emoray.bundle import META_FILE, load_servable, read_bundle_meta, servable
from emoray.predict import (INCONGRUENCE_THRESHOLD, MIN_SECONDS, MODALITIES, ModelParts,
                            Prediction, model_parts, prepare_inputs)

ROLES = ("router", *MODALITIES)


def _bundle_in(folder: Path) -> Path | None:
    """The servable bundle a local folder holds or points to, else None."""
    if (folder / META_FILE).is_file():
        return folder
    if (folder / "best" / META_FILE).is_file():                 # a tuning campaign
        return folder / "best"
    state = folder / "plan_state.json"                          # a training run
    if state.is_file():
        try:
            stages = json.loads(state.read_text()).get("stages", {})
        except ValueError:
            raise ConfigError(f"{state}: not valid JSON; expected a plan state") from None
        for stage in reversed(list(stages)):
            bundle = (stages.get(stage) or {}).get("bundle")
            if bundle and Path(bundle).is_dir() and _servable(Path(bundle)):
                return Path(bundle)
    return None


def _servable(bundle: Path) -> bool:
    try:
        return servable(read_bundle_meta(bundle))
    except ConfigError:
        return False


def resolve_checkpoint(source: str | Path, cache: str | Path | None = None) -> Path:
    """The local bundle folder of ``source`` (downloaded into ``cache`` for a URI).

    Raises
    ------
    ConfigError
        Naming ``source`` and what was expected when nothing servable is found.
    """
    from emoray.storage import fetch_dir, is_uri, join, read_text

    if is_uri(source):
        src = str(source).rstrip("/")
        if read_text(join(src, "bundle.json")) is None \
                and read_text(join(src, "best", "bundle.json")) is not None:
            src = join(src, "best")
        local = fetch_dir(src, cache)
    else:
        local = Path(source).expanduser()
        if not local.is_dir():
            raise ConfigError(f"checkpoint {source}: no such folder; expected a model bundle, "
                              "a training run or a tuning campaign folder (or a storage URI)")
    bundle = _bundle_in(local)
    if bundle is None:
        raise ConfigError(f"checkpoint {source}: holds no model bundle (bundle.json + model.pt), "
                          "no campaign best/ and no finished training run (plan_state.json)")
    return bundle


def _version(bundle: Path) -> str:
    """A content hash of the weights: equal weights, equal version."""
    digest = hashlib.sha256()
    with open(bundle / "model.pt", "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


@dataclass
class Prepared:
    """One request after the contract: per present modality the tensors its encoder reads,
    the presence of each modality per row, and the input each row (segment) belongs to."""

    inputs: dict[str, dict[str, torch.Tensor]]
    present: dict[str, np.ndarray]
    owner: np.ndarray
    n_samples: int
    ignored: list[str]


class ServedModel:
    """A bundle loaded for one serving role.

    Parameters
    ----------
    source : str | Path
        Anything :func:`resolve_checkpoint` accepts.
    role : str
        ``router`` (the head only), or a modality (that encoder only), or ``all``.
    device : str | None
        ``cpu``, ``cuda``...; None picks CUDA when available.
    incongruence_threshold : float
        See :mod:`emoray.predict.heads`.
    cache : str | Path | None
        Download folder for a URI source.
    """

    def __init__(self, source: str | Path, role: str = "all", device: str | None = None,
                 incongruence_threshold: float = INCONGRUENCE_THRESHOLD,
                 cache: str | Path | None = None):
        if role not in (*ROLES, "all"):
            raise ConfigError(f"role {role!r}: expected one of {[*ROLES, 'all']}")
        bundle = resolve_checkpoint(source, cache)
        model, meta = load_servable(bundle, source, device)
        self.parts: ModelParts = model_parts(model, meta, incongruence_threshold)
        self.role = role
        self.source = str(source)
        self.bundle = bundle
        self.meta = meta
        self.contract = meta["contract"]
        self.version = _version(bundle)
        #: the bundle's per-subject input statistics (None: the model uses none), and the
        #: statistics of subjects calibrated while serving (POST /v1/subjects/{id}/calibration)
        self.subject_stats: SubjectStats | None = getattr(model, "subject_stats", None)
        self.calibrations: dict[str, SubjectStats] = {}
        self._calibration_sums: dict[str, SubjectStats] = {}
        self._calibration_rows: dict[str, int] = {}
        self._prune(role)

    @property
    def modalities(self) -> list[str]:
        return self.parts.modalities

    def _prune(self, role: str) -> None:
        """Drop the weights this role never runs (fusion; JMML's are a few KB)."""
        model = self.parts.model
        if role == "all" or self.parts.stage != "fusion":
            return
        for m in list(model.encoders):
            if m != role:
                del model.encoders[m]
        if role != "router":
            model.fusion = None

    def info(self) -> dict[str, Any]:
        """What ``GET /v1/model`` answers: version, classes, and what inputs must look like."""
        c = self.contract
        campaign = self.bundle / "campaign.json"
        return {
            "version": self.version, "stage": self.parts.stage,
            "emoray_version": self.meta.get("emoray_version"), "source": self.source,
            "label_names": list(self.parts.label_names), "modalities": list(self.modalities),
            "eeg": {"channels": c.eeg.channels, "sfreq": c.eeg.sfreq,
                    "any_sfreq": True, "any_channel_order": True},
            "speech": {"sample_rate": c.audio.sample_rate, "any_sample_rate": True},
            "video": {"n_frames": c.video.n_frames, "size": c.video.size},
            "segment_seconds": c.segment_seconds, "min_seconds": MIN_SECONDS,
            "metrics": {k: v for k, v in (self.meta.get("metrics") or {}).items()
                        if isinstance(v, (int, float, str))},
            "campaign": json.loads(campaign.read_text()) if campaign.is_file() else None}

    def prepare(self, sample: Mapping[str, Any]) -> Prepared:
        """Apply the contract to one request's inputs (``{"eeg": EEGInput | None, ...}``).

        Raises DataError/ConfigError naming the field for an input the contract refuses.
        A modality the model has no encoder for is listed in ``ignored``; a request holding
        only such modalities is refused.
        """
        have = [m for m in MODALITIES if sample.get(m) is not None]
        usable = [m for m in have if m in self.modalities]
        if have and not usable:
            from emoray.errors import DataError

            raise DataError("request", f"the model has no encoder for {have}; it takes "
                            f"{self.modalities}", kind="layout", field="input")
        batch = prepare_inputs(self.contract, [sample], "cpu")
        self.normalize(batch, sample.get("subject"))
        present = {m: batch[f"{m}_present"].numpy() for m in usable}
        inputs = {m: {k: batch[k] for k in self.parts.inputs(m)} for m in usable}
        return Prepared(inputs=inputs, present=present, owner=batch["sample_index"].numpy(),
                        n_samples=1, ignored=[m for m in have if m not in usable])

    def normalize(self, batch: dict[str, torch.Tensor], subject: str | None) -> str:
        """Standardise ``batch``'s inputs in place as the model was trained: with the
        subject's calibration, else the subject's training statistics, else the pooled
        (subject-independent) ones. Returns which was used: ``calibration``, ``training``,
        ``pooled`` or ``none`` (a model without subject statistics)."""
        if self.subject_stats is None:
            return "none"
        n = int(batch["sample_index"].shape[0])
        stats, source = self.subject_stats, "pooled"
        if subject is not None and subject in self.calibrations:
            stats, source = self.calibrations[subject], "calibration"
        elif subject is not None and self.subject_stats.has(subject):
            source = "training"
        stats.apply(batch, [subject] * n)
        return source

    def calibrate(self, subject: str, sample: Mapping[str, Any],
                  reset: bool = False) -> dict[str, Any]:
        """Keep the statistics of ``subject``'s calibration recording (``sample`` as in
        :meth:`prepare`, labels unused); later requests naming the subject use them.
        Recordings of one subject add up (a calibration session may be several
        recordings, ideally spanning the states the person will be in); ``reset`` starts
        the subject over.

        Raises
        ------
        ConfigError
            The model was trained without subject statistics.
        DataError
            The recording holds no modality whose inputs the model standardises.
        """
        from emoray.errors import DataError

        if self.subject_stats is None:
            raise ConfigError("this model was trained without per-subject statistics "
                              "(fusion stage subject_norm empty): a calibration would not "
                              "change its answers")
        batch = prepare_inputs(self.contract, [sample], "cpu")
        fresh = SubjectStats(self.subject_stats.columns)
        fresh.update(batch, [subject] * int(batch["sample_index"].shape[0]))
        if not fresh.has(subject):
            raise DataError("calibration", f"the recording holds none of the inputs the model "
                            f"standardises per subject ({self.subject_stats.columns})",
                            kind="layout", field="input")
        if not reset and subject in self._calibration_sums:
            fresh = self._calibration_sums[subject].merge(fresh)
        self._calibration_sums[subject] = fresh
        self.calibrations[subject] = self.subject_stats.adopt(subject, fresh)
        modalities = sorted({MODALITY[c] for c in fresh.columns_of(subject)})
        self._calibration_rows[subject] = (0 if reset else self._calibration_rows.get(
            subject, 0)) + int(batch["sample_index"].shape[0])
        return {"subject": subject, "segments": self._calibration_rows[subject],
                "modalities": modalities, "calibrated_subjects": len(self.calibrations)}

    def encode(self, modality: str, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Encoder output of ``modality`` for the rows of ``tensors`` (float32, CPU)."""
        return self.parts.encode(modality, tensors)

    def combine(self, encoded: Mapping[str, torch.Tensor], prepared: Prepared) -> Prediction:
        """The prediction of one prepared request from its modalities' encoder outputs."""
        (pred,) = self.parts.combine(encoded, prepared.present, prepared.owner, 1)
        pred.ignored = list(prepared.ignored)
        return pred
