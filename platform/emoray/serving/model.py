"""The served model: a checkpoint found, loaded and cut into what each deployment runs.

:func:`resolve_checkpoint` accepts what users have at hand: a bundle folder, a training run
folder (its last servable stage), a tuning campaign folder (its promoted ``best``), or any of
these behind a pyarrow filesystem URI (``s3://``, ``gs://``, ``file://`` ...), downloaded once
into a local cache; or an MLflow artifact (``runs:/RUN_ID/bundle``, ``mlflow-artifacts:/...``)
downloaded through MLflow's client from ``MLFLOW_TRACKING_URI``.

:class:`ServedModel` holds the bundle's model split by :mod:`emoray.predict.heads` for one *role*:
an encoder replica keeps only its modality's encoder, the router only the combining head
(attention fusion or the JMML common space and classifiers), so no replica holds weights
it never uses.

The contract runs where it scales: :meth:`ServedModel.route` (the router) only checks a
request (shapes, rates, channels, lengths; JPEG frames are counted, not decoded), fixes its
segments and picks each modality's standardisation (the subject's calibration, training or
pooled statistics), and :meth:`ServedModel.prepare_modality` (that modality's encoder
deployment) applies the checkpoint's preprocessing contract to its modality (the code the
training features were made with: :func:`emoray.predict.inputs.modality_rows`), so the
heaviest modality scales on its own replicas. :meth:`ServedModel.prepare` is both in one
process (the in-process path), so the two cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emoray.data.subject_norm import MODALITY, SubjectStats, standardize
from emoray.errors import ConfigError, DataError, EmorayError
from emoray.bundle import META_FILE, load_servable, read_bundle_meta, servable
from emoray.predict import (INCONGRUENCE_THRESHOLD, MIN_SECONDS, MODALITIES, ModelParts,
                            Prediction, model_parts, prepare_inputs)
from emoray.predict.inputs import MAX_ABS, modality_rows, plan_sample, rows_to_tensors

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
    from emoray.tracking import download, is_mlflow_uri

    if is_mlflow_uri(source):                       # an MLflow run's bundle artifact
        local = download(str(source), cache or tempfile.mkdtemp(prefix="emoray-mlflow-"))
    elif is_uri(source):
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


@dataclass
class Routed:
    """One request after the router's checks, before any transform: per present modality
    the part its deployment gets (:meth:`ServedModel.prepare_modality`: the checked input,
    the segment count, the standardisation moments), and what the combining head needs."""

    parts: dict[str, dict[str, Any]]
    present: dict[str, np.ndarray]
    owner: np.ndarray
    n_samples: int
    ignored: list[str]
    standardised: str


def refusal(err: EmorayError) -> dict[str, Any]:
    """A deployment's answer for an input the contract refused (Ray would not carry the
    exception's fields back): see :func:`raise_refusal`."""
    if isinstance(err, DataError):
        return {"refused": "data", "path": err.path, "reason": err.reason, "kind": err.kind,
                "field": err.field}
    return {"refused": "config", "reason": str(err)}


def failure(err: Exception) -> dict[str, Any]:
    """A deployment's answer for one batched request whose work failed unexpectedly (a
    fault, not a refusal): the others of the batch still get their answers, this request's
    :func:`raise_refusal` raises a ``RuntimeError`` (a 500 for it alone)."""
    return {"refused": "fault", "reason": f"{type(err).__name__}: {err}"}


def raise_refusal(answer: Any) -> None:
    """Raise the error of a :func:`refusal` or :func:`failure` answer; anything else
    passes."""
    if isinstance(answer, dict) and "refused" in answer:
        if answer["refused"] == "data":
            raise DataError(answer["path"], answer["reason"], kind=answer["kind"],
                            field=answer["field"])
        if answer["refused"] == "fault":
            raise RuntimeError(answer["reason"])
        raise ConfigError(answer["reason"])


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
            "emoray_version": self.meta.get("emoray_version"),
            "label_names": list(self.parts.label_names), "modalities": list(self.modalities),
            "eeg": {"channels": c.eeg.channels, "sfreq": c.eeg.sfreq,
                    "any_sfreq": True, "any_channel_order": True,
                    "unit": "V", "max_abs": MAX_ABS["eeg.data"]},
            "speech": {"sample_rate": c.audio.sample_rate, "any_sample_rate": True,
                       "max_abs": MAX_ABS["speech.samples"]},
            "video": {"n_frames": c.video.n_frames, "size": c.video.size},
            "segment_seconds": c.segment_seconds, "min_seconds": MIN_SECONDS,
            "metrics": {k: v for k, v in (self.meta.get("metrics") or {}).items()
                        if isinstance(v, (int, float, str))},
            "campaign": json.loads(campaign.read_text()) if campaign.is_file() else None}

    def prepare(self, sample: Mapping[str, Any]) -> Prepared:
        """Apply the contract to one request's inputs (``{"eeg": EEGInput | None, ...}``):
        :meth:`route`, then :meth:`prepare_modality` per modality, in this process.

        Raises DataError/ConfigError naming the field for an input the contract refuses.
        A modality the model has no encoder for is listed in ``ignored``; a request holding
        only such modalities is refused.
        """
        routed = self.route(sample)
        inputs = {m: self.prepare_modality(m, part) for m, part in routed.parts.items()}
        return Prepared(inputs=inputs, present=routed.present, owner=routed.owner,
                        n_samples=routed.n_samples, ignored=routed.ignored)

    def route(self, sample: Mapping[str, Any]) -> Routed:
        """The router's share of :meth:`prepare`: check the request and lay out each present
        modality's part (no transform runs here)."""
        have = [m for m in MODALITIES if sample.get(m) is not None]
        usable = [m for m in have if m in self.modalities]
        if have and not usable:
            raise DataError("request", f"the model has no encoder for {have}; it takes "
                            f"{self.modalities}", kind="layout", field="input")
        plan = plan_sample(self.contract, sample)
        stats, source = self.statistics(sample.get("subject"))
        n = plan.n_segments
        parts = {m: {"value": plan.inputs[m], "n_segments": n,
                     "moments": ({} if stats is None else
                                 stats.moments_for(sample.get("subject"), self.parts.inputs(m)))}
                 for m in usable}
        return Routed(parts=parts, present={m: np.ones(n, dtype=bool) for m in usable},
                      owner=np.zeros(n, dtype=np.int64), n_samples=1,
                      ignored=[m for m in have if m not in usable], standardised=source)

    def prepare_modality(self, modality: str, part: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """A modality deployment's share of :meth:`prepare`: the contract applied to its
        part of a routed request, standardised; the tensors its encoder reads."""
        value = part["value"]
        rows = modality_rows(self.contract, modality, value, int(part["n_segments"]))
        n_chans = len(self.contract.eeg.channels or []) or (
            int(np.shape(value.data)[0]) if modality == "eeg" else 0)
        tensors = rows_to_tensors(self.contract, rows, n_chans)
        standardize(tensors, part["moments"])
        return {k: tensors[k] for k in self.parts.inputs(modality)}

    def statistics(self, subject: str | None) -> tuple[SubjectStats | None, str]:
        """The statistics a request of ``subject`` is standardised with, and which they are:
        ``calibration`` (kept by :meth:`calibrate`), ``training`` (the subject was in the
        training data), ``pooled`` (subject-independent) or ``none`` (the model was trained
        without subject statistics)."""
        if self.subject_stats is None:
            return None, "none"
        if subject is not None and subject in self.calibrations:
            return self.calibrations[subject], "calibration"
        if subject is not None and self.subject_stats.has(subject):
            return self.subject_stats, "training"
        return self.subject_stats, "pooled"

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

    def combine(self, encoded: Mapping[str, torch.Tensor],
                prepared: Prepared | Routed) -> Prediction:
        """The prediction of one prepared (or routed) request from its modalities' encoder
        outputs."""
        (pred,) = self.parts.combine(encoded, prepared.present, prepared.owner, 1)
        pred.ignored = list(prepared.ignored)
        return pred

    def combine_many(self, items: list[tuple[Mapping[str, torch.Tensor], Prepared | Routed]]
                     ) -> list[Prediction | dict[str, Any]]:
        """:meth:`combine` of several requests, one head pass per set of present modalities
        (the router's batches): each request's rows stay its own (its ``owner``), so every
        prediction is the one :meth:`combine` gives it alone, up to float rounding. Should a
        pass fail, its requests are combined one by one, and one that still fails gets a
        :func:`failure` instead of a prediction."""
        preds: list[Prediction | None] = [None] * len(items)
        groups: dict[tuple, list[int]] = {}
        for i, (encoded, prepared) in enumerate(items):
            groups.setdefault((tuple(encoded), tuple(prepared.present)), []).append(i)
        for (mods, shown), idx in groups.items():
            try:
                encoded = {m: torch.cat([items[i][0][m] for i in idx]) for m in mods}
                present = {m: np.concatenate([items[i][1].present[m] for i in idx])
                           for m in shown}
                owner = np.concatenate([np.full(len(items[i][1].owner), j, dtype=np.int64)
                                        for j, i in enumerate(idx)])
                together = self.parts.combine(encoded, present, owner, len(idx))
            except Exception:              # one request's fault: each alone, it alone fails
                for i in idx:
                    try:
                        preds[i] = self.combine(*items[i])
                    except Exception as err:
                        preds[i] = failure(err)
                continue
            for i, pred in zip(idx, together):
                pred.ignored = list(items[i][1].ignored)
                preds[i] = pred
        return preds
