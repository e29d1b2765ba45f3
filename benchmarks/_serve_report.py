"""The arithmetic, the request driver and the printed report of ``benchmarks/serve.py``
(no Ray, no server): latency statistics per cell, the side-by-side targets, rotating
rounds of requests, ``Server-Timing`` steps, tables."""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from benchmarks._runner import table, write_result
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
