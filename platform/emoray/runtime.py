"""Starting or joining Ray: the embedded local cluster emoray starts by default."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from emoray.config import RayConfig
from emoray.errors import ClusterError

#: seconds a TCP connect to an explicit cluster address may take before emoray gives up
#: (Ray itself retries an unreachable GCS for a minute or more, printing warnings)
CONNECT_TIMEOUT_S = 5.0


def init_ray(cfg: RayConfig | None = None) -> None:
    """Connect to ``cfg.address`` (or ``RAY_ADDRESS``, as inside a Ray Job) or start an
    embedded local Ray (idempotent).

    The embedded Ray listens on ``cfg.host`` only, 127.0.0.1 by default (:func:`bound_to`).
    Worker processes get ``platform/`` on their path through the installed package, never
    through the repo root (see DESIGN.md).
    """
    import ray

    cfg = cfg or RayConfig()
    if ray.is_initialized():
        return
    from emoray import console

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    kwargs: dict = {"logging_level": logging.WARNING, "log_to_driver": True}
    # Ray Data's per-dataset INFO lines in the driver drown the stages' own progress lines
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    if console.is_driver():                 # they go to the log file, as ray.init's own
        console.quiet_ray_loggers()
        kwargs["logging_level"] = logging.INFO
    address = cfg.address or os.environ.get("RAY_ADDRESS")   # set inside a Ray Job
    if address:
        check_reachable(address, source="--address" if cfg.address else "RAY_ADDRESS")
        with joining(address):
            ray.init(address=address, **kwargs)
        quiet_console()
        return
    embedded_defaults()
    if cfg.include_dashboard is not None:
        kwargs["include_dashboard"] = cfg.include_dashboard
    if cfg.object_store_mb:
        kwargs["object_store_memory"] = cfg.object_store_mb * 1024 * 1024
    with bound_to(cfg.host) as binding:
        ray.init(num_cpus=cfg.num_cpus, **kwargs, **binding)
    quiet_console()


#: Ray's own switch for a node that stays on 127.0.0.1 (its default on macOS and Windows,
#: against firewall prompts); Ray reads it when imported, into ``ENABLE_RAY_CLUSTER``
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextmanager
def bound_to(host: str = "127.0.0.1") -> Iterator[dict]:
    """While starting an embedded Ray: its ``ray.init`` keyword arguments for listening on
    ``host`` only (README "Security").

    ``ray.init(_node_ip_address="127.0.0.1")`` does not do it: Ray swaps a loopback node
    address for the machine's, and then binds the GCS, raylet, object manager, agents and
    every worker's gRPC server to all interfaces. On a loopback node (Ray's own switch,
    :data:`LOOPBACK_SWITCH`, off) each of them binds to 127.0.0.1; the processes started
    inside this block inherit it. The one exception is Ray's, not ours: each Serve
    replica's inter-deployment gRPC server binds ``[::]:0`` whatever the node address
    (Ray 2.60, ``serve/_private/replica.py``); Ray's token authentication guards it.
    Another ``host`` is the node's address (``0.0.0.0``: Ray's default, the machine's).
    """
    from ray._private import ray_constants

    if not ipaddress.ip_address(host).is_loopback:
        binding = {"dashboard_host": host}
        yield binding if host == "0.0.0.0" else dict(binding, _node_ip_address=host)
        return
    before = os.environ.get(LOOPBACK_SWITCH), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield {"dashboard_host": host}
    finally:
        if before[0] is None:
            os.environ.pop(LOOPBACK_SWITCH, None)
        else:
            os.environ[LOOPBACK_SWITCH] = before[0]
        ray_constants.ENABLE_RAY_CLUSTER = before[1]


@contextmanager
def joining(address: str) -> Iterator[None]:
    """While connecting to ``address``: a loopback head (``127.0.0.1:PORT``, as an embedded
    or ``ray start --head --node-ip-address 127.0.0.1`` one) is reached as a loopback node,
    since Ray would swap 127.0.0.1 for the machine's address and miss it."""
    host = split_address(address)[0].strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:                      # a host name, auto, local
        loopback = False
    if not loopback:
        yield
        return
    with bound_to("127.0.0.1"):
        yield


def init_ray_logged(cfg: RayConfig, folder: str | Path, verbose: bool = False) -> None:
    """:func:`init_ray` with emoray's console (:mod:`emoray.console`): quiet unless
    ``verbose``; Ray's and the workers' output to ``FOLDER/logs/ray.log``, a path the
    console prints first (a bucket's run folder logs under ``runs/NAME`` here)."""
    from emoray import console, storage

    if storage.is_uri(str(folder)):
        folder = Path("runs") / str(folder).rstrip("/").rsplit("/", 1)[-1]
    path = console.configure(Path(folder) / "logs", verbose=verbose)
    print(f"logs: {path}", flush=True)
    init_ray(cfg)


def quiet_console() -> None:
    """Where the driver's console is emoray's (:func:`emoray.console.configure`): worker
    output goes through :mod:`emoray.console` (each execution's plan, which Ray Data logs
    at INFO, reaches the log file only), and unless verbose Ray Data draws no progress
    bars (its own switch, carried to the workers with each dataset's context)."""
    from emoray import console

    if not console.is_driver():
        return
    import ray.data

    console.install_ray_handler()
    console.quiet_ray_loggers()
    if not console.verbose():
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
    if ray.is_initialized() and console.log_path() is not None:
        try:
            from ray._private.worker import _global_node

            session = Path(_global_node.get_logs_dir_path())
        except Exception:                       # a client connection has no local node
            return
        console.log(f"Ray session logs: {session}")
        link = console.log_path().parent / "ray-session"   # Ray's own files, from the run
        if link.is_symlink():
            link.unlink()
        if not link.exists():
            link.symlink_to(session, target_is_directory=True)


#: Ray settings of the embedded cluster (a variable already set wins). One machine has no
#: spot nodes to watch: Train's PreemptionWatcher actor is a fresh process per stage for
#: nothing. Ray Data's V2 Parquet reader starts a pool of FooterReader actors per read;
#: the V1 reader does not, and feature shards are a few files. Each of those processes
#: imports Ray (~3 s of CPU on 2 cores): without them a tiny stage took 26-31 s, not 31-38 s.
#: Serve runs in Ray's documented high-throughput mode (``RAY_SERVE_THROUGHPUT_OPTIMIZED``,
#: Ray >= 2.55: gRPC between deployments, user code on the replica's own loop, and each
#: ingress replica also answering HTTP on its own port, from 30000, beside the proxy's): on
#: the serve benchmark's request it took the router's CPU per request at c=32 from 32.2 to
#: 17.6 ms through that port (26.8 through the proxy) (docs/benchmarks.md). A stopping
#: direct-ingress replica keeps answering for a drain period so that external load balancers
#: notice it going (30 s by default); one machine has none, and 30 s held every
#: ``serve.shutdown`` and downscale that long, so the embedded Ray drains for 2 s.
EMBEDDED_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_DATA_USE_DATASOURCE_V2": "0",
                "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"}


def embedded_defaults() -> None:
    """Apply :data:`EMBEDDED_ENV` before the embedded Ray starts: its processes inherit the
    driver's environment. Ray Data reads its default when first imported: if it already
    is, the driver's current context is set too."""
    for key, value in EMBEDDED_ENV.items():
        os.environ.setdefault(key, value)
    if "ray.data" in sys.modules:
        sys.modules["ray.data"].DataContext.get_current().use_datasource_v2 = (
            os.environ["RAY_DATA_USE_DATASOURCE_V2"].lower() in ("1", "true"))


def connect_fails(host: str, port: int, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why a TCP connection to ``host:port`` fails within ``timeout`` s, or None if it opens."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))


def split_address(address: str) -> tuple[str, str]:
    """``(HOST, PORT)`` of ``HOST:PORT`` or ``SCHEME://HOST:PORT`` (``""`` where missing;
    an IPv6 host keeps its brackets)."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    return host, port


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S,
                    source: str = "--address") -> None:
    """Fail within ``timeout`` seconds, with a clear :class:`ClusterError`, when the head at
    ``address`` (``HOST:PORT`` of its GCS, or ``ray://HOST:PORT`` of its Ray Client server)
    does not accept a TCP connection. ``auto`` and ``local`` are left to Ray. ``source``
    names where the address came from (``--address``, ``RAY_ADDRESS``) in the error."""
    if address in ("auto", "local"):
        return
    host, port = split_address(address)
    if not host or not port.isdigit():
        raise ClusterError(f"{source} {address}: expected HOST:PORT of the head's GCS (port "
                           "6379 by default, as `ray start --head` prints it), ray://HOST:PORT, "
                           "or auto")
    why = connect_fails(host.strip("[]"), int(port), timeout)
    if why is None:
        return
    raise ClusterError(f"cannot reach the Ray cluster at {address} (from {source}; {why} "
                       f"after at most {timeout:.0f} s): is the head up, and is this its GCS "
                       "port (6379 by default; the dashboard's 8265 is for `emoray submit`)?")


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _call_per_row(batch: dict, fn):
    """``map_batches`` body: call ``fn`` on each row of a batch of plain-valued task rows."""
    import numpy as np

    keys = list(batch)
    rows = [{k: (v.item() if isinstance(v, np.generic) else v)
             for k, v in ((k, batch[k][i]) for k in keys)} for i in range(len(batch[keys[0]]))]
    results = [fn(row) for row in rows]
    return {k: [r[k] for r in results] for k in results[0]}


def map_tasks(tasks: list[dict], fn, desc: str | None = None, unit: str = "task"
              ) -> list[dict]:
    """Run ``fn`` on each task row as a Ray Data ``map_batches`` pipeline, one task per row.

    Task rows hold plain values only (ints, strings: nested structures travel as JSON, or
    Arrow would merge differently keyed dicts). The result rows come back to the driver,
    so they must be small (counts, paths, reasons), never signals.

    Ray Data's per-operator resource reservation keeps half the CPUs back from a
    single-operator pipeline until its first output arrives (on 2 CPUs: one task runs
    alone for a whole task length). These pipelines have one operator whose tasks are
    the whole job, so the reservation is switched off while they run. ``desc`` names a
    progress display over the tasks (:class:`emoray.console.Progress`) as results arrive.
    """
    import ray.data

    from emoray.console import Progress

    if not tasks:
        return []
    ctx = ray.data.DataContext.get_current()
    saved = ctx.op_resource_reservation_enabled
    ctx.op_resource_reservation_enabled = False
    try:
        ds = ray.data.from_items(tasks, override_num_blocks=len(tasks))
        rows = ds.map_batches(_call_per_row, fn_kwargs={"fn": fn}, batch_size=1,
                              batch_format="numpy").iter_rows()
        results = []
        with Progress(len(tasks), desc or "tasks", unit, enabled=desc is not None) as bar:
            for row in rows:
                results.append(row)
                bar.update()
        return results
    finally:
        ctx.op_resource_reservation_enabled = saved


def _timed_call(fn, args: tuple, kwargs: dict):
    """A Ray task body: ``fn(*args, **kwargs)`` and its wall time in seconds."""
    import time

    t = time.perf_counter()
    return fn(*args, **kwargs), time.perf_counter() - t


def run_concurrently(fn, calls: list[tuple[tuple, dict]], parallel: int,
                     on_start=None, keep_errors: tuple[type, ...] = ()
                     ) -> list[tuple[object, float]]:
    """``fn(*args, **kwargs)`` for each ``(args, kwargs)`` of ``calls`` as Ray tasks, at
    most ``parallel`` at a time; returns ``(result, seconds)`` per call, in call order.

    ``fn`` must be importable by the workers (a module-level function of the package).
    The tasks reserve no CPU (``num_cpus=0``): what they start (a Ray Train run) reserves
    its own resources, so a task waiting on its trainer does not hold a CPU the trainer
    needs. ``on_start(i, running)`` is called as call ``i`` starts. An exception of a
    ``keep_errors`` class raised by a call stands in that call's place (the original
    exception, not Ray's wrapper); any other one is raised.
    """
    import ray

    task = ray.remote(num_cpus=0, max_retries=0)(_timed_call)
    refs: list = [None] * len(calls)
    pending: dict = {}
    for i, (args, kwargs) in enumerate(calls):
        if len(pending) >= parallel:
            done, _ = ray.wait(list(pending), num_returns=1)
            refs[pending.pop(done[0])] = done[0]
        ref = task.remote(fn, tuple(args), dict(kwargs))
        pending[ref] = i
        if on_start:
            on_start(i, len(pending))
    for ref, i in pending.items():
        refs[i] = ref
    out: list[tuple[object, float]] = []
    for ref in refs:
        try:
            out.append(ray.get(ref))
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if keep_errors and isinstance(cause, keep_errors):
                out.append((cause, 0.0))
            else:
                raise
    return out
