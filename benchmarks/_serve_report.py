"""The arithmetic, the request driver and the printed report of ``benchmarks/serve.py``
(no Ray, no server): latency statistics and CPU per request per cell, the side-by-side
targets, rotating rounds of requests, ``Server-Timing`` steps, tables."""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from benchmarks._runner import percentile, table, write_result
from benchmarks._serve_cpu import Meter, per_request_ms

TARGET = 0.9                 # router / floor throughput at the highest concurrency
LATENCY_SLACK_MS = 15.0      # router p50 <= floor p50 + this, at the lowest concurrency
CPU_TARGET_MS = 25.0         # router CPU ms per request at the highest concurrency
CONCURRENCY = (1, 8, 32)
APP_NAME = "bench"


# -- pure arithmetic (no Ray) ---------------------------------------------------------------

def cell_stats(latencies_s: list[float], wall_s: float, errors: int = 0,
               cpu_s: dict[str, float] | None = None) -> dict[str, Any]:
    """p50/p95/p99/mean latency (ms), throughput (answered requests per wall second) and,
    per entry ``key -> CPU seconds`` of ``cpu_s``, ``key_ms``: CPU ms per answered
    request."""
    ms = [x * 1000 for x in latencies_s]
    out = {"n": len(ms), "errors": errors, "wall_s": wall_s,
           "p50": percentile(ms, 50), "p95": percentile(ms, 95), "p99": percentile(ms, 99),
           "mean": sum(ms) / len(ms) if ms else math.nan,
           "rps": len(ms) / wall_s if wall_s > 0 else math.nan}
    for key, seconds in (cpu_s or {}).items():
        out[f"{key}_s"] = seconds
        out[f"{key}_ms"] = per_request_ms(seconds, len(ms))
    return out


def baseline(cells: dict[str, Any], name: str, system: str) -> str:
    """The ``name`` baseline (floor, fastapi) with the same batching as ``system``:
    ``name+batch`` for a ``+batch`` system when measured, else ``name``."""
    batched = f"{name}+batch"
    return batched if system.endswith("+batch") and batched in cells else name


def _get(cells: dict[str, Any], system: str, c: int, key: str) -> float:
    return cells.get(system, {}).get(c, {}).get(key, math.nan)


def targets(cells: dict[str, dict[int, dict[str, Any]]], low: int, high: int,
            router: str = "router") -> dict[str, Any]:
    """The targets from the cells (``system -> concurrency -> cell_stats``), each against
    the baseline with the router's batching (:func:`baseline`).

    ``latency``: ``router`` p50 at ``low`` <= floor p50 + :data:`LATENCY_SLACK_MS`;
    ``throughput`` (the headline): ``router`` req/s at ``high`` over the floor's, pass at
    >= :data:`TARGET` (1.0: Serve costs nothing), with the ratio over fastapi's alongside;
    ``cpu``: ``router`` CPU ms per request at ``high`` <= :data:`CPU_TARGET_MS`, with every
    system's CPU ms at ``high``. A figure not measured (NaN) fails.
    """
    floor, fastapi = baseline(cells, "floor", router), baseline(cells, "fastapi", router)
    r_p50, f_p50 = cells[router][low]["p50"], cells[floor][low]["p50"]
    bound = f_p50 + LATENCY_SLACK_MS
    r_rps, f_rps = cells[router][high]["rps"], cells[floor][high]["rps"]
    b_rps = _get(cells, fastapi, high, "rps")
    ratio = r_rps / f_rps if f_rps > 0 else math.nan
    r_cpu = _get(cells, router, high, "cpu_ms")
    return {"latency": {"router_p50_ms": r_p50, "floor_p50_ms": f_p50, "bound_ms": bound,
                        "overhead_ms": r_p50 - f_p50, "pass": bool(r_p50 <= bound)},
            "throughput": {"router_rps": r_rps, "floor_rps": f_rps, "ratio": ratio,
                           "target": TARGET, "pass": bool(ratio >= TARGET),
                           "fastapi_rps": b_rps,
                           "vs_fastapi": r_rps / b_rps if b_rps > 0 else math.nan},
            "cpu": {"router_ms": r_cpu, "target_ms": CPU_TARGET_MS,
                    "pass": bool(r_cpu <= CPU_TARGET_MS),
                    "ray_core_ms": _get(cells, router, high, "ray_core_ms"),
                    "systems_ms": {s: _get(cells, s, high, "cpu_ms")
                                   for s in (floor, fastapi, router) if s in cells}},
            "concurrency": {"latency": low, "throughput": high}, "router": router,
            "baselines": {"floor": floor, "fastapi": fastapi}}


def _ms(value: float) -> str:
    return f"{value:.1f}" if math.isfinite(value) else "-"


def _ratio(num: float, den: float) -> str:
    return f"{num / den:.2f}x" if den > 0 and math.isfinite(num / den) else "-"


def rows(cells: dict[str, dict[int, dict[str, Any]]]) -> list[dict[str, str]]:
    """Table rows: one per system and concurrency, with req/s relative to the floor's and
    fastapi's (with the same batching), CPU ms per request of the system's own processes
    and of Ray's (``-``: not measured)."""
    out = []
    for system, by_c in cells.items():
        floor, fastapi = baseline(cells, "floor", system), baseline(cells, "fastapi", system)
        for c, s in by_c.items():
            out.append({"system": system, "c": str(c), "n": str(s["n"]),
                        "err": str(s["errors"]), "p50 ms": f"{s['p50']:.1f}",
                        "p95 ms": f"{s['p95']:.1f}", "p99 ms": f"{s['p99']:.1f}",
                        "req/s": f"{s['rps']:.1f}",
                        "vs floor": _ratio(s["rps"], _get(cells, floor, c, "rps")),
                        "vs fastapi": _ratio(s["rps"], _get(cells, fastapi, c, "rps")),
                        "cpu ms": _ms(s.get("cpu_ms", math.nan)),
                        "ray core ms": _ms(s.get("ray_core_ms", math.nan))})
    return out


COLUMNS = ["system", "c", "n", "err", "p50 ms", "p95 ms", "p99 ms", "req/s", "vs floor",
           "vs fastapi", "cpu ms", "ray core ms"]


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def summary_lines(t: dict[str, Any]) -> list[str]:
    """The three target lines of :func:`targets`' result (latency, throughput, CPU), each
    ending PASS or FAIL."""
    lat, thr, cpu = t["latency"], t["throughput"], t["cpu"]
    base, conc = t["baselines"], t["concurrency"]
    others = ", ".join(f"{s} {_ms(v)}" for s, v in cpu["systems_ms"].items()
                       if s != t["router"])
    return [f"latency @c{conc['latency']}: {t['router']} p50 {lat['router_p50_ms']:.1f} ms "
            f"vs bound {lat['bound_ms']:.1f} ms ({base['floor']} {lat['floor_p50_ms']:.1f} "
            f"+ {LATENCY_SLACK_MS:g}) -> {_verdict(lat['pass'])}",
            f"throughput @c{conc['throughput']}: {t['router']} {thr['router_rps']:.1f} req/s "
            f"/ {base['floor']} {thr['floor_rps']:.1f} req/s = {thr['ratio']:.2f} (target >= "
            f"{TARGET:g}; vs {base['fastapi']} {thr['fastapi_rps']:.1f} req/s: "
            f"{thr['vs_fastapi']:.2f}x) -> {_verdict(thr['pass'])}",
            f"cpu @c{conc['throughput']}: {t['router']} {_ms(cpu['router_ms'])} ms/request "
            f"(+ ray core {_ms(cpu['ray_core_ms'])}; {others}) (target <= "
            f"{CPU_TARGET_MS:g}) -> {_verdict(cpu['pass'])}"]


def by_process_ms(cpu_s: dict[str, float], answered: int) -> dict[str, float]:
    """``short title -> CPU seconds`` as CPU ms per answered request, largest first."""
    ranked = sorted(cpu_s.items(), key=lambda kv: -kv[1])
    return {title: per_request_ms(seconds, answered) for title, seconds in ranked}


def process_lines(cells: dict[str, dict[int, dict[str, Any]]], c: int,
                  least_ms: float = 0.5) -> list[str]:
    """Where each system's CPU went at concurrency ``c``, for the cells that carry a
    ``cpu_by_process_ms`` breakdown (the router's): every process title of at least
    ``least_ms`` per request, the rest summed as ``other``."""
    out = []
    for system, by_c in cells.items():
        parts = by_c.get(c, {}).get("cpu_by_process_ms") or {}
        if not parts:
            continue
        shown = [f"{title} {_ms(ms)}" for title, ms in parts.items() if ms >= least_ms]
        rest = sum(ms for ms in parts.values() if ms < least_ms)
        out.append(f"{system} cpu ms per request @c{c} by process: " + ", ".join(
            shown + ([f"other {_ms(rest)}"] if rest > 0 else [])))
    return out


def cpu_line(cells: dict[str, dict[int, dict[str, Any]]], c: int) -> str:
    """Every system's CPU ms per request at concurrency ``c``: its own processes, and in
    brackets Ray's own processes during its turns."""
    parts = [f"{s} {_ms(_get(cells, s, c, 'cpu_ms'))} "
             f"(ray core {_ms(_get(cells, s, c, 'ray_core_ms'))})" for s in cells]
    return f"cpu ms per request @c{c}: " + ", ".join(parts)


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


def _metered(meters: dict[str, Meter], run: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    """``run()`` between the meters: started in order, stopped in reverse order (the last
    started is the first stopped: the innermost measures least of the others' reading);
    ``(run's result, key -> CPU seconds)``."""
    stops = [(key, start()) for key, start in meters.items()]
    result = run()
    seconds = {key: stop() for key, stop in reversed(stops)}
    return result, {key: seconds[key] for key in meters}


def drive_rounds(senders: dict[str, Callable[[], bool]], n: int, concurrency: int,
                 rounds: int = 5, meters: dict[str, dict[str, Meter]] | None = None
                 ) -> dict[str, dict[str, Any]]:
    """Every system's cell at one concurrency, measured side by side: ``n`` requests per
    system cut into rounds (at most ``rounds``, each of at least ``concurrency`` requests),
    the systems taking turns within each round in a rotating order, so a machine whose
    speed drifts over minutes slows every system alike. Throughput is the system's
    answered requests over its own summed wall time.

    ``meters`` (system -> key -> :data:`~benchmarks._serve_cpu.Meter`) are read around
    each of the system's turns only; their CPU seconds, summed over the turns, become the
    cell's ``key_s`` and ``key_ms`` (per answered request, :func:`cell_stats`).
    """
    k = max(1, min(rounds, n // concurrency))
    sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
    names = list(senders)
    meters = meters or {}
    got = {name: ([], 0, 0.0) for name in names}
    cpu = {name: {key: 0.0 for key in meters.get(name, {})} for name in names}
    for r, size in enumerate(sizes):
        for name in names[r % len(names):] + names[:r % len(names)]:
            (lat, errors, wall), seconds = _metered(
                meters.get(name, {}), lambda: _drive_raw(senders[name], size, concurrency))
            a, e, w = got[name]
            got[name] = (a + lat, e + errors, w + wall)
            for key, value in seconds.items():
                cpu[name][key] += value               # NaN once: NaN for the cell
    return {name: cell_stats(lat, wall, errors, cpu[name])
            for name, (lat, errors, wall) in got.items()}


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


def _json_safe(value: Any) -> Any:
    """Non-finite floats -> None (JSON has no NaN/inf), recursively; tuples -> lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return {str(k): _json_safe(v) for k, v in value.items()} if isinstance(value, dict) \
        else value


NOTE = ("Every Serve deployment has a fixed number of replicas of 0.1 CPU at every "
        "concurrency ({router_replicas} router, {replicas} of each encoder; autoscaling "
        "would only react after its look-back window); replicas run torch with 1 thread, "
        "floor and fastapi with torch's default threads. Batching: the Serve router sends "
        "concurrent requests to an encoder as one call and runs their fusion heads as one "
        "pass; floor and fastapi batch the same steps in process (MicroBatcher); "
        "max_batch_size {max_batch_size}, a {batch_wait_timeout_s} s wait. Requests: {encoding}. CPU ms: user + system "
        "CPU of the system's own processes during its own turns over its answered "
        "requests (floor: this process, clients included, which only submit; fastapi: "
        "the uvicorn process; router: every Serve replica, the proxy and the controller); "
        "ray core: Ray's other processes (raylet, gcs_server, dashboard, agents) in the "
        "same turns.")

ENCODING_TEXT = {"binary": "binary, multipart/form-data with one .npy part per modality "
                            "(the client's default)",
                 "json": "JSON (application/json, arrays as lists of numbers)"}

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
    """Print the tables, the note, every system's CPU per request and the targets, write
    the JSON; returns the figures. The last line is the headline ``serve: ratio R (target
    0.9)``, R the router's throughput over the floor's at the highest concurrency with
    batching on."""
    low, high = min(cells["floor"]), max(cells["floor"])
    result = {"batching": targets(cells, low, high, "router+batch"),
              "no_batching": targets(cells, low, high, "router")}
    env = info["environment"]
    note = NOTE.format(replicas=env["replicas"],
                       router_replicas=env.get("router_replicas", env["replicas"]),
                       max_batch_size=env.get("max_batch_size", "?"),
                       batch_wait_timeout_s=env.get("batch_wait_timeout_s", "?"),
                       encoding=ENCODING_TEXT.get(info.get("encoding"), "?"))
    print(table(rows(cells), COLUMNS))
    print(f"\nwhere the time goes at c={low} (median ms per Server-Timing step):")
    print(table(step_rows(cells, low), ["system", *STEP_ORDER, "client p50"]))
    for line in noop_lines(info.get("serve_without_model") or {}):
        print(line)
    print("note: " + note)
    print(cpu_line(cells, high))
    for line in process_lines(cells, high):
        print(line)
    streams = info.get("streams") or {}
    stream_targets = {}
    if streams:
        from benchmarks._serve_stream import (STREAM_COLUMNS, stream_line, stream_rows,
                                              stream_target)

        print(f"\nlive streams ({info.get('stream_seconds', 0):g} s each, 0.1 s chunks, "
              "batching on; latency: from the chunk completing a window to its answer):")
        print(table(stream_rows(streams), STREAM_COLUMNS))
        stream_targets = {name: stream_target(runs) for name, runs in streams.items()}
        for name, st in stream_targets.items():
            print(stream_line(name, st))
    for key, t in result.items():
        for line in summary_lines(t):
            print(f"[{key}] {line}")
    result["streams"] = stream_targets
    ratio = result["batching"]["throughput"]["ratio"]
    details = dict(info, cells={s: {str(c): v for c, v in by.items()} for s, by in
                                cells.items()}, targets=result, note=note)
    safe = _json_safe(details)
    path = write_result(out_dir, "serve", round(ratio, 3) if math.isfinite(ratio) else None,
                        TARGET, safe)
    print(f"wrote {path}")
    print(headline(ratio))
    return dict(targets=result, cells=cells, path=str(path))


def headline(ratio: float) -> str:
    """The last printed line: ``serve: ratio R (target 0.9)``, R to 2 decimals."""
    return f"serve: ratio {ratio:.2f} (target {TARGET:g})"
