"""Online inference: the Ray Serve router vs a plain FastAPI server vs the in-process floor.

All three answer the same JSON request (2 s of EEG noise on the checkpoint's channels, 2 s
of speech noise, 10 RGB frames of 48 x 48) with the same model, on the same machine, in one
run, at client concurrency 1, 8 and 32 (a thread pool of ``requests`` sessions, a fixed
request count per cell after a short warm-up), each with batching on and off. The three
systems are up at the same time and measured side by side (:func:`drive_rounds`: each
cell's requests cut into rounds, the systems taking turns), so a machine whose speed
drifts over the minutes of a run slows all three alike:

``router``
    :func:`emoray.serving.app.build_app` on Ray Serve over HTTP: the FusionRouter ingress
    and one encoder deployment per modality, every replica reserving 0.1 CPU. Every
    deployment has a fixed number of replicas (default 2) for all concurrency levels:
    autoscaling would add replicas only after its look-back window, so the c=32 cell would
    mostly measure the upscale delay. Batching is ``@serve.batch`` in the encoders.
``fastapi``
    :func:`emoray.serving.api.make_app` over :class:`~emoray.serving.app.LocalBackend`, one
    uvicorn process (a subprocess, so the clients do not share its GIL), torch's default
    threads, encoders in worker threads; batching is
    :class:`~emoray.serving.batching.MicroBatcher` with the same batch size and wait.
``floor``
    ``LocalBackend.predict(decode_json(body))`` in this process, on one event loop that the
    client threads submit to: decode, contract and model without HTTP.

Targets (like with like: the batching rows against the batching baselines): router p50 at
c=1 <= 1.15 x floor p50 + 5 ms, and router throughput at c=32 >= 2 x fastapi throughput at
c=32 (the headline ratio, batching on).

Where the time goes: the HTTP servers answer a ``Server-Timing`` header (read, decode,
prepare, one entry per encoder call, combine, total); the medians at each concurrency go
into the JSON and the c=1 ones into a second table. Serve's own cost on the machine is
measured without model work: ``GET /v1/health`` (client -> proxy -> router -> client) and
``?deep=true`` (the same plus a concurrent ping of every encoder deployment).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):      # run as a script (python benchmarks/NAME.py): the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # makes `benchmarks` importable

import asyncio
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from benchmarks._runner import runner_parser, table, write_result
from emoray.config import RayConfig
from emoray.errors import ConfigError

TARGET = 2.0                 # router / fastapi throughput at the highest concurrency
LATENCY_FACTOR, LATENCY_SLACK_MS = 1.15, 5.0
CONCURRENCY = (1, 8, 32)
APP_NAME = "bench"


# -- pure arithmetic (no Ray) ---------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks
    (NumPy's default); NaN for no values."""
    if not 0 <= q <= 100:
        raise ConfigError(f"percentile q: expected 0..100, got {q}")
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def cell_stats(latencies_s: list[float], wall_s: float, errors: int = 0) -> dict[str, Any]:
    """p50/p95/p99/mean latency (ms) and throughput (answered requests per wall second)."""
    ms = [x * 1000 for x in latencies_s]
    return {"n": len(ms), "errors": errors, "wall_s": wall_s,
            "p50": percentile(ms, 50), "p95": percentile(ms, 95), "p99": percentile(ms, 99),
            "mean": sum(ms) / len(ms) if ms else math.nan,
            "rps": len(ms) / wall_s if wall_s > 0 else math.nan}


def baseline(cells: dict[str, Any], name: str, system: str) -> str:
    """The ``name`` baseline (floor, fastapi) with the same batching as ``system``:
    ``name+batch`` for a ``+batch`` system when measured, else ``name``."""
    batched = f"{name}+batch"
    return batched if system.endswith("+batch") and batched in cells else name


def targets(cells: dict[str, dict[int, dict[str, Any]]], low: int, high: int,
            router: str = "router") -> dict[str, Any]:
    """Both targets from the cells (``system -> concurrency -> cell_stats``).

    ``latency``: ``router`` p50 at ``low`` vs ``1.15 x floor p50 + 5 ms``; ``throughput``:
    ``router`` req/s at ``high`` over ``fastapi``'s (pass at >= :data:`TARGET`); floor and
    fastapi with the router's batching (:func:`baseline`).
    """
    floor, fastapi = baseline(cells, "floor", router), baseline(cells, "fastapi", router)
    r_p50, f_p50 = cells[router][low]["p50"], cells[floor][low]["p50"]
    bound = LATENCY_FACTOR * f_p50 + LATENCY_SLACK_MS
    r_rps, b_rps = cells[router][high]["rps"], cells[fastapi][high]["rps"]
    ratio = r_rps / b_rps if b_rps > 0 else math.nan
    return {"latency": {"router_p50_ms": r_p50, "floor_p50_ms": f_p50, "bound_ms": bound,
                        "overhead_ms": r_p50 - f_p50, "pass": bool(r_p50 <= bound)},
            "throughput": {"router_rps": r_rps, "fastapi_rps": b_rps, "ratio": ratio,
                           "target": TARGET, "pass": bool(ratio >= TARGET)},
            "concurrency": {"latency": low, "throughput": high}, "router": router,
            "baselines": {"floor": floor, "fastapi": fastapi}}


def rows(cells: dict[str, dict[int, dict[str, Any]]]) -> list[dict[str, str]]:
    """Table rows: one per system and concurrency, with req/s relative to fastapi's (with
    the same batching)."""
    out = []
    for system, by_c in cells.items():
        fastapi = baseline(cells, "fastapi", system)
        for c, s in by_c.items():
            base = cells.get(fastapi, {}).get(c, {}).get("rps", math.nan)
            out.append({"system": system, "c": str(c), "n": str(s["n"]),
                        "err": str(s["errors"]), "p50 ms": f"{s['p50']:.1f}",
                        "p95 ms": f"{s['p95']:.1f}", "p99 ms": f"{s['p99']:.1f}",
                        "req/s": f"{s['rps']:.1f}",
                        "vs fastapi": f"{s['rps'] / base:.2f}x" if base > 0 else "-"})
    return out


COLUMNS = ["system", "c", "n", "err", "p50 ms", "p95 ms", "p99 ms", "req/s", "vs fastapi"]


def summary_lines(t: dict[str, Any]) -> list[str]:
    """The two target lines of :func:`targets`' result, each ending PASS or FAIL."""
    lat, thr = t["latency"], t["throughput"]
    base = t.get("baselines", {"floor": "floor", "fastapi": "fastapi"})
    return [f"latency @c{t['concurrency']['latency']}: {t['router']} p50 "
            f"{lat['router_p50_ms']:.1f} ms vs bound {lat['bound_ms']:.1f} ms "
            f"(1.15 x {base['floor']} {lat['floor_p50_ms']:.1f} + 5) -> "
            f"{'PASS' if lat['pass'] else 'FAIL'}",
            f"throughput @c{t['concurrency']['throughput']}: {t['router']} "
            f"{thr['router_rps']:.1f} req/s / {base['fastapi']} {thr['fastapi_rps']:.1f} "
            "req/s = "
            f"{thr['ratio']:.2f}x (target >= {TARGET:g}x) -> "
            f"{'PASS' if thr['pass'] else 'FAIL'}"]


# -- load generation ------------------------------------------------------------------------

def _drive_raw(send: Callable[[], bool], n: int, concurrency: int
               ) -> tuple[list[float], int, float]:
    """Send ``n`` requests from ``concurrency`` threads (each loops until the count is
    spent); ``send()`` returns True for a good answer: (latencies of good answers in s,
    errors, wall s)."""
    lock, left, lat, errors = threading.Lock(), [n], [], []

    def worker():
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            t0 = time.perf_counter()
            ok = send()
            dt = time.perf_counter() - t0
            with lock:
                (lat if ok else errors).append(dt)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    return lat, len(errors), time.perf_counter() - t0


def drive_rounds(senders: dict[str, Callable[[], bool]], n: int, concurrency: int,
                 rounds: int = 5) -> dict[str, dict[str, Any]]:
    """Every system's cell at one concurrency, measured side by side: ``n`` requests per
    system cut into rounds (at most ``rounds``, each of at least ``concurrency`` requests),
    the systems taking turns within each round in a rotating order, so a machine whose
    speed drifts over minutes slows every system alike. Throughput is the system's
    answered requests over its own summed wall time."""
    k = max(1, min(rounds, n // concurrency))
    sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
    names = list(senders)
    got = {name: ([], 0, 0.0) for name in names}
    for r, size in enumerate(sizes):
        for name in names[r % len(names):] + names[:r % len(names)]:
            lat, errors, wall = _drive_raw(senders[name], size, concurrency)
            a, e, w = got[name]
            got[name] = (a + lat, e + errors, w + wall)
    return {name: cell_stats(lat, wall, errors) for name, (lat, errors, wall) in got.items()}


def parse_server_timing(header: str) -> dict[str, float]:
    """``read;dur=0.4, decode;dur=21.3`` -> ``{"read": 0.4, "decode": 21.3}`` (entries
    without a duration are skipped)."""
    out = {}
    for entry in header.split(","):
        name, _, params = entry.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if name and key == "dur":
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
    return out


def step_medians(steps: list[dict[str, float]]) -> dict[str, float]:
    """The median of every step over the requests that timed it (first-seen order)."""
    names = list(dict.fromkeys(k for one in steps for k in one))
    return {k: percentile([one[k] for one in steps if k in one], 50) for k in names}


def http_sender(url: str, body: bytes, steps: list[dict[str, float]] | None = None
                ) -> Callable[[], bool]:
    """POST ``body`` to ``{url}/v1/predict`` on a per-thread ``requests.Session``; the
    ``Server-Timing`` of every good answer is appended to ``steps``."""
    import requests

    local = threading.local()
    endpoint = url.rstrip("/") + "/v1/predict"
    headers = {"content-type": "application/json"}

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


def floor_sender(backend: Any, body: bytes, loop: asyncio.AbstractEventLoop,
                 steps: list[dict[str, float]] | None = None) -> Callable[[], bool]:
    """Decode ``body`` in the calling thread, then ``backend.predict`` on ``loop`` (one
    event loop for every client thread, as in a server, so batching can form)."""
    from emoray.serving.api import Timings
    from emoray.serving.decode import decode_json

    def send() -> bool:
        timings = Timings()
        with timings.step("total"):
            with timings.step("decode"):
                inputs = decode_json(body)
            answer = asyncio.run_coroutine_threadsafe(backend.predict(inputs, timings),
                                                      loop).result()
        if steps is not None:
            steps.append(timings.ms)
        return "label" in answer

    return send


def noop_latency(url: str, n: int) -> dict[str, float]:
    """Serve's own cost without model work, p50 over ``n`` requests each: ``health`` (client
    -> proxy -> router -> client) and ``deep_health`` (plus one concurrent ping of every
    encoder deployment from the router)."""
    import requests

    out = {}
    with requests.Session() as session:
        for key, path in (("health_ms", "/v1/health"), ("deep_health_ms",
                                                         "/v1/health?deep=true")):
            lat = []
            for i in range(n + 3):                     # 3 warm-up requests
                t0 = time.perf_counter()
                session.get(url.rstrip("/") + path, timeout=60).raise_for_status()
                if i >= 3:
                    lat.append((time.perf_counter() - t0) * 1000)
            out[key] = percentile(lat, 50)
    out["encoder_fanout_ms"] = out["deep_health_ms"] - out["health_ms"]
    return out


def request_body(checkpoint: str, seed: int = 0) -> bytes:
    """The JSON request: 2 s of noise per modality, matching the bundle's contract."""
    import numpy as np

    from emoray.predict import EEGInput, SpeechInput, VideoInput
    from emoray.serving.client import json_request
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
    return json.dumps(json_request(**kw)).encode()


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    """Cancel what still runs on ``loop`` (the batchers' workers), stop and close it."""
    async def cancel_rest():
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    asyncio.run_coroutine_threadsafe(cancel_rest(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)
    loop.close()


def _free_port() -> int:
    with socket.socket() as s:                       # the OS picks a free port
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_up(url: str, timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            if requests.get(url.rstrip("/") + "/v1/health", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"bench serve: {url} did not come up within {timeout:.0f} s")


def bare_server(checkpoint: str, port: int, batching: bool = False,
                replicas: int = 1) -> None:
    """The plain FastAPI server (run in a subprocess by :func:`run_benchmark`), with the
    batch size and wait of the Serve run."""
    import uvicorn

    from emoray.serving.api import make_app
    from emoray.serving.app import LocalBackend

    cfg = _serve_config(checkpoint, batching, replicas)
    uvicorn.run(make_app(LocalBackend(cfg)), host="127.0.0.1", port=port,
                log_level="warning")


def tiny_checkpoint(work: Path) -> str:
    """Synthetic features and a 2-epoch fusion run in ``work``; the run folder."""
    from benchmarks.train import make_features
    from emoray.config import FusionStageConfig
    from emoray.train.stages.fusion import train_fusion

    feats = make_features(work, True, "serve")
    cfg = FusionStageConfig(epochs=2, batch_size=8, dim=32, heads=2, layers=1, num_workers=1,
                            cpus_per_worker=0.5, controller_failure_limit=0, max_failures=0,
                            materialize=True)
    train_fusion(feats, work / "run", cfg)
    return str(work / "run")


# -- the run --------------------------------------------------------------------------------

def _serve_config(checkpoint: str, batching: bool, replicas: int):
    from emoray.config import DeploymentConfig, ServeConfig, SERVE_ROLES

    dep = DeploymentConfig(autoscaling=None, num_replicas=replicas, num_cpus=0.1,
                           max_ongoing_requests=32)
    return ServeConfig(checkpoint=checkpoint, batching=batching, device="cpu",
                       deployments={r: dep for r in SERVE_ROLES})


def run_benchmark(quick: bool = False, out_dir: str | Path = "benchmarks/results",
                  ray_cfg: RayConfig | None = None, checkpoint: str | Path | None = None,
                  requests_per_cell: dict[int, int] | None = None, replicas: int = 2,
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
        Replicas of every Serve deployment (each reserves 0.1 CPU).

    Raises
    ------
    ConfigError
        A bad checkpoint, or a count below 1.
    """
    import torch
    from ray import serve

    from emoray.runtime import init_ray
    from emoray.serving.app import LocalBackend, build_app
    from emoray.serving.model import resolve_checkpoint

    counts = requests_per_cell or ({1: 10, 8: 40, 32: 40} if quick
                                   else {1: 50, 8: 200, 32: 200})
    if replicas < 1 or any(v < 1 for v in counts.values()):
        raise ConfigError(f"bench serve: replicas {replicas} and request counts {counts} "
                          "must be >= 1")
    warm = 3 if quick else 10
    work = Path(tempfile.mkdtemp(prefix="emoray-bench-serve-"))
    load = {"before": os.getloadavg()}
    init_ray(ray_cfg or RayConfig(num_cpus=2))
    cells: dict[str, dict[int, dict[str, Any]]] = {}
    noop: dict[str, float] = {}
    proc = None
    loop = asyncio.new_event_loop()          # the floor's "server" loop
    loop_thread = threading.Thread(target=loop.run_forever, name="bench-floor", daemon=True)
    loop_thread.start()
    try:
        ckpt = (str(resolve_checkpoint(checkpoint)) if checkpoint is not None
                else str(resolve_checkpoint(tiny_checkpoint(work))))
        body = request_body(ckpt)
        print(f"bench serve: {ckpt}, request {len(body) / 1e3:.0f} kB, counts {counts}",
              flush=True)

        sport = _free_port()
        router_url = f"http://127.0.0.1:{sport}"
        serve.start(http_options={"host": "127.0.0.1", "port": sport})
        for batching in (True, False):
            suffix = "+batch" if batching else ""
            t0 = time.monotonic()
            backend = LocalBackend(_serve_config(ckpt, batching, replicas))
            port = _free_port()
            proc = subprocess.Popen(cwd=str(Path(__file__).resolve().parents[1]), args=[sys.executable, "-c", "from benchmarks.serve import "
                                     f"bare_server; bare_server({ckpt!r}, {port}, "
                                     f"{batching}, {replicas})"])
            serve.run(build_app(_serve_config(ckpt, batching, replicas)), name=APP_NAME,
                      route_prefix="/", blocking=False,
                      logging_config={"enable_access_log": False, "log_level": "WARNING"})
            fastapi_url = f"http://127.0.0.1:{port}"
            _wait_up(fastapi_url, 120, lambda p=proc: p.poll() is None)
            _wait_up(router_url, 120)
            print(f"bench serve: batching {'on' if batching else 'off'}: servers up in "
                  f"{time.monotonic() - t0:.1f} s", flush=True)
            if batching:
                noop = noop_latency(router_url, 10 if quick else 30)
                print(f"  serve without model work: GET /v1/health {noop['health_ms']:.1f} "
                      f"ms, deep {noop['deep_health_ms']:.1f} ms", flush=True)
            makers = {"floor": lambda st, b=backend: floor_sender(b, body, loop, st),
                      "fastapi": lambda st, u=fastapi_url: http_sender(u, body, st),
                      "router": lambda st: http_sender(router_url, body, st)}
            for c, n in counts.items():
                steps = {name: [] for name in makers}
                senders = {name: make(steps[name]) for name, make in makers.items()}
                for name, send in senders.items():
                    for _ in range(warm):
                        send()
                    steps[name].clear()
                for name, s in drive_rounds(senders, n, c).items():
                    s["steps"] = step_medians(steps[name])
                    cells.setdefault(name + suffix, {})[c] = s
                    print(f"  {name + suffix:<14} c={c:<3} p50 {s['p50']:7.1f} ms  p99 "
                          f"{s['p99']:7.1f} ms  {s['rps']:6.1f} req/s  ({s['errors']} errors)",
                          flush=True)
            proc.terminate()
            proc.wait(30)
            proc = None
            serve.delete(APP_NAME)
        dep = _serve_config(ckpt, True, replicas).deployments["eeg"]
        env = {"cpus": os.cpu_count(), "torch_threads_driver": torch.get_num_threads(),
               "torch_threads_replica": 1, "replicas": replicas, "replica_num_cpus": 0.1,
               "ray_cpus": ray_cfg.num_cpus if ray_cfg else 2,
               "max_batch_size": dep.max_batch_size,
               "batch_wait_timeout_s": dep.batch_wait_timeout_s}
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
    info = dict(quick=quick, checkpoint=ckpt, request_bytes=len(body), counts=counts,
                warmup=warm, environment=env, loadavg=load, serve_without_model=noop)
    return report(cells, out_dir, info)


def _json_safe(value: Any) -> Any:
    """Non-finite floats -> None (JSON has no NaN/inf), recursively; tuples -> lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return {str(k): _json_safe(v) for k, v in value.items()} if isinstance(value, dict) \
        else value


NOTE = ("Every Serve deployment (router, one encoder per modality) has a fixed {replicas} "
        "replicas of 0.1 CPU at every concurrency (autoscaling would only react after its "
        "look-back window); replicas run torch with 1 thread, floor and fastapi with "
        "torch's default threads. Batching: @serve.batch in the Serve encoders, "
        "MicroBatcher in floor and fastapi, both with max_batch_size {max_batch_size} and "
        "a {batch_wait_timeout_s} s wait.")

STEP_ORDER = ("read", "decode", "prepare", "eeg", "speech", "video", "combine", "total")


def step_rows(cells: dict[str, dict[int, dict[str, Any]]], c: int) -> list[dict[str, str]]:
    """Where the time goes at concurrency ``c``: per system the median ms of each
    ``Server-Timing`` step (encoder steps include the hop to the encoder), and the
    client's p50."""
    out = []
    for system, by_c in cells.items():
        steps = by_c.get(c, {}).get("steps") or {}
        row = {"system": system}
        row.update({k: f"{steps[k]:.1f}" if k in steps else "-" for k in STEP_ORDER})
        row["client p50"] = f"{by_c[c]['p50']:.1f}" if c in by_c else "-"
        out.append(row)
    return out


def noop_lines(noop: dict[str, float]) -> list[str]:
    """What Serve itself costs on this machine (no model work), from :func:`noop_latency`."""
    if not noop:
        return []
    return [f"serve without model work (p50): HTTP -> proxy -> router -> answer "
            f"{noop['health_ms']:.1f} ms (GET /v1/health); + a concurrent call of every "
            f"encoder {noop['encoder_fanout_ms']:.1f} ms (GET /v1/health?deep=true "
            f"{noop['deep_health_ms']:.1f} ms)"]


def report(cells: dict[str, dict[int, dict[str, Any]]], out_dir: str | Path,
           info: dict[str, Any]) -> dict[str, Any]:
    """Print the tables, the note and both targets, write the JSON; returns the figures."""
    low, high = min(cells["floor"]), max(cells["floor"])
    result = {"batching": targets(cells, low, high, "router+batch"),
              "no_batching": targets(cells, low, high, "router")}
    env = info["environment"]
    note = NOTE.format(replicas=env["replicas"],
                       max_batch_size=env.get("max_batch_size", "?"),
                       batch_wait_timeout_s=env.get("batch_wait_timeout_s", "?"))
    print(table(rows(cells), COLUMNS))
    print(f"\nwhere the time goes at c={low} (median ms per Server-Timing step):")
    print(table(step_rows(cells, low), ["system", *STEP_ORDER, "client p50"]))
    for line in noop_lines(info.get("serve_without_model") or {}):
        print(line)
    print("note: " + note)
    for key, t in result.items():
        for line in summary_lines(t):
            print(f"[{key}] {line}")
    ratio = result["batching"]["throughput"]["ratio"]
    details = dict(info, cells={s: {str(c): v for c, v in by.items()} for s, by in
                                cells.items()}, targets=result, note=note)
    safe = _json_safe(details)
    path = write_result(out_dir, "serve", round(ratio, 3) if math.isfinite(ratio) else None,
                        TARGET, safe)
    print(f"wrote {path}")
    print(f"serve: ratio {ratio:.2f} (target {TARGET})")
    return dict(targets=result, cells=cells, path=str(path))


def main(argv: list[str] | None = None) -> None:
    """The command line of ``python benchmarks/serve.py``."""
    parser = runner_parser(__doc__)
    parser.add_argument("--checkpoint", help="serve this checkpoint instead of training a "
                        "tiny model")
    parser.add_argument("--replicas", type=int, default=2, help="replicas of every Serve "
                        "deployment (default 2)")
    args = parser.parse_args(argv)
    run_benchmark(quick=args.quick, out_dir=args.out, checkpoint=args.checkpoint,
                  replicas=args.replicas)


if __name__ == "__main__":
    main()
