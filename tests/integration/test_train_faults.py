"""Fault tolerance of training on real local Ray, by really killing processes.

One ``emoray train`` run of the tiny fusion plan (retries of worker-group failures allowed)
takes both faults in turn, because every Ray Train start-up costs about 25 s on 2 cores:

1. a Ray Train worker SIGKILLed mid-stage: Ray Train restarts the worker group and the
   stage resumes from its latest checkpoint (``resumed_from`` > 0);
2. once the restarted group has registered a checkpoint, the ``emoray train`` driver itself
   SIGKILLed: running the same command again (in-process: a driver of the same cluster)
   resumes the stage from the run's latest checkpoint; a third call skips the finished
   stage.

The finished stage holds one history entry per epoch, in order, whose ``resumed_from``
shows exactly those two restarts. The resumed run's folder is checked as any ``emoray
train`` run folder (the resolved config, plan state, bundle, PNG plots; the config
mistakes are in test_train_cli.py).

Kills wait for a checkpoint the Train controller has *registered* (see :func:`_committed`),
not just for one on disk, so the resume point is known.

Processes are found as descendants of this test process (the ``ray_cluster`` fixture's raylet
is its child, the actors are the raylet's children), so Ray instances of other sessions on
the same machine are never touched.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from conftest import wait_for  # tests/ is on sys.path under pytest
from emoray.cli import main
from emoray.config import resolve
from emoray.errors import ConfigError
from emoray.bundle import read_bundle_meta
from emoray.bundle import TRAIN_STATE_FILE
from emoray.train.curves import read_history, val_confusion
from emoray.train.plan import read_state

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "train" / "fusion-tiny.yaml")
NAME = "faulty"
#: enough epochs (0.4 s each here) that the stage is still training after both kills
EPOCHS = 10
WORKERS = 2              # fusion-tiny.yaml's num_workers
SNAPSHOT = "checkpoint_manager_snapshot.json"


def _ray_processes(actor_class: str) -> list[psutil.Process]:
    """Live descendants of this process that are Ray actors of class ``actor_class``
    (Ray sets their process title to ``ray::<class>`` or ``ray::<class>.<method>``)."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            title = " ".join(p.cmdline()).strip()      # Ray pads the title with spaces
            if p.status() != psutil.STATUS_ZOMBIE and (
                    title == f"ray::{actor_class}" or title.startswith(f"ray::{actor_class}.")):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _checkpoint_epochs(stage_dir: Path) -> list[int]:
    """Epochs of the complete checkpoints (bundle.json written) of a Ray Train run folder."""
    epochs = []
    for meta in stage_dir.glob("checkpoint_*/bundle.json"):
        try:
            epochs.append(read_bundle_meta(meta.parent)["metrics"]["epoch"])
        except ConfigError:      # a checkpoint being copied right now: not complete yet
            continue
    return sorted(epochs)


def _committed(stage_dir: Path) -> dict | None:
    """Metrics (``epoch``, ``resumed_from`` ...) of the latest checkpoint the Train
    controller has registered, or None.

    A worker's ``ray.train.report`` uploads the checkpoint folder, but the controller
    registers it only when it next polls the workers (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``,
    see conftest.py): a worker killed in between loses that checkpoint, and a restart
    resumes from the previous registered one. The controller writes what it registered to
    this snapshot (Ray 2.60's file name); resuming reads the same state.
    """
    try:
        snapshot = json.loads((stage_dir / SNAPSHOT).read_text(encoding="utf-8"))
        metrics = snapshot["latest_checkpoint_result"]["metrics"]
        int(metrics["epoch"])
        return metrics
    except (OSError, ValueError, KeyError, TypeError):    # absent, or being written
        return None


def _history(checkpoint: str | Path) -> list[dict]:
    return torch.load(Path(checkpoint) / TRAIN_STATE_FILE, weights_only=False)["history"]


def _gone(p: psutil.Process) -> bool:
    """Whether ``p`` has exited (a zombie not yet reaped by the raylet counts as gone)."""
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _train_pids() -> set[int]:
    """Pids of this cluster's live Train controllers and workers."""
    return {p.pid for p in _ray_processes("TrainController") + _ray_processes("RayTrainWorker")}


def _workers(n: int, old: set[int]) -> list[psutil.Process] | None:
    """The ``n`` Ray Train workers of the running stage (pids not in ``old``), or None
    while there are not ``n``."""
    found = [p for p in _ray_processes("RayTrainWorker") if p.pid not in old]
    return found if len(found) == n else None


def _not_finished(stage_dir: Path) -> None:
    if max(_checkpoint_epochs(stage_dir), default=-1) >= EPOCHS - 1:
        pytest.fail("the stage finished before the kill; raise EPOCHS")


def _train_args(features: Path, out: Path, address: str) -> list[str]:
    return ["train", str(features), "--config", TINY, "--name", NAME, "--out", str(out),
            "--set", f"train.stages.fusion.epochs={EPOCHS}",
            "--set", "train.stages.fusion.max_failures=2",    # retry worker-group failures
            "--address", address]


def _run_env() -> dict[str, str]:
    """Environment of the driver to kill. It inherits ``RAY_AUTH_MODE``: the fixture's
    ``ray.init`` turned token auth on and set ``RAY_AUTH_MODE=token`` in this process
    (RAY.md trap 6); a driver without it cannot connect (``ConnectionError``), one with it
    reads the token from ``~/.ray/auth_token``."""
    return dict(os.environ, RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="30",
                PYTHONUNBUFFERED="1")


def _free_cpus(ray) -> float:
    return ray.available_resources().get("CPU", 0.0)


@pytest.fixture(scope="module")
def faulted_run(ray_cluster, eav_features, tmp_path_factory) -> dict:
    """The run through both kills and the resuming second call (see the module docstring);
    what the tests need to know about it."""
    features = eav_features / "feat"
    root = tmp_path_factory.mktemp("faults")
    out = root / "runs"
    address = ray_cluster.get_runtime_context().gcs_address    # RAY.md trap 8: explicit
    cmd = [sys.executable, "-m", "emoray.cli", *_train_args(features, out, address)]
    stage_dir = out / NAME / "fusion"

    # earlier tests of the session may have left an idle controller: only new ones count
    cpus_before, train_before = _free_cpus(ray_cluster), _train_pids()
    log1 = root / "run1.log"
    with open(log1, "w") as f:
        driver = subprocess.Popen(cmd, cwd=REPO, env=_run_env(), stdout=f,
                                  stderr=subprocess.STDOUT, start_new_session=True)

    def alive() -> bool:
        return driver.poll() is None

    def detail() -> str:
        return log1.read_text()[-3000:]

    try:
        # fault 1: a Train worker, after the first registered checkpoint
        wait_for(lambda: _committed(stage_dir), 240, "the first registered checkpoint",
                 alive=alive, detail=detail)
        workers = wait_for(lambda: _workers(WORKERS, train_before), 20, "both Train workers",
                           alive=alive, detail=detail)
        worker_committed = _committed(stage_dir)["epoch"]
        _not_finished(stage_dir)
        victim = workers[0]
        os.kill(victim.pid, signal.SIGKILL)
        # fault 2: the driver, once the restarted worker group registered a checkpoint
        # (checkpoints reported before the restart have resumed_from 0)
        wait_for(lambda: (_committed(stage_dir) or {}).get("resumed_from", 0) > 0, 240,
                 "a checkpoint registered after the worker group restarted",
                 alive=alive, detail=detail)
        driver_committed = _committed(stage_dir)["epoch"]
        _not_finished(stage_dir)
        os.killpg(driver.pid, signal.SIGKILL)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    status_after_kill = read_state(out / NAME)["stages"]["fusion"]["status"]

    # the dead driver's job takes its Train controller, workers and placement group with it
    def job_gone() -> bool:
        return (not _train_pids() - train_before
                and _free_cpus(ray_cluster) >= cpus_before - 1e-6)

    wait_for(job_gone, 60, "the killed driver's Train actors and CPUs to be freed",
             poll=0.25, detail=lambda: f"free CPUs {_free_cpus(ray_cluster)} (before: "
             f"{cpus_before}); new Train processes {_train_pids() - train_before}")

    # the same command again, in-process: this process is a driver of the same cluster, as
    # the killed one was (and saves another interpreter start-up)
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "30")
    printed = io.StringIO()
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(printed):
            code = main(_train_args(features, out, address))
    finally:
        mp.undo()
    resumed_seconds = time.perf_counter() - t0
    assert code == 0, printed.getvalue()[-3000:]
    return {"features": features, "out": out, "folder": out / NAME, "stage_dir": stage_dir,
            "args": _train_args(features, out, address), "victim": victim,
            "worker_committed": worker_committed, "driver_committed": driver_committed,
            "status_after_kill": status_after_kill, "resumed_seconds": resumed_seconds,
            "train_before": train_before}


def test_killed_worker_then_driver_resume_from_latest_checkpoint(faulted_run):
    run = faulted_run
    # the killed driver left its stage running in the plan state; the second call ended it
    assert run["status_after_kill"] == "running"
    state = read_state(run["folder"])["stages"]["fusion"]
    assert state["status"] == "finished" and state["epoch"] == EPOCHS - 1
    history = _history(state["bundle"])
    assert [h["epoch"] for h in history] == list(range(EPOCHS))
    # exactly two restarts: the epochs before the worker kill ran fresh, then the restarted
    # worker group's from r1, then the second driver's from r2
    resumed = [h["resumed_from"] for h in history]
    assert len(set(resumed)) == 3 and resumed == sorted(resumed), resumed
    r1, r2 = sorted(set(resumed) - {0})
    assert resumed == [0] * r1 + [r1] * (r2 - r1) + [r2] * (EPOCHS - r2)
    # each resumed from the latest checkpoint at its kill (or one reported just after), not
    # from scratch; the restarted group's checkpoint the driver kill waited for is at >= r1
    assert run["worker_committed"] + 1 <= r1 <= run["driver_committed"], (run, resumed)
    assert run["driver_committed"] + 1 <= r2 <= EPOCHS - 1, (run, resumed)
    assert state["metrics"]["resumed_from"] == r2
    assert _gone(run["victim"])
    wait_for(lambda: not {p.pid for p in _ray_processes("RayTrainWorker")}
             - run["train_before"], 30, "the finished run's workers to exit", poll=0.25)


def test_resumed_run_writes_the_run_folder(faulted_run):
    folder, features = faulted_run["folder"], faulted_run["features"]
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    assert set(saved) == {"ray", "train"}
    assert saved["train"]["name"] == NAME and saved["train"]["features"] == str(features)
    assert saved["train"]["output"] == str(faulted_run["out"])              # --out
    assert saved["train"]["stages"]["fusion"]["epochs"] == EPOCHS           # --set
    assert saved["train"]["stages"]["fusion"]["max_failures"] == 2
    assert resolve(folder / "config.yaml").train.stages["fusion"].dim == 32   # reloads

    entry = read_state(folder)["stages"]["fusion"]
    assert entry["status"] == "finished" and entry["epoch"] == EPOCHS - 1
    bundle = Path(entry["bundle"])
    assert bundle.parent == folder.resolve() / "fusion"      # Ray run <folder>/fusion
    meta = read_bundle_meta(bundle)
    assert meta["stage"] == "fusion" and meta["metrics"]["epoch"] == EPOCHS - 1
    assert entry["metrics"]["val_n"] == entry["n_val"] > 0

    # the driver-side confusion matrix scores the same val rows as the workers did
    conf, names = val_confusion(bundle, features)["label"]
    assert conf.shape == (len(names), len(names)) and conf.sum() == entry["n_val"]
    assert conf.trace() / conf.sum() == pytest.approx(meta["metrics"]["val_acc"], abs=1e-6)

    assert [h["epoch"] for h in read_history(bundle)] == list(range(EPOCHS))
    for name in ("fusion_curves.png", "fusion_confusion.png"):
        png = folder / name
        assert str(png.resolve()) in entry["curves"]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000


def test_the_killed_and_resumed_stage_is_one_mlflow_run_with_one_point_per_epoch(
        faulted_run):
    """Both kills and the resuming call log to the same two runs (plan, stage) of the
    default store, read back through MLflow's client."""
    from mlflow.tracking import MlflowClient

    state = read_state(faulted_run["folder"])
    uri = f"sqlite:///{faulted_run['out'].resolve() / 'mlflow.db'}"
    assert state["mlflow"]["uri"] == uri                 # the default store beside the runs
    client = MlflowClient(tracking_uri=uri)
    plan = client.get_run(state["mlflow"]["run_id"])
    stage = client.get_run(state["stages"]["fusion"]["mlflow_run_id"])
    assert len(client.search_runs([plan.info.experiment_id])) == 2
    assert stage.data.tags["mlflow.parentRunId"] == plan.info.run_id
    assert plan.info.run_name == f"train {NAME}" and stage.info.run_name == "fusion"
    assert plan.info.status == stage.info.status == "FINISHED"
    assert plan.data.params["train.stages.fusion.epochs"] == str(EPOCHS)   # --set
    assert stage.data.params["max_failures"] == "2"
    history = _history(state["stages"]["fusion"]["bundle"])
    for metric in ("epoch", "resumed_from", "train_loss", "val_acc"):
        logged = client.get_metric_history(stage.info.run_id, metric)
        assert sorted(m.step for m in logged) == list(range(EPOCHS)), metric
        by_step = {m.step: m.value for m in logged}
        assert [by_step[e] for e in range(EPOCHS)] == pytest.approx(
            [float(h[metric]) for h in history]), metric


def test_third_call_skips_the_finished_stage(faulted_run, capsys):
    stage_dir = faulted_run["stage_dir"]
    bundle = read_state(faulted_run["folder"])["stages"]["fusion"]["bundle"]
    checkpoints = sorted(p.name for p in stage_dir.glob("checkpoint_*"))
    capsys.readouterr()
    t0 = time.perf_counter()
    code = main(faulted_run["args"])          # in-process: the same command line
    seconds = time.perf_counter() - t0
    out = capsys.readouterr().out
    assert code == 0
    assert f"stage fusion already finished: {bundle}" in out
    assert "fusion: skipped" in out and f"fusion bundle: {bundle}" in out
    assert sorted(p.name for p in stage_dir.glob("checkpoint_*")) == checkpoints
    from mlflow.tracking import MlflowClient           # nor another MLflow run

    client = MlflowClient(tracking_uri=f"sqlite:///{faulted_run['out'] / 'mlflow.db'}")
    assert len(client.search_runs([client.get_experiment_by_name("emoray").experiment_id])) == 2
    # no training ran
    assert seconds < min(10.0, faulted_run["resumed_seconds"] / 2), seconds
