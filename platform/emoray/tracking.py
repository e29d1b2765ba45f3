"""MLflow tracking: one small front door to an MLflow store that never fails training.

Every plan run, stage, evaluation and tuning campaign is an MLflow run (see
:mod:`emoray.train.mlflow_runs` and :mod:`emoray.tune.mlflow_trials`); this module holds what
they share: opening a store, flattening a config into params, and a :class:`Tracker` whose
logging methods turn any failure of the store into a one-line warning.

Opening is strict, logging is forgiving: :func:`open_tracker` raises
:class:`~emoray.errors.ConfigError` for a tracking URI that cannot work (no server answers,
a scheme MLflow does not know, MLflow 3's refusal of file stores), before anything trains;
once training runs, a store that goes away costs warnings, never the run.

The default store is a SQLite database in the output root (``OUTPUT/mlflow.db``) with the
artifacts beside it (``OUTPUT/mlartifacts``): MLflow 3.17 refuses its old file store
(``./mlruns``) unless ``MLFLOW_ALLOW_FILE_STORE=true``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import re
from pathlib import Path
from typing import Any, Iterable, Iterator
from urllib.parse import urlparse

from emoray.errors import ConfigError

log = logging.getLogger("emoray.tracking")

STORE_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
PARENT_TAG = "mlflow.parentRunId"          # MLflow shows a run with it nested under the parent
#: MLflow's limits (``mlflow.utils.validation``): a param value, a key
MAX_PARAM_LENGTH = 6000
MAX_KEY_LENGTH = 250
#: source schemes :func:`download` resolves through MLflow
MLFLOW_SCHEMES = ("runs:", "mlflow-artifacts:", "models:")
_BAD_KEY_CHARS = re.compile(r"[^\w./\- :]")


def default_uri(root: str | Path) -> str:
    """The default store of an output root: ``sqlite:///ROOT/mlflow.db`` (absolute)."""
    return "sqlite:///" + str((Path(root) / STORE_FILE).resolve())


def is_mlflow_uri(source: str | Path) -> bool:
    """Whether ``source`` names an MLflow artifact (``runs:/RUN_ID/bundle`` ...)."""
    return isinstance(source, str) and source.startswith(MLFLOW_SCHEMES)


def key(name: str) -> str:
    """``name`` as a valid MLflow param/metric key (other characters become ``_``)."""
    return _BAD_KEY_CHARS.sub("_", str(name))[:MAX_KEY_LENGTH]


def flatten_params(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: dotted keys, values as text cut to MLflow's
    :data:`MAX_PARAM_LENGTH` (lists and empty dicts are written whole, as text).

    >>> flatten_params({"train": {"stages": {"fusion": {"lr": 0.001}}, "split": {}}})
    {'train.stages.fusion.lr': '0.001', 'train.split': '{}'}
    """
    out: dict[str, str] = {}
    for name, value in tree.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, dict) and value:
            out.update(flatten_params(value, dotted + "."))
            continue
        text = str(value)
        if len(text) > MAX_PARAM_LENGTH:
            text = text[:MAX_PARAM_LENGTH - 3] + "..."
        out[key(dotted)] = text
    return out


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of ``metrics`` (bools and text dropped), keys made valid."""
    out = {}
    for name, value in metrics.items():          # numbers.Real: numpy scalars too
        if isinstance(value, numbers.Real) and not isinstance(value, bool) \
                and type(value).__name__ != "bool_" and math.isfinite(value):
            out[key(name)] = float(value)
    return out


def _one_line(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _quiet_store_logs() -> None:
    """SQLite stores log their table creation and migrations at INFO: not progress."""
    for name in ("mlflow.store.db.utils", "alembic", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


class Tracker:
    """An MLflow store and experiment; picklable (a Ray task or the Train controller gets a
    copy that opens its own client). Every logging method warns and returns None on
    failure instead of raising."""

    def __init__(self, uri: str, experiment: str, experiment_id: str):
        self.uri, self.experiment, self.experiment_id = uri, experiment, experiment_id
        self._client = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            _quiet_store_logs()
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _warn(self, what: str, err: BaseException) -> None:
        log.warning("emoray tracking: %s failed (%s: %s); training goes on", what,
                    type(err).__name__, _one_line(err))

    def start(self, name: str, *, params: dict[str, Any] | None = None,
              tags: dict[str, str] | None = None, parent: str | None = None,
              resume: str | None = None) -> str | None:
        """Open run ``resume`` again if this store has it, else create a run ``name``
        (nested under ``parent``); log ``params`` it lacks; return its id (None on
        failure)."""
        try:
            run_id = None
            if resume:
                try:
                    run = self.client.get_run(resume)
                    run_id = run.info.run_id
                    self.client.update_run(run_id, status="RUNNING")
                except Exception:            # deleted, or another store: a new run
                    run_id = None
            if run_id is None:
                all_tags = dict(tags or {}, **({PARENT_TAG: parent} if parent else {}))
                run_id = self.client.create_run(self.experiment_id, run_name=name,
                                                tags=all_tags).info.run_id
            self.log_params(run_id, params or {})
            return run_id
        except Exception as err:
            self._warn(f"starting the MLflow run {name!r}", err)
            return None

    def log_params(self, run_id: str | None, params: dict[str, Any]) -> None:
        """Log the params the run lacks (a logged param cannot change in MLflow: a resumed
        run keeps the values it was started with)."""
        if not run_id or not params:
            return
        try:
            from mlflow.entities import Param

            have = self.client.get_run(run_id).data.params
            new = [Param(k, str(v)) for k, v in params.items() if k not in have]
            if new:
                self.client.log_batch(run_id, params=new)
        except Exception as err:
            self._warn("logging params", err)

    def log_metrics(self, run_id: str | None, metrics: dict[str, Any],
                    step: int | None = None) -> None:
        """Log the finite numbers of ``metrics`` at ``step`` in one batch."""
        if not run_id:
            return
        try:
            import time

            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            batch = [Metric(k, v, now, step or 0) for k, v in numeric(metrics).items()]
            if batch:
                self.client.log_batch(run_id, metrics=batch)
        except Exception as err:
            self._warn("logging metrics", err)

    def logged_steps(self, run_id: str, metric: str) -> set[int]:
        """Steps at which ``metric`` was logged (empty on failure)."""
        try:
            return {m.step for m in self.client.get_metric_history(run_id, metric)}
        except Exception as err:
            self._warn("reading the metric history", err)
            return set()

    def log_artifacts(self, run_id: str | None, paths: Iterable[str | Path],
                      artifact_path: str | None = None,
                      exclude: tuple[str, ...] = ()) -> None:
        """Log files (and the files of folders, except names in ``exclude``) under
        ``artifact_path``."""
        if not run_id:
            return
        try:
            for path in map(Path, paths):
                if path.is_dir():
                    for f in sorted(path.rglob("*")):
                        if f.is_file() and f.name not in exclude:
                            sub = f.parent.relative_to(path).as_posix()
                            where = "/".join(p for p in (artifact_path, sub)
                                             if p and p != ".")
                            self.client.log_artifact(run_id, str(f), where or None)
                elif path.is_file():
                    self.client.log_artifact(run_id, str(path), artifact_path)
        except Exception as err:
            self._warn(f"logging artifacts {artifact_path or ''}".strip(), err)

    def set_tags(self, run_id: str | None, tags: dict[str, Any]) -> None:
        if not run_id:
            return
        try:
            for k, v in tags.items():
                self.client.set_tag(run_id, k, str(v))
        except Exception as err:
            self._warn("setting tags", err)

    def end(self, run_id: str | None, status: str = "FINISHED") -> None:
        """Mark the run FINISHED, FAILED or KILLED."""
        if not run_id:
            return
        try:
            self.client.set_terminated(run_id, status=status)
        except Exception as err:
            self._warn("ending the MLflow run", err)


def check_uri(uri: str) -> None:
    """Raise :class:`ConfigError` now for a URI that cannot work: a server that does not
    answer (5 s), a file store (MLflow 3 refuses them)."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        import requests

        try:
            requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
        except Exception as err:
            raise ConfigError(f"tracking.uri {uri}: no MLflow server answers at "
                              f"{uri.rstrip('/')}/health ({_one_line(err, 160)}); start "
                              "one (`mlflow server`), fix --tracking-uri, or set "
                              "tracking.enabled=false") from None
    elif parsed.scheme in ("", "file"):
        raise ConfigError(f"tracking.uri {uri}: a file store; MLflow 3 writes to a database "
                          "or a server: use sqlite:///PATH/mlflow.db or http://HOST:PORT")


def open_tracker(uri: str | None, experiment: str, root: str | Path) -> Tracker:
    """The tracker of ``uri`` (None: :func:`default_uri` of ``root``, created) and
    ``experiment`` (created when missing, with its artifacts beside a SQLite store).

    Raises
    ------
    ConfigError
        Naming the URI when MLflow cannot use it.
    """
    if uri is None:
        Path(root).mkdir(parents=True, exist_ok=True)
        uri = default_uri(root)
    check_uri(uri)
    tracker = Tracker(uri, experiment, "")
    try:
        with _creation_lock(uri):
            tracker.experiment_id = _experiment_id(tracker.client, uri, experiment)
    except Exception as err:
        raise ConfigError(f"tracking.uri {uri}: MLflow cannot use this tracking store "
                          f"({_one_line(err, 200)}); expected sqlite:///PATH/mlflow.db or an "
                          "MLflow server http://HOST:PORT (or tracking.enabled=false)") from None
    return tracker


@contextlib.contextmanager
def _creation_lock(uri: str) -> Iterator[None]:
    """Hold ``DB.lock`` while a SQLite store is opened: MLflow creates a new database's
    tables without a lock, and two drivers opening a new store at once fail ("table ...
    already exists")."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _experiment_id(client, uri: str, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    where = None
    if uri.startswith("sqlite:///"):        # artifacts beside the database, not in the cwd
        where = (Path(uri[len("sqlite:///"):]).parent / ARTIFACT_DIR).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=where)
    except Exception:
        found = client.get_experiment_by_name(name)     # created meanwhile by another driver
        if found is None:
            raise
        return found.experiment_id


def download(source: str, dest: str | Path, tracking_uri: str | None = None) -> Path:
    """Download the MLflow artifact ``source`` (``runs:/RUN_ID/bundle``,
    ``mlflow-artifacts:/...``) into ``dest``; the store is ``tracking_uri`` or MLflow's
    default (``MLFLOW_TRACKING_URI``).

    Raises
    ------
    ConfigError
        Naming the source when MLflow cannot resolve or download it.
    """
    import mlflow.artifacts

    _quiet_store_logs()
    Path(dest).mkdir(parents=True, exist_ok=True)
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dest),
                                                        tracking_uri=tracking_uri))
    except Exception as err:
        raise ConfigError(f"checkpoint {source}: MLflow could not download it "
                          f"({_one_line(err, 200)}); check the run id and the tracking URI "
                          "(--set tracking.uri=... or MLFLOW_TRACKING_URI)") from None
