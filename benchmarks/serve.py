"""Online inference: the Ray Serve router vs a plain FastAPI server vs the in-process floor.

All three answer the same request (2 s of EEG noise on the checkpoint's channels, 2 s of
speech noise, 10 RGB frames of 48 x 48; ``--encoding binary``, the Python client's
default: a multipart body of one ``.npy`` part per modality, or ``json``) with the same
model, on the same machine, in one run, at client concurrency 1, 8 and 32 (a thread pool
of ``requests`` sessions, a fixed request count per cell after a short warm-up), each with
batching on and off. The three systems are up at the same time and measured side by side
(:func:`drive_rounds`: each cell's requests cut into rounds, the systems taking turns), so
a machine whose speed drifts over the minutes of a run slows all three alike:

``router``
    :func:`emoray.serving.app.build_app` on Ray Serve over HTTP: the FusionRouter ingress
    and one encoder deployment per modality, every replica reserving 0.1 CPU. Every
    deployment has a fixed number of replicas for all concurrency levels (default: one
    router, two of each encoder): autoscaling would add replicas only after its look-back
    window, so the c=32 cell would mostly measure the upscale delay. Batching: the router
    sends concurrent requests to an encoder as one call and runs their fusion heads as one
    pass (:class:`~emoray.serving.batching.CallCoalescer`, ``MicroBatcher``). One router
    replica holds every concurrent request, so its batches are the largest; a second one
    halves them (``--router-replicas 2``).
``fastapi``
    :func:`emoray.serving.api.make_app` over :class:`~emoray.serving.app.LocalBackend`, one
    uvicorn process (a subprocess, so the clients do not share its GIL), torch's default
    threads, encoders in worker threads; batching is
    :class:`~emoray.serving.batching.MicroBatcher` with the same batch size and wait.
``floor``
    :func:`emoray.serving.api.decode_request` and ``LocalBackend.predict`` in this process
    on one event loop that the client threads submit to: the server's own read, decode,
    contract and model, without HTTP.

Measured per system and concurrency: latency percentiles, throughput (answered requests
over the system's own wall time) and CPU milliseconds per request: the user + system CPU
time of the system's processes during its own turns over its answered requests
(:mod:`benchmarks._serve_cpu`: the floor is this process; fastapi the uvicorn process; the
router every Serve replica, the proxy and the controller, and apart from them, as ``ray
core``, Ray's other processes: raylet, gcs_server, the dashboard and agents).

Targets (like with like: the batching rows against the batching baselines): router p50 at
c=1 <= floor p50 + 15 ms; router CPU per request at c=32 <= 25 ms; and the headline
``serve: ratio R (target 0.9)``, R = router throughput / floor throughput at c=32 with
batching on (1.0: Serve costs nothing; higher is better). Router / fastapi throughput is
shown alongside.

Live streams (batching on, after the request cells): N concurrent real-time streams of
30-channel 500 Hz EEG and 16 kHz audio against the router's and fastapi's ``/v1/stream``
(:mod:`benchmarks._serve_stream`): window latency p50/p99, seconds of signal answered per
wall second, and the most streams whose p99 stays under the hop (target 8).

Where the time goes: the HTTP servers answer a ``Server-Timing`` header (read, decode,
prepare, one entry per encoder call, combine, total), the floor times the same steps; the
medians at each concurrency go into the JSON and the c=1 ones into a second table. Serve's
own cost on the machine is measured without model work: ``GET /v1/health`` (client ->
proxy -> router -> client) and ``?deep=true`` (the same plus a concurrent ping of every
encoder deployment).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):      # run as a script (python benchmarks/NAME.py): the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # makes `benchmarks` importable

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from typing import Any, Callable

from benchmarks._runner import runner_parser, start_ray
from benchmarks._serve_cpu import ray_processes, system_meters, titles
from benchmarks._serve_http import _free_port, _stop_loop, _wait_up, noop_latency  # noqa: F401
from benchmarks._serve_stream import measure_streams
from emoray.config import RayConfig
from emoray.errors import ConfigError

from benchmarks._serve_report import (APP_NAME, COLUMNS, CONCURRENCY,  # noqa: F401
                                      CPU_TARGET_MS, LATENCY_SLACK_MS, TARGET, _drive_raw,
                                      _json_safe, baseline, by_process_ms, cell_stats,
                                      cpu_line, drive_rounds, headline, noop_lines,
                                      parse_server_timing, percentile, report, rows,
                                      step_medians, step_rows, summary_lines, targets)

#: ``--encoding`` values: the Python client's default first.
ENCODINGS = ("binary", "json")


def http_sender(url: str, body: bytes, content_type: str,
                steps: list[dict[str, float]] | None = None) -> Callable[[], bool]:
    """POST ``body`` (of ``content_type``) to ``{url}/v1/predict`` on a per-thread
    ``requests.Session``; the ``Server-Timing`` of every good answer is appended to
    ``steps``."""
    import requests

    local = threading.local()
    endpoint = url.rstrip("/") + "/v1/predict"
    headers = {"content-type": content_type}

    def send() -> bool:
        if not hasattr(local, "s"):
            local.s = requests.Session()
        try:
            r = local.s.post(endpoint, data=body, headers=headers, timeout=120)
        except requests.RequestException:
            return False
        ok = r.status_code == 200 and "label" in r.json()
        if ok and steps is not None:
            steps.append(parse_server_timing(r.headers.get("server-timing", "")))
        return ok

    return send


def local_request(body: bytes, content_type: str) -> Any:
    """A Starlette ``POST /v1/predict`` request of ``body`` that no socket carried: what
    the server's :func:`~emoray.serving.api.decode_request` reads."""
    from starlette.requests import Request

    scope = {"type": "http", "method": "POST", "path": "/v1/predict", "query_string": b"",
             "headers": [(b"content-type", content_type.encode("latin-1")),
                         (b"content-length", str(len(body)).encode())]}
    sent = []

    async def receive() -> dict[str, Any]:
        if sent:
            return {"type": "http.disconnect"}
        sent.append(True)
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


def floor_sender(backend: Any, body: bytes, content_type: str,
                 loop: asyncio.AbstractEventLoop,
                 steps: list[dict[str, float]] | None = None) -> Callable[[], bool]:
    """The server's ``decode_request`` of ``body`` (JSON or multipart by ``content_type``,
    the same decoders and limits), then ``backend.predict``, on ``loop``: one event loop
    for every client thread, as in a server, so batching can form."""
    from emoray.serving.api import Timings, decode_request

    async def handle(timings: Timings) -> dict[str, Any]:
        inputs = await decode_request(backend, local_request(body, content_type), timings)
        return await backend.predict(inputs, timings)

    def send() -> bool:
        timings = Timings()
        with timings.step("total"):
            answer = asyncio.run_coroutine_threadsafe(handle(timings), loop).result()
        if steps is not None:
            steps.append(timings.ms)
        return "label" in answer

    return send


def request_body(checkpoint: str, encoding: str = "binary", seed: int = 0
                 ) -> tuple[bytes, str]:
    """The request, 2 s of noise per modality matching the bundle's contract, encoded by
    :func:`encode_request`: ``(body, content type)``."""
    import numpy as np

    from emoray.predict import EEGInput, SpeechInput, VideoInput
    from emoray.serving.model import ServedModel

    info = ServedModel(checkpoint, role="router", device="cpu").info()
    rng = np.random.default_rng(seed)
    kw: dict[str, Any] = {}
    if "eeg" in info["modalities"]:
        ch, sf = info["eeg"]["channels"], float(info["eeg"]["sfreq"])
        kw["eeg"] = EEGInput(rng.normal(0, 20e-6, (len(ch), int(2 * sf))), sf, ch)  # (C, T)
    if "speech" in info["modalities"]:
        sr = int(info["speech"]["sample_rate"])
        kw["speech"] = SpeechInput(rng.uniform(-0.1, 0.1, 2 * sr).astype("float32"), sr)
    if "video" in info["modalities"]:
        kw["video"] = VideoInput(rng.integers(0, 256, (10, 48, 48, 3), dtype=np.uint8))
    return encode_request(kw, encoding)


def encode_request(inputs: dict[str, Any], encoding: str = "binary") -> tuple[bytes, str]:
    """``{"eeg": EEGInput, ...}`` as the Python client sends it: ``binary``, a multipart
    body of ``.npy`` parts (:func:`~emoray.serving.client.binary_request`), or ``json``
    (:func:`~emoray.serving.client.json_request`); ``(body, content type)``."""
    import requests

    from emoray.serving.client import binary_request, json_request

    if encoding not in ENCODINGS:
        raise ConfigError(f"bench serve: encoding {encoding!r}; expected one of "
                          f"{list(ENCODINGS)}")
    if encoding == "json":
        return json.dumps(json_request(**inputs)).encode(), "application/json"
    prepared = requests.Request("POST", "http://localhost/", files=binary_request(**inputs)
                                ).prepare()                  # requests' multipart encoder
    return prepared.body, prepared.headers["Content-Type"]


def bare_server(checkpoint: str, port: int, batching: bool = False,
                replicas: int = 1, router_replicas: int = 1) -> None:
    """The plain FastAPI server (run in a subprocess by :func:`run_benchmark`), with the
    batch size and wait of the Serve run."""
    import uvicorn

    from emoray.serving.api import make_app
    from emoray.serving.app import LocalBackend

    cfg = _serve_config(checkpoint, batching, replicas, router_replicas)
    uvicorn.run(make_app(LocalBackend(cfg)), host="127.0.0.1", port=port,
                log_level="warning")


def tiny_checkpoint(work: Path, features: Path | None = None) -> str:
    """A 2-epoch run of the quickstart's fusion recipe (its encoders, per-subject
    statistics and auxiliary heads: the model the quickstart serves) in ``work`` on
    ``features`` (default: synthetic features made in ``work``); the bundle folder it
    wrote."""
    from benchmarks.train import make_features
    from emoray.cli.quickstart import QUICKSTART_DEFAULTS
    from emoray.config import FusionStageConfig
    from emoray.train.stages.fusion import train_fusion

    feats = features if features is not None else make_features(work, True, "serve")
    recipe = {**QUICKSTART_DEFAULTS["train"]["stages"]["fusion"],
              "epochs": 2, "batch_size": 8, "num_workers": 1, "cpus_per_worker": 0.5,
              "controller_failure_limit": 0, "max_failures": 0}
    cfg = FusionStageConfig(**recipe)
    out = train_fusion(feats, work / "run", cfg)
    return str(out["checkpoint"])          # the bundle: the run folder holds no plan state


# -- the run --------------------------------------------------------------------------------

def _serve_config(checkpoint: str, batching: bool, replicas: int, router_replicas: int = 1):
    from emoray.config import DeploymentConfig, ServeConfig, SERVE_ROLES

    def dep(n: int) -> DeploymentConfig:
        return DeploymentConfig(autoscaling=None, num_replicas=n, num_cpus=0.1,
                                max_ongoing_requests=64)

    return ServeConfig(checkpoint=checkpoint, batching=batching, device="cpu",
                       deployments={r: dep(router_replicas if r == "router" else replicas)
                                    for r in SERVE_ROLES})


def run_benchmark(quick: bool = False, out_dir: str | Path = "benchmarks/results",
                  ray_cfg: RayConfig | None = None, checkpoint: str | Path | None = None,
                  requests_per_cell: dict[int, int] | None = None, replicas: int = 2,
                  router_replicas: int = 1, encoding: str = "binary", stream_counts: tuple[int, ...] | None = None,
                  **_: Any) -> dict[str, Any]:
    """Measure every system at every concurrency, print the table, write ``serve.json``.

    Parameters
    ----------
    quick : bool
        Fewer requests per cell (10 / 40 / 40 at c = 1 / 8 / 32; else 50 / 200 / 200).
    out_dir : str | Path
        Folder of the JSON result.
    ray_cfg : RayConfig | None
        How to start or join Ray (default: an embedded local Ray of 2 CPUs).
    checkpoint : str | Path | None
        The model to serve; None trains a tiny fusion model on synthetic features.
    requests_per_cell : dict[int, int] | None
        Concurrency -> request count, overriding the defaults.
    replicas : int
        Replicas of every encoder deployment (each reserves 0.1 CPU).
    router_replicas : int
        Replicas of the router deployment.
    encoding : str
        The request body, one of :data:`ENCODINGS` (:func:`request_body`).
    stream_counts : tuple[int, ...] | None
        Concurrent live streams to measure against the router and fastapi with batching
        on (:mod:`benchmarks._serve_stream`); None: (1, 8) quick, else (1, 4, 8, 12);
        empty: none.

    Raises
    ------
    ConfigError
        A bad checkpoint, a count below 1, an unknown encoding.
    """
    import torch
    from ray import serve

    from emoray.serving.app import LocalBackend, build_app, direct_ingress_urls
    from emoray.serving.model import resolve_checkpoint

    counts = requests_per_cell or ({1: 10, 8: 40, 32: 40} if quick
                                   else {1: 50, 8: 200, 32: 200})
    if min(replicas, router_replicas) < 1 or any(v < 1 for v in counts.values()):
        raise ConfigError(f"bench serve: replicas {replicas}, router replicas "
                          f"{router_replicas} and request counts {counts} "
                          "must be >= 1")
    if encoding not in ENCODINGS:
        raise ConfigError(f"bench serve: encoding {encoding!r}; expected one of "
                          f"{list(ENCODINGS)}")
    warm = 3 if quick else 10
    work = Path(tempfile.mkdtemp(prefix="emoray-bench-serve-"))
    load = {"before": os.getloadavg()}
    start_ray(ray_cfg or RayConfig(num_cpus=2), out_dir, "serve")
    cells: dict[str, dict[int, dict[str, Any]]] = {}
    noop: dict[str, float] = {}
    counted: dict[str, dict[str, int]] = {}
    streams: dict[str, list[dict[str, Any]]] = {}
    stream_counts = tuple(stream_counts if stream_counts is not None else
                          ((1, 8) if quick else (1, 4, 8, 12)))
    stream_seconds = 9.0 if quick else 12.0
    proc = None
    loop = asyncio.new_event_loop()          # the floor's "server" loop
    loop_thread = threading.Thread(target=loop.run_forever, name="bench-floor", daemon=True)
    loop_thread.start()
    try:
        ckpt = (str(resolve_checkpoint(checkpoint)) if checkpoint is not None
                else str(resolve_checkpoint(tiny_checkpoint(work))))
        body, ctype = request_body(ckpt, encoding)
        print(f"bench serve: {ckpt}, {encoding} request {len(body) / 1e3:.0f} kB, counts "
              f"{counts}", flush=True)

        sport = _free_port()
        proxy_url = f"http://127.0.0.1:{sport}"
        serve.start(http_options={"host": "127.0.0.1", "port": sport})
        for batching in (True, False):
            suffix = "+batch" if batching else ""
            t0 = time.monotonic()
            config = _serve_config(ckpt, batching, replicas, router_replicas)
            backend = LocalBackend(config)
            port = _free_port()
            proc = subprocess.Popen(cwd=str(Path(__file__).resolve().parents[1]), args=[sys.executable, "-c", "from benchmarks.serve import "
                                     f"bare_server; bare_server({ckpt!r}, {port}, "
                                     f"{batching}, {replicas}, {router_replicas})"])
            serve.run(build_app(config), name=APP_NAME,
                      route_prefix="/", blocking=False,
                      logging_config={"enable_access_log": False, "log_level": "WARNING"})
            fastapi_url = f"http://127.0.0.1:{port}"
            _wait_up(fastapi_url, 120, lambda p=proc: p.poll() is None)
            _wait_up(proxy_url, 120)
            # requests go to the router replica's own port where Serve runs with direct
            # ingress (emoray's default: runtime.EMBEDDED_ENV), else through the proxy
            direct = direct_ingress_urls(APP_NAME) if router_replicas == 1 else []
            router_url = direct[0] if direct else proxy_url
            _wait_up(router_url, 120)
            ingress = "direct ingress" if direct else "proxy"
            print(f"bench serve: batching {'on' if batching else 'off'}: servers up in "
                  f"{time.monotonic() - t0:.1f} s; router requests through the {ingress} "
                  f"({router_url})", flush=True)
            if batching:
                noop = noop_latency(router_url, 10 if quick else 30)
                print(f"  serve without model work: GET /v1/health {noop['health_ms']:.1f} "
                      f"ms, deep {noop['deep_health_ms']:.1f} ms", flush=True)
                counted = {k: titles(v) for k, v in ray_processes(APP_NAME,
                                                                  [proc.pid]).items()}
            router_cpu: dict[str, float] = {}        # short title -> CPU s, per cell
            meters = system_meters(APP_NAME, proc.pid, router_cpu)
            makers = {"floor": lambda st, b=backend: floor_sender(b, body, ctype, loop, st),
                      "fastapi": lambda st, u=fastapi_url: http_sender(u, body, ctype, st),
                      "router": lambda st: http_sender(router_url, body, ctype, st)}
            for c, n in counts.items():
                steps = {name: [] for name in makers}
                senders = {name: make(steps[name]) for name, make in makers.items()}
                for name, send in senders.items():
                    for _ in range(warm):
                        send()
                    steps[name].clear()
                router_cpu.clear()
                for name, s in drive_rounds(senders, n, c, meters=meters).items():
                    s["steps"] = step_medians(steps[name])
                    if name == "router":
                        s["cpu_by_process_ms"] = by_process_ms(router_cpu, s["n"])
                    cells.setdefault(name + suffix, {})[c] = s
                    print(f"  {name + suffix:<14} c={c:<3} p50 {s['p50']:7.1f} ms  p99 "
                          f"{s['p99']:7.1f} ms  {s['rps']:6.1f} req/s  cpu {s['cpu_ms']:5.1f} "
                          f"ms/req  ({s['errors']} errors)", flush=True)
            if batching and stream_counts:
                for name, url in (("router", proxy_url), ("fastapi", fastapi_url)):
                    print(f"bench serve: {name}: live streams {stream_counts}", flush=True)
                    streams[name] = measure_streams(url, backend.info(), stream_counts,
                                                    stream_seconds)
            proc.terminate()
            proc.wait(30)
            proc = None
            serve.delete(APP_NAME)
        dep = _serve_config(ckpt, True, replicas, router_replicas).deployments["eeg"]
        env = {"cpus": os.cpu_count(), "torch_threads_driver": torch.get_num_threads(),
               "torch_threads_replica": 1, "replicas": replicas,
               "router_replicas": router_replicas, "replica_num_cpus": 0.1,
               "ray_cpus": ray_cfg.num_cpus if ray_cfg else 2,
               "max_batch_size": dep.max_batch_size,
               "batch_wait_timeout_s": dep.batch_wait_timeout_s,
               "router_ingress": ingress, "streams_through": "proxy",
               "serve_throughput_optimized": os.environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED")}
    finally:
        if proc is not None:
            proc.kill()
        try:
            serve.shutdown()
        except Exception as err:     # teardown must not hide the run's own error
            print(f"bench serve: serve.shutdown failed: {err}")
        _stop_loop(loop, loop_thread)
        shutil.rmtree(work, ignore_errors=True)
    load["after"] = os.getloadavg()
    info = dict(quick=quick, checkpoint=ckpt, encoding=encoding, content_type=ctype,
                request_bytes=len(body), counts=counts, warmup=warm, environment=env,
                loadavg=load, serve_without_model=noop, cpu_processes=counted,
                streams=streams, stream_seconds=stream_seconds)
    return report(cells, out_dir, info)


def main(argv: list[str] | None = None) -> None:
    """The command line of ``python benchmarks/serve.py``."""
    parser = runner_parser(__doc__)
    parser.add_argument("--checkpoint", help="serve this checkpoint instead of training a "
                        "tiny model")
    parser.add_argument("--replicas", type=int, default=2, help="replicas of every encoder "
                        "deployment (default 2)")
    parser.add_argument("--router-replicas", type=int, default=1, help="replicas of the "
                        "router deployment (default 1: one replica holds every concurrent "
                        "request, so its batches to the encoders are the largest)")
    parser.add_argument("--encoding", choices=ENCODINGS, default=ENCODINGS[0],
                        help="request body: binary (multipart .npy parts, the Python "
                        "client's default) or json")
    parser.add_argument("--streams", type=lambda t: tuple(int(x) for x in t.split(",") if x),
                        help="concurrent live streams to measure, e.g. 1,4,8,12 (default "
                        "1,8 with --quick, else 1,4,8,12; '' for none)")
    args = parser.parse_args(argv)
    run_benchmark(quick=args.quick, out_dir=args.out, checkpoint=args.checkpoint,
                  replicas=args.replicas, router_replicas=args.router_replicas,
                  encoding=args.encoding, stream_counts=args.streams)


if __name__ == "__main__":
    main()
