"""The console: what a command prints, and where everything else goes.

By default a command prints one line per stage start and end, progress for long steps
(a tqdm bar on a terminal, a few plain lines otherwise) and the first and last epoch of
each training stage; everything else -- Ray's own logs, Ray Data's execution plans, every worker's
output, every epoch line -- goes to ``RUN/logs/ray.log`` and the console says where.
``emoray -v COMMAND`` shows it all on the console as Ray prints it.

Worker code (a Ray Train worker loop, a Ray task) calls :func:`remote_echo`: its line is
printed with :data:`MARK` in front, travels to the driver on Ray's ``log_to_driver``
stream, and the driver's handler (:func:`install_ray_handler`, in place of Ray's printer)
shows it without Ray's ``(pid=...)`` prefix and without deduplication.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable

#: the prefix of a worker line meant for the driver's console
MARK = "[emoray] "
#: name of the driver's log file inside the log folder
LOG_NAME = "ray.log"
_EPOCH = re.compile(r"^\[(\w+)\] epoch (\d+)/(\d+)")
_ERROR = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b: ")
_RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve", "optuna")

_state: dict[str, Any] = {"verbose": False, "log": None, "file": None, "handler": None,
                          "driver": False, "bars": {}, "seen": set(),
                          "lock": threading.Lock()}


def configure(log_dir: str | Path | None = None, verbose: bool = False) -> Path | None:
    """Make this process the driver of the console: ``verbose`` shows everything;
    ``log_dir`` (created) receives :data:`LOG_NAME`. Returns the log file's path."""
    close()
    _state.update(verbose=bool(verbose), driver=True, seen=set())
    if log_dir is not None:
        path = Path(log_dir) / LOG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        _state["file"] = open(path, "a", buffering=1, encoding="utf-8")
        _state["log"] = path
        _state["file"].write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} "
                             f"{' '.join(sys.argv)}\n")
        _state["handler"] = _LogFileHandler(_state["file"])
    return _state["log"]


class _LogFileHandler(logging.StreamHandler):
    """The log file's handler on Ray's loggers: a record that propagates from one of them
    to another is written once."""

    _emoray = True

    def __init__(self, stream):
        super().__init__(stream)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: "
                                            "%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "_emoray_logged", None) is self:
            return
        record._emoray_logged = self
        super().emit(record)


def close() -> None:
    """Close the log file and every open bar (the console stays the driver's)."""
    for bar in list(_state["bars"].values()):
        bar.close()
    _state["bars"].clear()
    for name in _RAY_LOGGERS:
        lg = logging.getLogger(name)
        for h in [h for h in lg.handlers if getattr(h, "_emoray", False)]:
            lg.removeHandler(h)
    if _state["file"] is not None:
        _state["file"].close()
    _state.update(file=None, log=None, handler=None)


def verbose() -> bool:
    return _state["verbose"]


def is_driver() -> bool:
    """Whether :func:`configure` made this process's console emoray's."""
    return _state["driver"]


def log_path() -> Path | None:
    return _state["log"]


def is_tty() -> bool:
    return sys.stderr.isatty()


def log(line: str) -> None:
    """Write ``line`` to the log file only."""
    f = _state["file"]
    if f is not None:
        with _state["lock"]:
            f.write(line.rstrip("\n") + "\n")


def echo(line: str = "") -> None:
    """Print ``line`` on the console (above any bar) and log it."""
    log(line)
    if _state["bars"]:
        from tqdm import tqdm

        tqdm.write(line, file=sys.stdout)
    else:
        print(line, flush=True)


def where() -> str:
    """The console's line that says where the hidden output went."""
    if _state["log"] is None:
        return ""
    return (f"logs: {_state['log']} (Ray's and every worker's output"
            + ("" if _state["verbose"] else "; `emoray -v ...` shows it here") + ")")


def tell_logs(command: str) -> None:
    """After a failure: where Ray's and the workers' output went, if it was hidden."""
    path = _state["log"]
    if path is not None and path.exists():
        print(f"emoray {command}: Ray's and the workers' output: {path}", file=sys.stderr)


def quiet_ray_loggers() -> None:
    """Ray's Python loggers in this process (Serve's is set up when ``ray.serve`` is first
    imported) log INFO to the log file; their console handlers show errors only, unless
    verbose."""
    handler = _state.get("handler")
    for name in _RAY_LOGGERS:
        lg = logging.getLogger(name)
        if handler is not None:
            if handler not in lg.handlers:
                lg.addHandler(handler)
            if lg.level == logging.NOTSET or lg.level > logging.INFO:
                lg.setLevel(logging.INFO)
        if _state["verbose"]:
            continue
        for h in lg.handlers:
            if not getattr(h, "_emoray", False) and isinstance(h, logging.StreamHandler) \
                    and not isinstance(h, logging.FileHandler):
                h.setLevel(max(h.level, logging.ERROR))


# -- worker lines -----------------------------------------------------------------------

def _in_ray_worker() -> bool:
    worker = getattr(sys.modules.get("ray._private.worker"), "global_worker", None)
    return worker is not None and getattr(worker, "mode", None) == 1     # ray.WORKER_MODE


def remote_echo(line: str) -> None:
    """A line for the driver's console from wherever this runs: the driver prints it;
    a Ray worker prints it marked, to reach the driver on Ray's log stream once."""
    if _state["driver"]:
        show_line(line, source=None)
    elif _in_ray_worker():
        # sys.__stdout__, not print: Ray Train patches print in its workers to log each
        # line twice (its logger and the captured stdout)
        sys.__stdout__.write(MARK + line + "\n")
        sys.__stdout__.flush()
    else:
        print(line, flush=True)


def show_line(line: str, source: Any = None) -> None:
    """Show a line meant for the console; ``[stage] epoch k/N`` lines of training are
    thinned (quiet, no terminal: the first and the last epoch of a stage's first run, the
    last of its later runs, e.g. an evaluation's seeds) or drawn as a bar (terminal); all
    of them are logged."""
    m = _EPOCH.match(line)
    if m is None or _state["verbose"]:
        echo(line)
        return
    stage, k, n = m.group(1), int(m.group(2)), int(m.group(3))
    if is_tty():
        _epoch_bar((source, stage), stage, k, n, line[m.end():].strip())
    elif k == n or (k == 1 and stage not in _state["seen"]):
        echo(line)                  # runs side by side: the first to start shows epoch 1
        _state["seen"].add(stage)
    else:
        log(line)


def _epoch_bar(key, stage: str, k: int, n: int, text: str) -> None:
    from tqdm import tqdm

    log(f"[{stage}] epoch {k}/{n} {text}")
    bar = _state["bars"].get(key)
    if bar is None or bar.total != n:
        bar = _state["bars"][key] = tqdm(total=n, desc=f"  {stage} epochs", unit="epoch",
                                         leave=False, file=sys.stderr)
    bar.n = k
    bar.set_postfix_str(text[:60], refresh=True)
    if k >= n:
        bar.close()
        _state["bars"].pop(key, None)
        print(f"[{stage}] epoch {k}/{n} {text}", flush=True)


def _handle_worker_logs(data: dict, ray_printer=None) -> None:
    """Ray's ``log_to_driver`` batches (one process's lines): marked lines to the console,
    the rest to the log file (and the console when verbose, as Ray prints them)."""
    who = data.get("actor_name") or data.get("task_name") or ""
    prefix = f"({who} pid={data.get('pid')}{' err' if data.get('is_err') else ''}) "
    rest = []
    for line in (part for raw in data.get("lines", []) for part in raw.splitlines()):
        if line.startswith(MARK):
            show_line(line[len(MARK):], source=data.get("pid"))
            continue
        log(prefix + line)
        rest.append(line)
        if not _state["verbose"] and _ERROR.match(line.strip()):
            echo(f"worker {who or data.get('pid')}: {line.strip()}")
    if rest and _state["verbose"] and ray_printer is not None:
        ray_printer(dict(data, lines=rest))


def install_ray_handler() -> None:
    """Put :func:`_handle_worker_logs` in place of Ray's printer of worker output and of
    the cluster's error messages (the raylet's warnings, a task's unhandled error); call
    after ``ray.init(log_to_driver=True)``."""
    import functools

    from ray._private import worker as ray_worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    original = getattr(ray_worker.print_to_stdstream, "_ray_printer", None) \
        or ray_worker.print_to_stdstream

    def printer(data: dict, ignore_prefix: bool = False) -> None:
        _handle_worker_logs(data, functools.partial(original, ignore_prefix=ignore_prefix))

    printer._ray_printer = original
    ray_worker.print_to_stdstream = printer        # listen_error_messages looks it up
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", printer)


# -- progress ---------------------------------------------------------------------------

class Progress:
    """Progress of ``total`` units: a tqdm bar on a terminal; otherwise a plain line at
    about every quarter (and at the end), at most one per ``every`` seconds."""

    def __init__(self, total: int, desc: str, unit: str = "item", every: float = 5.0,
                 enabled: bool = True):
        self.total, self.desc, self.unit, self.every = int(total), desc, unit, every
        self.done, self._last_shown, self._t0 = 0, 0, time.monotonic()
        self._last_time = self._t0
        self._bar = None
        self.enabled = enabled and self.total > 0
        if self.enabled and is_tty():
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=f"  {desc}", unit=unit, leave=False,
                             file=sys.stderr)

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        step = max(1, math.ceil(self.total / 4))
        if self.done >= self.total or (self.done - self._last_shown >= step
                                       and now - self._last_time >= self.every):
            self._last_shown, self._last_time = self.done, now
            echo(f"  {self.desc}: {self.done}/{self.total} {self.unit}s "
                 f"({now - self._t0:.0f} s)")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(items: Iterable, total: int, desc: str, unit: str = "item") -> Iterable:
    """Iterate ``items`` under a :class:`Progress`."""
    with Progress(total, desc, unit) as bar:
        for item in items:
            yield item
            bar.update()
