"""The Ray Serve application: per-modality encoder deployments behind a FastAPI router.

::

    HTTP ──> FusionRouter (ingress, FastAPI) ──┬──> EEGEncoder     contract + encoder
             decode, check, route, fuse        ├──> SpeechEncoder  (own replicas,
             (batches calls and fusion)        └──> VideoEncoder    one call per batch)

The router decodes and checks the request (:mod:`emoray.serving.api`;
:meth:`ServedModel.route`: shapes, rates, channels, lengths, the segments and the subject's
standardisation), sends each present modality's raw input (compact arrays, uint8 or JPEG
frames) to its deployment **concurrently**, and fuses what comes back
(:mod:`emoray.predict.heads`: the encoders' output tokens for attention fusion, pooled
embeddings for JMML). Each modality's deployment applies the preprocessing contract to its
input (:meth:`ServedModel.prepare_modality`: filtering and resampling EEG, the log-mel and
statistics of speech, decoding and resizing frames) and runs its encoder, so the heaviest
modality scales on its own replicas. Each deployment has its own ``autoscaling_config``.
With batching on, the router sends concurrent requests' parts to an encoder as one call
(:class:`~emoray.serving.batching.CallCoalescer`: a Serve hop costs more CPU here than the
encoders' work, so it is paid per batch, not per request; ``@serve.batch`` would batch only
after every request had paid its own hop), the encoder runs them as one forward pass, and
the router runs their fusion heads as one pass (:meth:`ServedModel.combine_many`). Encoders
are stateless, so the router retries a call when the replica it went to died; an input the
contract refuses comes back as a refusal (:func:`~emoray.serving.model.refusal`) and is the
same 422 as in process.

:func:`build_app` makes the application from a :class:`~emoray.config.ServeConfig`;
:func:`build` is the same for ``serve run`` / ``serve deploy`` config files (``args`` are the
config's fields). :class:`LocalBackend` runs the same router logic in one process without
Ray (the benchmark's floor and plain-FastAPI baseline).
"""


import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import torch
from fastapi import Request, WebSocket
from ray import serve

from emoray.config import SERVE_ROLES, ServeConfig
from emoray.errors import ConfigError, EmorayError
from emoray.serving import api
from emoray.serving.batching import CallCoalescer, MicroBatcher
from emoray.serving.model import ServedModel, failure, raise_refusal, refusal
from emoray.serving.stream import STREAM_PATH, StreamSlots, run_stream
from emoray.storage import is_uri

ENCODER_DEPLOYMENTS = {"eeg": "EEGEncoder", "speech": "SpeechEncoder", "video": "VideoEncoder"}
ROUTER_DEPLOYMENT = "FusionRouter"


def _settings(value: ServeConfig | dict[str, Any]) -> ServeConfig:
    return value if isinstance(value, ServeConfig) else ServeConfig.model_validate(value)


class RouterCore:
    """What the router does per request, given a way to reach each modality's encoder.

    Parameters
    ----------
    settings : ServeConfig
        The serving settings (checkpoint, limits, auth, threshold).
    encode : callable
        ``async encode(modality, part) -> ndarray``: the encoder output rows of one routed
        modality part (:meth:`ServedModel.route`), contract applied where it runs.
    api_key_digest : str | None
        sha256 hex of the API key (None: no auth).
    """

    def __init__(self, settings: ServeConfig, encode: Callable[..., Awaitable[np.ndarray]],
                 api_key_digest: str | None, role: str = "router",
                 batching: bool | None = None):
        self.settings = settings
        self.api_key_digest = api_key_digest
        self.model = ServedModel(settings.checkpoint, role=role, device=settings.device,
                                 incongruence_threshold=settings.incongruence_threshold)
        self._encode = encode
        self.batching = settings.batching if batching is None else batching
        # batching: concurrent requests' fusion heads run as one pass, in a worker thread
        self._combiner = MicroBatcher(self.model.combine_many,
                                      settings.deployments["router"].max_batch_size,
                                      settings.deployments["router"].batch_wait_timeout_s
                                      ) if self.batching else None
        self._info = self.model.info()
        self.stream_slots = StreamSlots(settings.stream.max_streams)   # /v1/stream
        self.active = 0                       # predictions in progress (on the event loop)

    def info(self) -> dict[str, Any]:
        return dict(self._info)

    async def predict(self, inputs: dict[str, Any],
                      timings: api.Timings | None = None) -> dict[str, Any]:
        timings = timings or api.Timings()
        self.active += 1
        try:
            return await self._predict(inputs, timings)
        finally:
            self.active -= 1

    async def _predict(self, inputs: dict[str, Any], timings: api.Timings) -> dict[str, Any]:
        with timings.step("prepare"):
            routed = await asyncio.to_thread(self.model.route, inputs)
        mods = list(routed.parts)

        async def encode(m: str) -> np.ndarray:
            with timings.step(m):
                answer = await self._encode(m, routed.parts[m])
            raise_refusal(answer)
            return answer

        outs = await asyncio.gather(*(encode(m) for m in mods))
        encoded = {m: torch.from_numpy(np.array(o)) for m, o in zip(mods, outs)}   # own copy
        with timings.step("combine"):
            pred = (await self._combiner((encoded, routed)) if self._combiner else
                    self.model.combine(encoded, routed))
        raise_refusal(pred)                          # this request's fault in a batch
        return {**pred.to_dict(), "model_version": self.model.version}

    async def calibrate(self, subject: str, inputs: dict[str, Any],
                        reset: bool = False) -> dict[str, Any]:
        """Keep ``subject``'s calibration statistics (see :meth:`ServedModel.calibrate`)."""
        if subject not in self.model.calibrations \
                and len(self.model.calibrations) >= self.settings.max_subjects:
            from emoray.errors import DataError

            raise DataError("request", f"this router already holds {self.settings.max_subjects}"
                            f" calibrated subjects (serve.max_subjects)", kind="layout",
                            field="subject")
        return await asyncio.to_thread(self.model.calibrate, subject, inputs, reset)

    async def health(self, deep: bool) -> dict[str, Any]:
        return {"status": "ok", "model_version": self.model.version,
                "modalities": self.model.modalities}


def _features(model: ServedModel, modality: str,
              part: dict[str, Any]) -> dict[str, np.ndarray] | dict[str, Any]:
    """The contract applied to one routed part: its encoder's input arrays, or a
    :func:`refusal` naming the field the contract refused."""
    try:
        return {k: v.numpy() for k, v in model.prepare_modality(modality, part).items()}
    except EmorayError as err:
        return refusal(err)


def _encoder_rows(model: ServedModel, modality: str,
                  items: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """Encode several requests' rows in one forward pass and split the output back."""
    counts = [len(next(iter(it.values()))) for it in items]
    batch = {k: torch.from_numpy(np.concatenate([it[k] for it in items])) for k in items[0]}
    out = model.encode(modality, batch).numpy()
    return np.split(out, np.cumsum(counts)[:-1])


def _encode_parts(model: ServedModel, modality: str,
                  parts: list[dict[str, Any]]) -> list[np.ndarray | dict[str, Any]]:
    """Several routed parts: the contract on each, one encoder pass over those it accepts;
    per part its output rows, its :func:`refusal`, or its :func:`failure` (a bad part fails
    only its own request)."""
    out: list[Any] = []
    for p in parts:
        try:
            out.append(_features(model, modality, p))
        except Exception as err:       # a fault in one part's contract: that request's 500
            out.append(failure(err))
    ok = [i for i, f in enumerate(out) if "refused" not in f]
    if ok:
        for i, rows in zip(ok, _encoder_rows(model, modality, [out[i] for i in ok])):
            out[i] = rows
    return out


class ModalityEncoder:
    """One modality's encoder (a replica holds only that encoder's weights)."""

    def __init__(self, settings: dict[str, Any], modality: str):
        cfg = _settings(settings)
        torch.set_num_threads(cfg.torch_threads)
        self.modality = modality
        self.model = ServedModel(cfg.checkpoint, role=modality, device=cfg.device)
        import emoray.data.transforms  # noqa: F401  (the contract runs here: load it now)

    async def encode_many(self, parts: list[dict[str, Any]]) -> list[np.ndarray | dict]:
        """Several routed request parts (the router's batches; a lone request is a batch of
        one): one contract pass per part, one encoder pass for all, in a worker thread so
        the replica keeps answering; per part its rows, refusal or failure."""
        return await asyncio.to_thread(_encode_parts, self.model, self.modality, parts)

    def ping(self) -> str:
        return self.model.version


app = api.new_app()


@serve.ingress(app)
class FusionRouter:
    """The ingress: HTTP API, contract, concurrent encoder calls, fusion."""

    def __init__(self, settings: dict[str, Any], api_key_digest: str | None, **encoders):
        cfg = _settings(settings)
        torch.set_num_threads(cfg.torch_threads)
        self.encoders = encoders
        self.core = RouterCore(cfg, self._call_encoder, api_key_digest)
        self.settings, self.api_key_digest = cfg, api_key_digest
        self.stream_slots = self.core.stream_slots
        self.coalescers = {m: CallCoalescer(functools.partial(self._call_encoder_many, m),
                                            cfg.deployments[m].max_batch_size,
                                            cfg.deployments[m].max_inflight_batches,
                                            cfg.deployments[m].busy_wait_s, self._busy)
                           for m in encoders} if cfg.batching else {}

    def _busy(self) -> bool:
        """More requests in this replica than one batch holds."""
        return self.core.active > self.settings.deployments["router"].max_batch_size

    async def _call_encoder(self, modality: str, part: dict[str, Any]):
        if modality in self.coalescers:      # batching: one call per batch of requests
            return await self.coalescers[modality](part)
        return (await self._call_encoder_many(modality, [part]))[0]

    async def _call_encoder_many(self, modality: str, parts: list[dict[str, Any]]) -> list:
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        handle = self.encoders[modality]
        for attempt in range(3):        # stateless encoders: a call to a dead replica is retried
            try:
                return await handle.encode_many.remote(parts)
            except (ActorDiedError, ActorUnavailableError, RayActorError):
                if attempt == 2:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))

    def info(self) -> dict[str, Any]:
        return self.core.info()

    async def predict(self, inputs: dict[str, Any],
                      timings: api.Timings | None = None) -> dict[str, Any]:
        return await self.core.predict(inputs, timings)

    async def calibrate(self, subject: str, inputs: dict[str, Any],
                        reset: bool = False) -> dict[str, Any]:
        return await self.core.calibrate(subject, inputs, reset)

    async def health(self, deep: bool) -> dict[str, Any]:
        report = await self.core.health(deep)
        if deep:
            async def ping(m):
                try:
                    await asyncio.wait_for(self.encoders[m].ping.remote(), 10)
                    return "ok"
                except Exception as err:   # any failure of the probe is the answer
                    return f"unavailable: {type(err).__name__}"
            states = await asyncio.gather(*(ping(m) for m in self.encoders))
            report["encoders"] = dict(zip(self.encoders, states))
            if any(s != "ok" for s in states):
                report["status"] = "degraded"
        return report

    @app.post("/v1/predict", **api.PREDICT_DOC)
    async def http_predict(self, request: Request):
        return await api.handle_predict(self, request)

    @app.get("/v1/model")
    async def http_model(self, request: Request):
        return await api.handle_model(self, request)

    @app.get("/v1/health")
    async def http_health(self, request: Request):
        return await api.handle_health(self, request)

    @app.post("/v1/subjects/{subject}/calibration", **api.CALIBRATION_DOC)
    async def http_calibration(self, subject: str, request: Request):
        return await api.handle_calibration(self, request, subject)

    @app.websocket(STREAM_PATH)
    async def ws_stream(self, websocket: WebSocket):
        await run_stream(self, websocket)

    @app.get("/openapi.json", include_in_schema=False)
    async def http_openapi(self, request: Request):
        return await api.handle_docs(self, request, app, "openapi")

    @app.get("/docs", include_in_schema=False)
    async def http_docs(self, request: Request):
        return await api.handle_docs(self, request, app, "docs")


def _options(cfg: ServeConfig, role: str) -> dict[str, Any]:
    dep = cfg.deployments[role]
    opts: dict[str, Any] = {
        "max_ongoing_requests": dep.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": dep.num_cpus, "num_gpus": dep.num_gpus},
        # a replica being removed (downscale, redeploy) first finishes what it holds: as
        # long as the longest request may run, so none is cut off
        "graceful_shutdown_timeout_s": cfg.request_timeout_s + 5.0,
        "graceful_shutdown_wait_loop_s": 1.0}
    if dep.autoscaling is None:
        opts["num_replicas"] = dep.num_replicas
    else:
        opts["autoscaling_config"] = dep.autoscaling.model_dump()
    return opts


def build_app(settings: ServeConfig | dict[str, Any]):
    """The Serve application of a checkpoint: one encoder deployment per modality the model
    has, and the router. Checks the checkpoint and the auth setting before deploying."""
    cfg = _settings(settings)
    if not cfg.checkpoint:
        raise ConfigError("serve.checkpoint: not set; give the bundle, run or campaign to serve")
    probe = ServedModel(cfg.checkpoint, role="router", device="cpu")   # fails fast, here
    digest = api.api_key_digest(cfg.api_key_env)
    plain = cfg.model_dump(mode="json")
    if not is_uri(cfg.checkpoint):        # a run or campaign folder: replicas read the bundle
        plain["checkpoint"] = str(probe.bundle.resolve())
    encoders = {}
    for m in probe.modalities:
        dep = serve.deployment(ModalityEncoder, name=ENCODER_DEPLOYMENTS[m],
                               **_options(cfg, m))
        encoders[m] = dep.bind(plain, m)
    router = serve.deployment(FusionRouter, name=ROUTER_DEPLOYMENT, **_options(cfg, "router"))
    return router.bind(plain, digest, **encoders)


def build(args: dict[str, Any]):
    """Application builder for Serve config files (``import_path: emoray.serving.app:build``);
    ``args`` are :class:`ServeConfig` fields."""
    return build_app(ServeConfig.model_validate(args or {}))


class LocalBackend(RouterCore):
    """The router logic with every encoder in this process (no Ray): for the plain FastAPI
    server and the in-process floor of ``emoray bench serve``.

    With ``batching`` (default: the settings'), concurrent requests' encoder calls are
    batched per modality as the Serve encoders batch them
    (:class:`~emoray.serving.batching.MicroBatcher` with each deployment's
    ``max_batch_size`` and ``batch_wait_timeout_s``; the batch runs in a worker thread);
    without, each encoder runs inline (a few ms for the models served here).
    """

    def __init__(self, settings: ServeConfig | dict[str, Any], batching: bool | None = None):
        cfg = _settings(settings)
        super().__init__(cfg, self._local_encode, api.api_key_digest(cfg.api_key_env),
                         role="all", batching=batching)
        self.batchers = {m: MicroBatcher(functools.partial(_encoder_rows, self.model, m),
                                         cfg.deployments[m].max_batch_size,
                                         cfg.deployments[m].batch_wait_timeout_s)
                         for m in self.model.modalities} if self.batching else {}

    async def _local_encode(self, modality: str, part: dict[str, Any]):
        features = await asyncio.to_thread(_features, self.model, modality, part)
        if "refused" in features:
            return features
        if self.batching:
            return await self.batchers[modality](features)
        return _encoder_rows(self.model, modality, [features])[0]


def direct_ingress_urls(app_name: str, timeout_s: float = 15.0) -> list[str]:
    """The HTTP addresses at which the router replicas of ``app_name`` answer themselves
    (Ray Serve's direct ingress, on in Ray's high-throughput mode,
    ``RAY_SERVE_THROUGHPUT_OPTIMIZED``), beside the proxy; empty without it. Asks the Serve
    controller for the application's target groups (Ray's own view, any node), waiting up
    to ``timeout_s`` for the replicas' ports. The mode is read from this process's
    environment (which an embedded Ray inherits; a cluster's own may differ), not from
    Ray's constants: those were fixed when ``ray.serve`` was imported, which can be before
    :func:`emoray.runtime.embedded_defaults` set the variables."""
    import os

    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    def on(name: str) -> bool | None:
        value = os.environ.get(name)
        return None if value is None else value.strip().lower() in ("1", "true")

    direct = on("RAY_SERVE_ENABLE_DIRECT_INGRESS")
    if not (direct or (direct is None and on("RAY_SERVE_THROUGHPUT_OPTIMIZED"))):
        return []
    deadline = time.monotonic() + timeout_s
    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    while True:
        groups = ray.get(controller.get_target_groups.remote(app_name))
        urls = sorted(f"http://{t.ip}:{t.port}" for g in groups
                      if g.app_name == app_name and g.ingress_deployment_name
                      and str(getattr(g.protocol, "value", g.protocol)).upper() == "HTTP"
                      for t in g.targets)
        if urls or time.monotonic() > deadline:
            return urls
        time.sleep(0.5)


def run(settings: ServeConfig | dict[str, Any], blocking: bool = False,
        echo: Callable[[str], None] = print) -> str:
    """Deploy on the connected Ray (``serve.start`` on ``host:port``); returns the base URL."""
    cfg = _settings(settings)
    application = build_app(cfg)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    t0 = time.monotonic()
    serve.run(application, name=cfg.app_name, route_prefix=cfg.route_prefix,
              blocking=False)
    url = f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"
    echo(f"[serve] {cfg.app_name} up in {time.monotonic() - t0:.1f} s at {url} "
         f"(docs {url}/docs)")
    if blocking:
        direct = direct_ingress_urls(cfg.app_name)
        if direct:
            echo(f"[serve] the router also answers directly, without the proxy's hop (Ray's "
                 f"direct ingress: less CPU and latency per request): {', '.join(direct)}")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            echo("[serve] shutting down")
            serve.shutdown()
    return url


__all__ = ["ENCODER_DEPLOYMENTS", "ROUTER_DEPLOYMENT", "SERVE_ROLES", "FusionRouter",
           "LocalBackend", "ModalityEncoder", "RouterCore", "build", "build_app", "run"]
