"""CPU time of the systems of ``benchmarks/serve.py``: which processes make up a system,
and meters of their CPU seconds (user + system, every thread) over one turn of requests.

A meter is ``start() -> stop() -> seconds``: ``start`` finds the processes and reads their
CPU times, ``stop`` reads the same processes again and returns the sum of the increases
(:func:`cpu_delta`). A process that ends during the turn is left out of that turn's sum
(its last CPU time cannot be read); a meter that could read no process at both ends gives
NaN, never a flattering 0.

The processes of the Ray this run starts are the driver's descendants (the driver starts
``gcs_server`` and ``raylet``; ``raylet`` starts every worker): :func:`is_serve_process`
picks Serve's by their process titles (``ray::ServeReplica:<app>:<Deployment>``,
``ray::ProxyActor``, ``ray::ServeController``), the rest are Ray's own (``gcs_server``,
``raylet``, the dashboard and its agents, monitors, idle workers). A Ray joined by address
is not the driver's descendant: its meters find nothing and read NaN.
"""

from __future__ import annotations

import math
import os
from typing import Callable, Iterable

#: ``start() -> stop() -> CPU seconds`` of a group of processes over one turn.
Meter = Callable[[], Callable[[], float]]
SERVE_TITLES = ("ray::ProxyActor", "ray::ServeController")


def cpu_delta(before: dict[int, float | None], after: dict[int, float | None]) -> float:
    """The CPU seconds ``pid -> seconds`` grew by, summed over the processes read at both
    ends (None: could not be read, e.g. ended); NaN when none was."""
    both = [pid for pid, t in before.items() if t is not None and after.get(pid) is not None]
    if not both:
        return math.nan
    return sum(max(0.0, after[pid] - before[pid]) for pid in both)


def per_request_ms(cpu_s: float, answered: int) -> float:
    """CPU milliseconds per answered request; NaN for no answers."""
    return cpu_s * 1000 / answered if answered > 0 else math.nan


def is_serve_process(title: str, app: str) -> bool:
    """True for a process of Serve application ``app``: its replicas, the proxy and the
    controller (``title``: the process title Ray sets, as ``ps`` shows it)."""
    title = title.strip()
    return title.startswith(f"ray::ServeReplica:{app}:") or title.startswith(SERVE_TITLES)


def short_title(title: str) -> str:
    """A process title without what changes or runs long: a Ray actor's title without the
    method it is running (``ray::ServeController.listen_for_change`` ->
    ``ray::ServeController``), a Python process as ``python SCRIPT.py`` (or ``python -c``),
    another program by its file name (``.../raylet --flags`` -> ``raylet``)."""
    words = title.split()
    if not words:
        return "?"
    if words[0].startswith("ray::"):
        return words[0].split(".")[0]
    exe = os.path.basename(words[0])
    if exe.startswith("python"):
        script = next((os.path.basename(w) for w in words[1:] if w.endswith(".py")), None)
        return f"python {script}" if script else ("python -c" if "-c" in words else exe)
    return exe


def _title(proc) -> str:
    import psutil

    try:
        return " ".join(proc.cmdline()).strip() or proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ""


def _cpu_s(proc) -> float | None:
    import psutil

    try:
        t = proc.cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return t.user + t.system


def process_meter(find: Callable[[], Iterable],
                  by_title: dict[str, float] | None = None) -> Meter:
    """A meter of the ``psutil.Process`` objects ``find()`` returns at each start; with
    ``by_title``, each reading also adds every process's CPU seconds there under its
    :func:`short_title` (where the CPU goes)."""
    def start() -> Callable[[], float]:
        procs = list(find())
        names = {p.pid: short_title(_title(p)) for p in procs} if by_title is not None else {}
        before = {p.pid: _cpu_s(p) for p in procs}

        def stop() -> float:
            after = {p.pid: _cpu_s(p) for p in procs}
            for pid, name in names.items():
                one = cpu_delta({pid: before[pid]}, {pid: after[pid]})
                if math.isfinite(one):
                    by_title[name] = by_title.get(name, 0.0) + one
            return cpu_delta(before, after)

        return stop

    return start


def ray_processes(app: str, exclude: Iterable[int] = ()) -> dict[str, list]:
    """The driver's descendants but ``exclude`` (e.g. a server subprocess), split into
    ``serve`` (:func:`is_serve_process` for ``app``) and ``ray_core`` (the rest)."""
    import psutil

    skip = set(exclude)
    out: dict[str, list] = {"serve": [], "ray_core": []}
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.NoSuchProcess:
        return out
    for proc in children:
        if proc.pid in skip:
            continue
        out["serve" if is_serve_process(_title(proc), app) else "ray_core"].append(proc)
    return out


def titles(procs: Iterable) -> dict[str, int]:
    """``short title -> count`` of ``procs``: which processes a meter counts, for the
    JSON."""
    out: dict[str, int] = {}
    for proc in procs:
        title = short_title(_title(proc))
        out[title] = out.get(title, 0) + 1
    return dict(sorted(out.items()))


def _process(pid: int | None = None) -> list:
    """``[psutil.Process(pid)]`` (this process for None), ``[]`` once it has ended."""
    import psutil

    try:
        return [psutil.Process(pid)]
    except psutil.NoSuchProcess:
        return []


def system_meters(app: str, server_pid: int, by_title: dict[str, float] | None = None
                  ) -> dict[str, dict[str, Meter]]:
    """Per system of the benchmark ``{"ray_core": meter, "cpu": meter}``: the floor's CPU is
    this process's (it runs in-process), fastapi's the server subprocess ``server_pid``'s,
    the router's every Serve process of ``app``; ``ray_core`` is the rest of Ray, read
    during every system's turns (for floor and fastapi it is Ray's idle cost). ``cpu``
    comes last: :func:`~benchmarks._serve_report.drive_rounds` starts it last and stops it
    first, so finding Ray's processes in this process is not the floor's cost. The
    router's meters add every process's CPU seconds to ``by_title`` (:func:`process_meter`).
    """
    def ray(group: str) -> Callable[[], list]:
        return lambda: ray_processes(app, [server_pid])[group]

    ray_core = process_meter(ray("ray_core"))
    return {"floor": {"ray_core": ray_core, "cpu": process_meter(_process)},
            "fastapi": {"ray_core": ray_core,
                        "cpu": process_meter(lambda: _process(server_pid))},
            "router": {"ray_core": process_meter(ray("ray_core"), by_title),
                       "cpu": process_meter(ray("serve"), by_title)}}
