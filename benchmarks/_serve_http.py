"""The servers' plumbing of ``benchmarks/serve.py``: free ports, waiting for a server to
answer, Serve's own cost without model work, and stopping the floor's event loop."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Callable

from benchmarks._runner import percentile


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
