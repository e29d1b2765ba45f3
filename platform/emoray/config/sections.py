"""The sections of the data, tuning and serving commands: ``ray``, ``ingest``,
``preprocess``, ``tune`` and ``serve`` (the ``synth`` section is
:class:`emoray.synth.config.SynthConfig`, the ``train`` section :mod:`emoray.config.train`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from emoray.config.base import _plain_folder_name, _Strict
from emoray.config.contract import PreprocessContract


class RayConfig(_Strict):
    """How emoray reaches Ray: an existing cluster, or an embedded local one."""

    address: str | None = Field(None, description="Ray cluster address ('auto', 'ray://...'); "
                                "None starts an embedded local Ray.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the embedded local Ray "
                                 "(None: all cores).")
    include_dashboard: bool | None = Field(None, description="Start the dashboard (127.0.0.1) "
                                           "for the embedded Ray; None lets Ray decide.")
    object_store_mb: int | None = Field(None, ge=64, description="Object store size (MB) of "
                                        "the embedded Ray.")
    host: str = Field("127.0.0.1", description="Address every process of the embedded Ray "
                      "listens on: 127.0.0.1 (loopback only) or one of this machine's "
                      "addresses, or 0.0.0.0 for Ray's default (all interfaces), to let "
                      "other machines reach it. Serve's HTTP port is serve.host.")

    @field_validator("host")
    @classmethod
    def _an_address(cls, value: str) -> str:
        import ipaddress

        if value == "localhost":
            return "127.0.0.1"
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(f"expected an IP address (127.0.0.1, 0.0.0.0 or one of this "
                             f"machine's), got {value!r}") from None


class IngestConfig(_Strict):
    """Ingest: a dataset tree -> Parquet shards of segmented records."""

    layout: str = Field("manifest", description="Dataset adapter: manifest, bids, eav, deap, seed, "
                        "dreamer, iemocap.")
    source: str | None = Field(None, description="Dataset root (or manifest CSV).")
    output: str | None = Field(None, description="Output folder; shards go to OUTPUT/shards.")
    options: dict[str, Any] = Field(default_factory=dict, description="Adapter options, e.g. "
                                    "{task: speaking} for EAV.")
    segment_seconds: float = Field(5.0, gt=0, description="Segment length (EAV: 5 s).")
    short_trials: Literal["pad", "reject"] = Field(
        "pad", description="Trials shorter than one segment (IEMOCAP utterances): zero-pad "
        "to one segment (the valid length is kept in `valid_seconds`) or reject.")
    min_trial_seconds: float = Field(1.0, ge=0, description="Shorter trials are rejected "
                                     "as truncated.")
    video_fps: float = Field(5.0, gt=0, description="Frame rate kept from video (EAV 30 fps "
                             "-> every 6th frame).")
    video_max_size: int = Field(256, ge=16, description="Longer side of stored frames (px).")
    jpeg_quality: int = Field(90, ge=10, le=100, description="Stored frames are JPEG.")
    trials_per_shard: int = Field(8, ge=1, description="Trials per Parquet shard (and per "
                                  "Ray task).")
    resample_mismatched: bool = Field(False, description="Resample a file whose sample rate "
                                      "differs from the dataset's instead of rejecting it.")
    channels: str | list[str] | None = Field(
        None, description="EEG channel set: a list of names, `intersection` (the channels "
        "every EEG file has) or an MNE montage name such as `standard_1020` (its channels "
        "that every file has). Files with more channels are kept, picked to the set; the "
        "report says what was dropped from which file. None: the dataset's declared "
        "channels (a manifest's first file); a file lacking one is rejected.")
    force: bool = Field(False, description="Re-ingest even when the output is up to date.")


class PreprocessConfig(_Strict):
    """Preprocess: record shards -> feature shards, per the preprocessing contract."""

    input: str | None = Field(None, description="An ingest output folder.")
    output: str | None = Field(None, description="Output folder for feature shards.")
    contract: PreprocessContract = Field(default_factory=PreprocessContract)
    batch_size: int = Field(16, ge=1, description="Records per preprocessing batch.")
    video_storage: Literal["uint8", "float32"] = Field(
        "uint8", description="Stored frames: uint8 after resize (normalised by the contract "
        "at load time; 4x smaller) or normalised float32.")
    force: bool = Field(False, description="Recompute even when the output is up to date.")


class ParamSpec(_Strict):
    """One search-space dimension: ``float``/``int`` between ``low`` and ``high``
    (``log`` scale, optional ``step``) or a ``choice`` among ``values``."""

    type: Literal["float", "int", "choice"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _bounds(self):
        if self.type == "choice":
            if not self.values or self.low is not None or self.high is not None:
                raise ValueError("a choice needs a non-empty `values` list (and no low/high)")
            return self
        if self.values is not None:
            raise ValueError(f"a {self.type} range takes low/high, not values")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} range needs both low and high")
        if not self.low < self.high:
            raise ValueError(f"expected low < high, got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got low={self.low}")
        if self.log and self.step is not None:
            raise ValueError("a log range takes no step")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"an int range needs whole bounds, got {self.low}..{self.high}")
        return self


class SchedulerConfig(_Strict):
    """Early stopping of a campaign's trials (``time_attr`` = epochs of the tuned stage)."""

    type: Literal["asha", "fifo"] = Field("asha", description="'asha': successive halving "
                                          "(stops trials below the rung's top 1/eta); "
                                          "'fifo': every trial runs all its epochs.")
    grace_period: int = Field(1, ge=1, description="Epochs before a trial can be stopped.")
    reduction_factor: float = Field(2.0, gt=1)
    max_t: int | None = Field(None, ge=1, description="Last rung (default: the tuned "
                              "stage's epochs).")


class TuneConfig(_Strict):
    """Tune: a hyperparameter-search campaign over one training plan's fields."""

    name: str = Field("campaign", min_length=1, description="Campaign name; its folder is "
                      "STORAGE/NAME and `--resume NAME` continues it.")
    plan: str | None = Field(None, description="The training plan YAML tuned (its `ray` and "
                             "`train` sections; the campaign file's own `train` overlays it).")
    storage: str = Field("runs/tune", description="Campaign storage: a local folder or a "
                         "pyarrow filesystem URI (s3://, gs://, ...) every node reaches.")
    work_dir: str | None = Field(None, description="Where trials' training runs go (default "
                                 "STORAGE/NAME/trials for a local STORAGE, else "
                                 "runs/tune-work/NAME; shared by all nodes on a cluster).")
    space: dict[str, ParamSpec] = Field(default_factory=dict, description="Dotted plan field "
                                        "(e.g. stages.inter.k) -> its distribution.")
    stage: str | None = Field(None, description="The stage whose metric is tuned (default: "
                              "the last plan stage the space touches).")
    metric: str = Field("val_f1", description="A metric the tuned stage reports each epoch.")
    mode: Literal["max", "min"] = "max"
    num_samples: int = Field(8, ge=1, description="Trials in the campaign.")
    max_concurrent: int = Field(2, ge=1, description="Trials at once (lowered to what the "
                                "cluster's CPUs fit).")
    search: Literal["optuna", "random"] = Field("optuna", description="'optuna': TPE "
                                                "(seeded); 'random': the baseline.")
    startup_trials: int | None = Field(None, ge=1, description="TPE's random start-up trials "
                                       "(default: a third of num_samples, 2..10).")
    seed: int = 0
    points_to_evaluate: list[dict[str, Any]] = Field(default_factory=list, description=
                                                     "Configurations tried first (Optuna).")
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    trial_cpus: float = Field(0.1, gt=0, description="CPUs of each trial's driver function "
                              "(its Train workers reserve their own).")
    data_cpus: float = Field(1.0, ge=0, description="CPUs kept free for Ray Data reads "
                             "(RAY.md trap 2).")
    cluster_cpus: float | None = Field(None, gt=0, description="CPUs an autoscaling cluster "
                                       "can grow to (default: what it has now).")

    _plain_name = field_validator("name")(_plain_folder_name)


class TrackingConfig(_Strict):
    """MLflow tracking of plan runs, stages, evaluations and tuning campaigns."""

    enabled: bool = Field(True, description="Log every plan run, stage, evaluation and "
                          "campaign (trials as nested runs) to MLflow.")
    uri: str | None = Field(None, description="MLflow tracking URI: a server "
                            "(http://HOST:5000) or sqlite:///PATH/mlflow.db; None: a "
                            "sqlite store in the output root (OUTPUT/mlflow.db).")
    experiment: str = Field("emoray", min_length=1, description="MLflow experiment name.")


class AutoscalingConfig(_Strict):
    """Ray Serve autoscaling of one deployment (its ``autoscaling_config``)."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0, description="Requests per replica "
                                           "the autoscaler aims at.")
    upscale_delay_s: float = Field(5.0, ge=0)
    downscale_delay_s: float = Field(60.0, ge=0)
    metrics_interval_s: float = Field(2.0, gt=0, description="How often replicas report "
                                      "their load (Serve's default: 10 s).")
    look_back_period_s: float = Field(10.0, gt=0, description="Window the load is averaged "
                                      "over (Serve's default: 30 s).")

    @model_validator(mode="after")
    def _ordered(self):
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) must not exceed "
                             f"max_replicas ({self.max_replicas})")
        return self


class DeploymentConfig(_Strict):
    """Replicas, resources and batching of one Serve deployment."""

    autoscaling: AutoscalingConfig | None = Field(
        default_factory=AutoscalingConfig, description="null: a fixed num_replicas.")
    num_replicas: int = Field(1, ge=1, description="Replicas when autoscaling is null.")
    max_ongoing_requests: int = Field(16, ge=1)
    num_cpus: float = Field(0.25, ge=0, description="CPUs each replica reserves.")
    num_gpus: float = Field(0.0, ge=0)
    max_batch_size: int = Field(8, ge=1, description="Most requests in one batch (encoders: "
                                "per call from a router replica; router: per fusion-head "
                                "pass).")
    batch_wait_timeout_s: float = Field(
        0.0, ge=0, description="How long a batch's first request waits for others; 0: "
        "only those already queued (batches still grow under load, from the requests "
        "that queue while one batch runs, and a lone request waits for nothing).")
    max_inflight_batches: int = Field(
        1, ge=1, description="Encoders, with batching on: calls each router replica keeps "
        "in flight to this deployment before requests wait to go out together (up to "
        "max_batch_size; a full batch goes out at once), so a Serve hop is paid per batch, "
        "not per request. It is also how many of this deployment's replicas one router "
        "replica keeps busy below full batches (raise it for heavy encoders, e.g. on GPUs; "
        "1 is cheapest where Serve's hops cost more than the encoder).")
    busy_wait_s: float = Field(
        0.005, ge=0, description="Encoders, with batching on: while the router replica "
        "holds more requests than max_batch_size, a partial batch waits this long for more "
        "before it goes out (a lone request never waits).")


SERVE_ROLES = ("router", "eeg", "speech", "video")


def default_deployment(role: str) -> DeploymentConfig:
    """A role's deployment when the config names none. The router holds many requests per
    replica (each mostly waits on its encoders, and the more it holds, the larger its
    batches to them): 64 at most, scaling out above 16 on average. An encoder's requests
    are the routers' batches (``max_inflight_batches`` per router replica): it scales out
    above one in flight per replica."""
    if role == "router":
        return DeploymentConfig(max_ongoing_requests=64,
                                autoscaling=AutoscalingConfig(target_ongoing_requests=16))
    return DeploymentConfig(autoscaling=AutoscalingConfig(target_ongoing_requests=1))


class StreamConfig(_Strict):
    """Live streams on ``/v1/stream`` (:mod:`emoray.serving.stream`): the server's defaults
    and bounds; a stream's first message may choose its own window and hop within them."""

    window_seconds: float | None = Field(None, gt=0, description="Signal each answer "
                                         "covers; null: the contract's segment_seconds.")
    hop_seconds: float = Field(1.0, gt=0, description="Signal between two answers.")
    min_hop_seconds: float = Field(0.25, gt=0, description="The smallest hop a stream may "
                                   "ask for (each answer costs a model pass).")
    max_streams: int = Field(64, ge=1, description="Open streams per router replica; one "
                             "more is closed with code 1013 (try again later).")
    first_message_timeout_s: float = Field(10.0, gt=0, description="A stream that sends "
                                           "no first message in this time is closed.")
    idle_timeout_s: float = Field(60.0, gt=0, description="A stream silent this long is "
                                  "closed.")
    max_chunk_seconds: float = Field(10.0, gt=0, description="Signal one chunk may hold.")
    max_skew_seconds: float = Field(10.0, gt=0, description="How far one modality may run "
                                    "ahead of another before the stream is closed.")


class ServeConfig(_Strict):
    """Online inference on Ray Serve (``emoray serve``, ``serve/config.yaml`` args)."""

    checkpoint: str | None = Field(None, description="A bundle, training run or campaign "
                                   "folder, or a storage URI of one.")
    app_name: str = Field("emoray", min_length=1)
    route_prefix: str = Field("/", pattern=r"^/")
    host: str = Field("127.0.0.1", description="HTTP bind address (0.0.0.0 to expose).")
    port: int = Field(8000, ge=1, le=65535)
    api_key_env: str | None = Field(None, description="Name of an environment variable "
                                    "holding the API key; requests must send it in "
                                    "X-API-Key. Unset: no auth (local use).")
    max_body_mb: float = Field(32.0, gt=0, description="Larger request bodies get 413.")
    max_seconds: float = Field(120.0, gt=0, description="Longest recording accepted.")
    max_channels: int = Field(256, ge=1)
    max_frames: int = Field(3000, ge=1)
    max_pixels: int = Field(500_000_000, ge=1, description="Source video pixels a request "
                            "may decode, all frames together (bounds work, not size).")
    request_timeout_s: float = Field(60.0, gt=0, description="A request still running "
                                     "after this long is answered 504.")
    public_docs: bool = Field(False, description="With api_key_env set: /docs and "
                              "/openapi.json open to all (false: they need the key too).")
    max_subjects: int = Field(10000, ge=0, description="Calibrated subjects a router "
                              "replica keeps (POST /v1/subjects/{id}/calibration).")
    incongruence_threshold: float = Field(0.2, ge=0, le=1, description="JS divergence "
                                          "(bits) from which expressed (speech, face) vs EEG is flagged.")
    batching: bool = Field(True, description="The router sends concurrent requests to an "
                           "encoder as one call, and the encoder runs them as one batch.")
    torch_threads: int = Field(1, ge=1, description="torch threads per replica.")
    device: str | None = Field(None, description="cpu / cuda; null: CUDA when present.")
    deployments: dict[str, DeploymentConfig] = Field(
        default_factory=lambda: {r: default_deployment(r) for r in SERVE_ROLES})
    stream: StreamConfig = Field(default_factory=StreamConfig)

    @field_validator("deployments")
    @classmethod
    def _roles(cls, v: dict[str, DeploymentConfig]) -> dict[str, DeploymentConfig]:
        bad = sorted(set(v) - set(SERVE_ROLES))
        if bad:
            raise ValueError(f"unknown deployment {bad[0]!r}; expected {list(SERVE_ROLES)}")
        return {r: v.get(r, default_deployment(r)) for r in SERVE_ROLES}


