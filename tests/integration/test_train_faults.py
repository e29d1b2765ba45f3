"""Fault tolerance of training on real local Ray, by really killing processes.

* A Ray Train worker SIGKILLed mid-stage: Ray Train restarts the worker group and the stage
  resumes from its latest checkpoint (``resumed_from`` > 0), ending with one history entry
  per epoch, in order.
* An ``emoray train`` driver SIGKILLed mid-stage: running the same command again resumes the
  stage from the run's latest checkpoint; a third run skips the finished stage.

Kills wait for a checkpoint the Train controller has *registered* (see
:func:`_committed_epoch`), not just for one on disk, so the resume point is known.

Processes are found as descendants of this test process (the ``ray_cluster`` fixture's raylet
is its child, the actors are the raylet's children), so Ray instances of other sessions on
the same machine are never touched. The state API (``ray.util.state``) needs the dashboard,
which the fixture leaves off.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from conftest import wait_for  # tests/ is on sys.path under pytest
from emoray.errors import ConfigError
from emoray.train import FusionStageConfig, read_bundle_meta, train_fusion
from emoray.train.checkpoint import TRAIN_STATE_FILE
from emoray.train.plan import read_state

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "train" / "fusion-tiny.yaml")
EPOCHS = 7
SNAPSHOT = "checkpoint_manager_snapshot.json"
#: as the FAST config of test_train_fusion.py, with retries of worker-group failures
FAULTY = dict(epochs=EPOCHS, batch_size=8, dim=32, heads=2, layers=1, num_workers=2,
              cpus_per_worker=0.25, controller_failure_limit=0, max_failures=2,
              materialize=True)


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


def _committed_epoch(stage_dir: Path) -> int | None:
    """Epoch of the latest checkpoint the Train controller has registered, or None.

    A worker's ``ray.train.report`` uploads the checkpoint folder, but the controller
    registers it only when it next polls the workers (every 2 s): a worker killed in
    between loses that checkpoint, and a restart resumes from the previous registered one.
    The controller writes what it registered to this snapshot (Ray 2.60's file name);
    resuming reads the same state.
    """
    try:
        snapshot = json.loads((stage_dir / SNAPSHOT).read_text(encoding="utf-8"))
        return int(snapshot["latest_checkpoint_result"]["metrics"]["epoch"])
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


def _kill_train_actors(old: set[int]) -> None:
    """SIGKILL the Train controller and workers not in ``old`` (cleanup of a failed test,
    so a stuck run does not hold the CPUs of the tests after it)."""
    for p in _ray_processes("TrainController") + _ray_processes("RayTrainWorker"):
        if p.pid not in old:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


def test_killed_worker_resumes_from_latest_checkpoint(ray_cluster, eav_features, tmp_path,
                                                      monkeypatch):
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "30")
    run_dir = tmp_path / "runs"
    outcome: dict = {}

    def fit():
        try:
            outcome["result"] = train_fusion(eav_features / "feat", run_dir,
                                             FusionStageConfig(**FAULTY), name="faulty")
        except BaseException as err:        # re-raised by the test's thread
            outcome["error"] = err

    before = _train_pids()      # an earlier test may have left an idle controller
    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    stage_dir = run_dir / "faulty"
    try:
        wait_for(lambda: _committed_epoch(stage_dir) is not None, 240,
                  "the first registered checkpoint", alive=thread.is_alive)
        workers = wait_for(lambda: _workers(FAULTY["num_workers"], before), 20,
                            "both Train workers", alive=thread.is_alive)
        committed = _committed_epoch(stage_dir)
        if max(_checkpoint_epochs(stage_dir)) >= EPOCHS - 1:
            pytest.fail("the stage finished before the kill; raise EPOCHS")
        victim = workers[0]
        os.kill(victim.pid, signal.SIGKILL)
        thread.join(timeout=300)
        assert not thread.is_alive(), "the run did not finish after the worker kill"
    finally:
        if thread.is_alive():
            _kill_train_actors(before)
            thread.join(timeout=60)
    if "error" in outcome:
        raise outcome["error"]

    m = outcome["result"]["metrics"]
    assert m["epoch"] == EPOCHS - 1
    # resumed from the latest checkpoint at the kill (or one reported just after), not
    # from scratch (a fresh start reports resumed_from 0)
    r = m["resumed_from"]
    assert committed + 1 <= r <= EPOCHS - 1, (committed, m)
    history = _history(outcome["result"]["checkpoint"])
    assert [h["epoch"] for h in history] == list(range(EPOCHS))
    # exactly one restart: the epochs before it ran fresh, the rest after resuming at r
    assert [h["resumed_from"] for h in history] == [0] * r + [r] * (EPOCHS - r)
    assert _gone(victim)
    wait_for(lambda: not {p.pid for p in _ray_processes("RayTrainWorker")} - before, 30,
              "the finished run's workers to exit", poll=0.25)


def _train_cmd(features: Path, out: Path, address: str) -> list[str]:
    return [sys.executable, "-m", "emoray.cli", "train", str(features), "--config", TINY,
            "--name", "killed", "--set", f"train.output={out}",
            "--set", f"train.stages.fusion.epochs={EPOCHS}", "--address", address]


def _run_env() -> dict[str, str]:
    """Environment of a second driver. It inherits ``RAY_AUTH_MODE``: the fixture's
    ``ray.init`` turned token auth on and set ``RAY_AUTH_MODE=token`` in this process
    (RAY.md trap 6); a driver without it cannot connect (``ConnectionError``), one with it
    reads the token from ``~/.ray/auth_token``."""
    return dict(os.environ, RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="30",
                PYTHONUNBUFFERED="1")


def _free_cpus(ray) -> float:
    return ray.available_resources().get("CPU", 0.0)



def test_killed_driver_rerun_resumes_then_skips(ray_cluster, eav_features, tmp_path):
    features = eav_features / "feat"
    out = tmp_path / "runs"
    address = ray_cluster.get_runtime_context().gcs_address    # RAY.md trap 8: explicit
    cmd = _train_cmd(features, out, address)
    stage_dir = out / "killed" / "fusion"

    cpus_before, train_before = _free_cpus(ray_cluster), _train_pids()
    log1 = tmp_path / "run1.log"
    with open(log1, "w") as f:
        driver = subprocess.Popen(cmd, cwd=REPO, env=_run_env(), stdout=f,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: _committed_epoch(stage_dir) is not None, 240,
                  "the first registered checkpoint", alive=lambda: driver.poll() is None,
                  detail=lambda: log1.read_text()[-3000:])
        committed = _committed_epoch(stage_dir)
        if max(_checkpoint_epochs(stage_dir)) >= EPOCHS - 1:
            pytest.fail("the stage finished before the kill; raise EPOCHS")
        os.killpg(driver.pid, signal.SIGKILL)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    assert read_state(out / "killed")["stages"]["fusion"]["status"] == "running"

    # the dead driver's job takes its Train controller, workers and placement group with it
    # (earlier tests of the session may have left an idle controller: only new ones count)
    def job_gone() -> bool:
        return (not _train_pids() - train_before
                and _free_cpus(ray_cluster) >= cpus_before - 1e-6)

    wait_for(job_gone, 60, "the killed driver's Train actors and CPUs to be freed",
              poll=0.25, detail=lambda: f"free CPUs {_free_cpus(ray_cluster)} (before: "
              f"{cpus_before}); new Train processes {_train_pids() - train_before}")

    t0 = time.perf_counter()
    second = subprocess.run(cmd, cwd=REPO, env=_run_env(), capture_output=True, text=True,
                            timeout=240)
    resumed_seconds = time.perf_counter() - t0
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    state = read_state(out / "killed")["stages"]["fusion"]
    assert state["status"] == "finished" and state["epoch"] == EPOCHS - 1
    assert committed + 1 <= state["metrics"]["resumed_from"] <= EPOCHS - 1, (committed, state)
    r = state["metrics"]["resumed_from"]
    history = _history(state["bundle"])
    assert [h["epoch"] for h in history] == list(range(EPOCHS))
    assert [h["resumed_from"] for h in history] == [0] * r + [r] * (EPOCHS - r)
    checkpoints = sorted(p.name for p in stage_dir.glob("checkpoint_*"))

    t0 = time.perf_counter()
    third = subprocess.run(cmd, cwd=REPO, env=_run_env(), capture_output=True, text=True,
                           timeout=120)
    skip_seconds = time.perf_counter() - t0
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert f"stage fusion already finished: {state['bundle']}" in third.stdout
    assert "fusion: skipped" in third.stdout
    assert sorted(p.name for p in stage_dir.glob("checkpoint_*")) == checkpoints
    assert skip_seconds < resumed_seconds / 2, (skip_seconds, resumed_seconds)
