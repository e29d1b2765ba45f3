"""The ``train`` section: the split, the settings every stage shares, and one config
section per training stage.

A stage's settings class is registered here by name with :func:`stage_config`, in the
order stages run (JMML's three, METHODS.md A, then the attention fusion, B); the stage's
worker loop, driver, model and metrics register in its own file under
:mod:`emoray.train.stages`. These classes are plain pydantic (no torch), so resolving a
config that names stages stays cheap.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)
from pydantic_core import PydanticCustomError

from emoray.config.base import _plain_folder_name, _Strict
from emoray.errors import ConfigError

TRAIN_FRACTION = 0.7
#: the two modalities of JMML (METHODS.md A) and its binary targets
JMML_MODALITIES = ("speech", "eeg")
TARGETS = ("valence", "arousal")
#: the modalities a model sees (speech is carried by a record's ``audio`` signal)
MODALITIES = ("eeg", "speech", "video")

#: stage name -> its settings class, in the order stages run
STAGE_CONFIGS: dict[str, type["StageCommon"]] = {}


def stage_config(name: str):
    """Class decorator: register the settings class of training stage ``name``."""
    def register(cls):
        STAGE_CONFIGS[name] = cls
        return cls
    return register


class StageCommon(BaseModel):
    """Settings every stage has: optimisation basics and the Ray Train scaling.

    Placement on a multi-node cluster: each Train worker asks for ``cpus_per_worker``
    CPUs plus ``worker_resources`` (custom resources of the nodes meant to train, e.g.
    ``{"trainer": 1}`` when the worker nodes are started with that resource, so no worker
    lands on the head); ``placement_strategy`` is the strategy of the workers' placement
    group: ``PACK`` (Ray's default: as few nodes as fit), ``SPREAD`` (different nodes
    where possible), ``STRICT_SPREAD`` (every worker on its own node, or the stage waits)
    or ``STRICT_PACK`` (all on one node).
    """

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(16, gt=0)
    num_workers: int = Field(2, gt=0)
    cpus_per_worker: float = Field(0.5, gt=0)     # RAY.md trap 2: leave CPUs to Ray Data
    use_gpu: bool | None = None     # None: this machine or the cluster has GPUs (gpu_auto)
    seed: int = 0
    max_failures: int = Field(1, ge=-1)
    controller_failure_limit: int = Field(-1, ge=-1)  # tests: 0 (RAY.md trap 4)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    worker_resources: dict[str, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)
    materialize: bool = False    # cache the split datasets in the object store (small data)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"   # Ray Train's own

    @field_validator("worker_resources")
    @classmethod
    def _custom_only(cls, v: dict[str, float]) -> dict[str, float]:
        builtin = [k for k in v if k.upper() in ("CPU", "GPU")]
        if builtin:
            raise ValueError(f"{builtin} are set by cpus_per_worker and use_gpu; "
                             "worker_resources holds custom resources only")
        return v

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Validate ``data``; problems raise :class:`ConfigError` naming each field."""
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            bad = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}"
                            for e in err.errors())
            raise ConfigError(f"{cls.__name__}: {bad}") from None


@stage_config("intra")
class IntraStageConfig(StageCommon):
    """JEC-SSL: one MLP encoder per modality, class + supervised contrastive loss."""

    modalities: list[str] = Field(default_factory=lambda: ["speech", "eeg"])
    targets: list[str] = Field(default_factory=lambda: list(TARGETS))
    eeg_feature: Literal["eeg_de", "eeg_bp"] = "eeg_de"
    encoders: dict[str, str] = Field(default_factory=lambda: {"speech": "tiny", "eeg": "tiny"})
    ssl_weight: float = Field(1.0, ge=0)
    temperature: float = Field(0.1, gt=0)
    mask_p: float = Field(0.2, ge=0, lt=1)
    noise_std: float = Field(0.1, ge=0)
    epochs: int = Field(20, gt=0)
    batch_size: int = Field(32, gt=1)

    @field_validator("modalities")
    @classmethod
    def _modalities(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v) or any(m not in JMML_MODALITIES for m in v):
            raise ValueError(f"expected distinct modalities from {list(JMML_MODALITIES)}, "
                             f"got {v}")
        return v

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v) or any(t not in TARGETS for t in v):
            raise ValueError(f"expected distinct targets from {list(TARGETS)}, got {v}")
        return v


@stage_config("inter")
class InterStageConfig(StageCommon):
    """E-DCC-CAE: ``-corr + alpha L_self + beta L_cross + gamma L_cls`` (METHODS.md)."""

    k: int = Field(8, gt=0, description="common-space size")
    hidden: int = Field(64, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    alpha: float = Field(0.1, ge=0)
    beta: float = Field(0.1, ge=0)
    gamma: float = Field(0.5, ge=0)
    cca_reg: float = Field(1e-3, gt=0)
    top_o: int | None = Field(None, gt=0)
    pairing: Literal["auto", "natural", "label"] = "auto"
    l2: float = Field(1e-2, ge=0, description="ridge of the per-epoch logistic probes")
    from_checkpoint: str | None = Field(None, description="an intra bundle (default: the "
                                        "plan's intra stage)")
    epochs: int = Field(30, gt=0)
    batch_size: int = Field(64, gt=1)

    @model_validator(mode="after")
    def _dcca_batch(self):
        if self.batch_size <= self.k + 1:
            raise ValueError(f"batch_size ({self.batch_size}) must exceed k + 1 "
                             f"({self.k + 1}): DCCA estimates k x k covariances per batch")
        if self.top_o is not None and self.top_o > self.k:
            raise ValueError(f"top_o ({self.top_o}) must be <= k ({self.k})")
        return self


@stage_config("classifier")
class ClassifierStageConfig(StageCommon):
    """Logistic regressions on the inference representations (and ablation baselines)."""

    l2: float = Field(1e-2, ge=0)
    balanced: bool = True
    max_iter: int = Field(200, gt=0)
    from_checkpoint: str | None = Field(None, description="an inter bundle (default: the "
                                        "plan's inter stage)")
    epochs: int = Field(1, ge=1, le=1, description="one pass: fit, score, save")
    num_workers: int = Field(1, gt=0)


#: feature columns a fusion stage may standardise per subject (emoray.data.subject_norm)
SUBJECT_NORM_COLUMNS = ("eeg", "eeg_bp", "eeg_de", "logmel", "audio_stats", "video")


@stage_config("fusion")
class FusionStageConfig(StageCommon):
    """Settings of the fusion stage (YAML overlay of a training plan)."""

    modalities: list[str] = Field(default_factory=lambda: ["eeg", "speech", "video"])
    encoders: dict[str, str] = Field(
        default_factory=lambda: {"eeg": "tiny", "speech": "tiny", "video": "tiny"})
    architectures: dict[str, str] = Field(
        default_factory=dict, description="modality -> registered encoder name (default: "
        "eegformer on raw EEG, ast on log-mel, vit on frames; bandpower reads the EEG's "
        "log band power per channel)")
    dim: int = Field(64, gt=0)
    heads: int = Field(4, gt=0)
    layers: int = Field(2, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    modality_dropout: float = Field(0.2, ge=0, lt=1)
    aux_weight: float = Field(0.3, ge=0)
    per_modality: Literal["fusion", "aux"] = Field(
        "fusion", description="where a modality's own score comes from: the fused head given "
        "that modality alone, or its auxiliary head (needs aux_weight > 0)")
    warmup_epochs: int = Field(1, ge=0, description="epochs of linear learning-rate warmup")
    grad_clip: float | None = Field(None, gt=0, description="clip the gradients' global norm "
                                    "to this before each step (None: no clipping)")
    schedule: Literal["cosine", "constant"] = Field(
        "cosine", description="learning rate after warmup: cosine decay to 5 % of lr, or "
        "constant")
    shuffle_buffer: int = Field(256, ge=0, description="rows of the per-epoch local "
                                "shuffle of each worker's shard (seeded by seed and epoch; "
                                "0: shard order)")
    subject_norm: list[str] = Field(
        default_factory=list, description="feature columns standardised with their "
        "subject's statistics (train subjects' from the train split; any other subject's "
        "from a calibration recording, else the pooled ones): some of eeg, eeg_bp, eeg_de, "
        "logmel, audio_stats, video")
    fuse_aux: bool = Field(False, description="the fused logits add the auxiliary heads' "
                           "logits of the modalities present (a product of experts beside "
                           "the attention head)")
    mixup: float = Field(0.0, ge=0, description="mixup's Beta(a, a) parameter (0: off): "
                         "pairs of rows mixed in every feature column and in the loss")
    feature_noise: dict[str, float] = Field(
        default_factory=dict, description="column -> std of Gaussian noise added to that "
        "column in training, in the standard units of subject_norm (the column must be "
        "standardised): a ridge-like regulariser for encoders of hand features, e.g. "
        "{eeg_bp: 1.0}; empty: none")
    select_epoch: Literal["last", "inner"] = Field(
        "last", description="which epoch's weights the stage ships: 'last', or 'inner': the "
        "epoch with the best accuracy on an inner split of the TRAIN records (the last "
        "INNER_FRACTION of each subject x class's train trials, held out of the fit), so "
        "that the validation split stays unseen by the choice")
    inner_fraction: float = Field(0.15, gt=0, lt=0.5, description="share of each subject "
                                  "x class's train trials held out as the inner split")
    calibrate_unseen: bool = Field(
        False, description="with subject_norm: a subject that only validates (leave-"
        "subjects-out) is standardised with statistics of its own records, labels unused, as "
        "a calibration recording gives a served model (POST /v1/subjects/{id}/calibration); "
        "false: the pooled statistics, as for an uncalibrated user")
    fuse_weights: Literal["equal", "inner"] = Field(
        "equal", description="under fuse_aux, how the attention head and the aux heads are "
        "weighed: 'equal', or 'inner': non-negative weights fitted on the inner split after "
        "the last epoch (stacking; the inner split is held out of the fit, as for "
        "select_epoch 'inner')")

    @field_validator("modalities")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in MODALITIES]
        if bad or not v or len(set(v)) != len(v):
            raise ValueError(f"expected a non-empty list of distinct modalities from "
                             f"{list(MODALITIES)}, got {v}")
        return v

    @model_validator(mode="after")
    def _heads_divide_dim(self):
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be a multiple of heads ({self.heads})")
        loose = [c for c in self.feature_noise if c not in self.subject_norm]
        if loose:
            raise ValueError(f"feature_noise: column {loose[0]!r} is not standardised per "
                             f"subject; add it to subject_norm ({self.subject_norm}) so the "
                             f"noise has standard units")
        bad = {c: s for c, s in self.feature_noise.items() if not 0 <= s <= 10}
        if bad:
            raise ValueError(f"feature_noise: std must be in [0, 10], got {bad}")
        if self.fuse_weights == "inner" and not self.fuse_aux:
            raise ValueError("fuse_weights 'inner' fits the weights of fuse_aux's experts on "
                             "the inner split: set fuse_aux: true")
        return self

    @field_validator("subject_norm")
    @classmethod
    def _norm_columns(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if c not in SUBJECT_NORM_COLUMNS]
        if bad:
            raise ValueError(f"unknown column {bad[0]!r}; expected some of "
                             f"{list(SUBJECT_NORM_COLUMNS)}")
        return v


#: Training stages a plan may name, in the order they run.
STAGE_NAMES = tuple(STAGE_CONFIGS)


class SplitConfig(_Strict):
    """Which records train and which validate: METHODS.md's within-subject split, or
    held-out subjects (leave-subjects-out evaluation)."""

    protocol: Literal["within-subject", "subjects"] = Field(
        "within-subject", description="'within-subject': per subject x class the first "
        "FRACTION of trials train (with all their segments), the rest validate; "
        "'subjects': VAL_SUBJECTS validate.")
    fraction: float = Field(TRAIN_FRACTION, gt=0, lt=1)
    val_subjects: list[str] = Field(default_factory=list)


class TrainConfig(_Strict):
    """Train: a plan of stages over one preprocess output; the run folder is OUTPUT/NAME.

    ``stages`` maps a stage name (see :data:`STAGE_NAMES`) to its settings; each stage's
    settings are validated by that stage's own config class
    (:data:`STAGE_CONFIGS`, torch-free, so commands that do not train never import
    torch). An empty ``stages`` runs the fusion stage with its defaults.
    """

    name: str = Field("fusion", min_length=1, description="Run name; the run folder is "
                      "OUTPUT/NAME and re-running the same name skips or resumes stages.")
    features: str | None = Field(None, description="A preprocess output folder.")
    output: str = Field("runs/train", description="Storage root of training runs.")
    stages: dict[str, Any] = Field(default_factory=dict, description="Stage name -> stage "
                                   f"settings; valid stages: {list(STAGE_NAMES)}.")
    split: SplitConfig = Field(default_factory=SplitConfig)

    _plain_name = field_validator("name")(_plain_folder_name)

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, v: dict[str, Any]) -> dict[str, Any]:
        unknown = [k for k in v if k not in STAGE_NAMES]
        if unknown:
            raise PydanticCustomError(
                "unknown_stage", "unknown stage {bad}; valid stages: {valid}",
                {"bad": ", ".join(repr(k) for k in unknown), "valid": list(STAGE_NAMES)})
        out = {}
        for stage, body in v.items():
            klass = STAGE_CONFIGS[stage]
            if isinstance(body, klass):
                out[stage] = body
                continue
            try:
                out[stage] = klass.model_validate(body or {})
            except ValidationError as exc:
                bad = "; ".join(
                    f"{'.'.join([stage, *map(str, e['loc'])])}: {e['msg']}"
                    + (f" (got {e['input']!r})" if not isinstance(e.get("input"), dict)
                       else "") for e in exc.errors())
                raise PydanticCustomError("stage_config", "{bad}", {"bad": bad}) from None
        return out


