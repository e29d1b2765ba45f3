"""Multi-node training on one machine: placement across nodes and recovery from a lost node.

A Ray cluster runs on this machine (``ray.cluster_utils.Cluster``): a head that does no
training work (it runs the Train controller and the Ray Data tasks) and worker nodes that
each hold ``TRAINER_SLOTS`` units of the custom resource ``TRAINER``. The tiny fusion stage
runs on it from a separate ``emoray train --address`` driver, each of its two Train workers
asking for one unit (``worker_resources``) with ``placement_strategy=STRICT_SPREAD``: under
Ray's default ``PACK`` both workers would fit on one worker node; here they must land on
different ones.

The worker nodes join once the stage's Train controller exists, i.e. when its worker group
asks for them, as an autoscaler adds nodes for a pending placement group. By then the
stage's datasets are cached (``materialize``) in the head's object store. After the stage's
first registered checkpoint the node of one worker is removed and a fresh node is added in
its place; Ray Train restarts the worker group, which can be placed only once the new node
has joined, and the stage resumes from that checkpoint and finishes. The time from the
removal to the first checkpoint of the restarted group is measured (printed).

Checkpoints go to a local folder (pytest's ``tmp_path``): every node of this cluster runs
on this machine and reaches it. On a real cluster it must be a path every node reaches.

Cached blocks on a lost node: with the worker nodes present from the start, the cached
blocks spread over them, and after the removal the restarted group waited on their
reconstruction for over 240 s (Ray 2.60); reading the shards every epoch instead
(``materialize=false``) recovered, at 30-40 s per epoch on this machine. Hence the order
above, which keeps the test about placement and Train's recovery.

The cluster lives in a process of its own (:func:`_own_cluster`, run from its source), not
in the pytest process, which already is a driver of the session's Ray (``ray_cluster``):
``Cluster`` reaches into process-wide Ray state (its shutdown resets the process's GCS
client). The cluster runs with token auth, with a token of its own (``RAY_AUTH_TOKEN_PATH``)
that the driver gets too (RAY.md trap 6), and under a Ray temp folder of its own
(``RAY_TMPDIR``): its address file is the one that Ray's auto-detection inside the cluster
reads (Train's placement-group cleaner looks the controller up that way; RAY.md trap 8),
and it leaves ``/tmp/ray`` to the session's Ray.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from itertools import accumulate
from pathlib import Path

import psutil
import pytest

from conftest import wait_for  # tests/ is on sys.path under pytest
from sockets import free_port
from emoray.train.plan import read_state
from test_train_faults import (REPO, TINY, WORKERS, _committed, _gone, _history,
                               _ray_processes)

pytestmark = pytest.mark.integration

NAME = "multinode"
#: enough epochs (0.4-1 s each here) that the stage is still training when its node goes
EPOCHS = 6
TRAINER = "emoray_trainer"     # custom resource of the worker nodes
TRAINER_SLOTS = 2              # per worker node: PACK could put both workers on one
#: the head: driver-side Ray Data tasks and the Train controller, no resource TRAINER. Its
#: dashboard is on: Train's placement-group cleaner asks it whether the controller lives.
HEAD = {"num_cpus": 2, "include_dashboard": True, "dashboard_host": "127.0.0.1",
        # notice a dead node within ~2 s (Ray's default: 5 missed checks of 3 s)
        "_system_config": {"health_check_period_ms": 500,
                           "health_check_failure_threshold": 4}}
WORKER_NODE = {"num_cpus": 1, "resources": {TRAINER: TRAINER_SLOTS}}
PREFIX = "EMORAY-CLUSTER "     # marks the owner's replies among anything Ray prints


def _own_cluster() -> None:
    """Body of the cluster-owner process: ``python -c <this source> SPEC``.

    SPEC (JSON): ``{"head": node args, "worker": node args, "prefix": str}``. Starts the
    head, prints ``ready`` with the GCS address and the head node, then serves one command
    a line on stdin: ``add N`` (worker nodes, started side by side), ``remove NODE_ID``,
    ``stop``. Every reply is one JSON line after ``prefix``, a node as ``{"id", "raylet"
    (pid), "head"}``. Stdin closing stops the cluster too.
    """
    import json
    import sys
    import time

    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    spec = json.loads(sys.argv[1])

    def info(node) -> dict:
        raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
        return {"id": node.node_id, "raylet": raylet, "head": node is cluster.head_node}

    def say(event: str, **fields) -> None:
        print(spec["prefix"] + json.dumps(dict(fields, event=event)), flush=True)

    cluster = Cluster(initialize_head=True, connect=False, head_node_args=spec["head"])
    try:
        say("ready", address=cluster.address, nodes=[info(cluster.head_node)])
        for line in sys.stdin:
            op, *args = line.split()
            t0 = time.monotonic()
            if op == "add":
                added = [cluster.add_node(wait=False, **spec["worker"])
                         for _ in range(int(args[0]))]
                cluster.wait_for_nodes()
                say("added", nodes=[info(n) for n in added], seconds=time.monotonic() - t0)
            elif op == "remove":
                node = next(n for n in cluster.worker_nodes if n.node_id == args[0])
                cluster.remove_node(node)
                say("removed", id=args[0], seconds=time.monotonic() - t0)
            elif op == "stop":
                break
    finally:
        cluster.shutdown()
        say("stopped")


class _Owner:
    """The cluster-owner process seen from the test: commands, replies, the nodes."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        head = dict(HEAD, dashboard_port=free_port())     # 8265 is the session Ray's
        spec = {"head": head, "worker": WORKER_NODE, "prefix": PREFIX}
        code = inspect.getsource(_own_cluster) + "\n_own_cluster()\n"
        self.log = log
        with open(log, "w") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code, json.dumps(spec)], cwd=REPO, env=env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=f, text=True,
                start_new_session=True)
        self._replies: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.nodes: dict[str, dict] = {}        # node id -> {"id", "raylet", "head"}
        self.raylets: list[psutil.Process] = []
        self.outlived: list[psutil.Process] = []

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith(PREFIX):
                self._replies.put(json.loads(line[len(PREFIX):]))

    def _expect(self, event: str, timeout: float) -> dict:
        try:
            reply = self._replies.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no {event!r} from the cluster owner in {timeout:.0f} s\n"
                        f"{self.log.read_text()[-3000:]}")
        assert reply["event"] == event, reply
        for node in reply.get("nodes", []):
            self.nodes[node["id"]] = node
            self.raylets.append(psutil.Process(node["raylet"]))
        return reply

    def _send(self, command: str, event: str, timeout: float = 120) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._expect(event, timeout)

    def start(self) -> str:
        """Wait for the head; its GCS address."""
        return self._expect("ready", 180)["address"]

    def add(self, n: int) -> list[str]:
        """Add ``n`` worker nodes; their ids."""
        return [node["id"] for node in self._send(f"add {n}", "added")["nodes"]]

    def remove(self, node: str) -> float:
        """Remove node ``node`` (kill its processes); the seconds it took."""
        return self._send(f"remove {node}", "removed")["seconds"]

    def raylet_pids(self) -> dict[int, str]:
        return {n["raylet"]: i for i, n in self.nodes.items()}

    def stop(self) -> None:
        """Stop the cluster (``Cluster.shutdown``); kill whatever outlives it."""
        try:
            left = [psutil.Process(self.proc.pid)]
            left += left[0].children(recursive=True)
        except psutil.NoSuchProcess:
            left = []
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            self.proc.stdin.write("stop\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        _, alive = psutil.wait_procs(left, timeout=10)     # Ray workers exit on their own
        self.outlived = [p for p in alive if not _gone(p)]
        for p in self.outlived:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()            # psutil checks the pid still is that process
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def _node_of(p: psutil.Process, raylets: dict[int, str]) -> str | None:
    """Id of the node whose raylet started ``p`` (a Ray worker is the raylet's child)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        for parent in p.parents():
            if parent.pid in raylets:
                return raylets[parent.pid]
    return None


def _actors(actor_class: str, raylets: dict[int, str], n: int,
            old: set[int] = frozenset()) -> dict[int, str] | None:
    """``{pid: node id}`` of the cluster's ``n`` live actors of ``actor_class`` (pids not
    in ``old``), or None while there are not ``n``."""
    found = {p.pid: _node_of(p, raylets) for p in _ray_processes(actor_class)
             if p.pid not in old}
    found = {pid: node for pid, node in found.items() if node is not None}
    return found if len(found) == n else None


def _env(tmp: Path, token: Path) -> dict[str, str]:
    """Environment of the cluster and of the driver: token auth with the cluster's own
    token, the cluster's own Ray temp folder, a worker-group start timeout longer than a
    node's start-up (a worker group waits for its nodes)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_TMPDIR=str(tmp),
               RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="90", PYTHONUNBUFFERED="1")
    return env


def _train_command(features: Path, out: Path, address: str) -> list[str]:
    stage = "train.stages.fusion"
    return [sys.executable, "-m", "emoray.cli", "train", str(features), "--config", TINY,
            "--name", NAME, "--out", str(out), "--set", f"{stage}.epochs={EPOCHS}",
            "--set", f"{stage}.max_failures=2",              # retry worker-group failures
            "--set", f"{stage}.placement_strategy=STRICT_SPREAD",
            "--set", f"{stage}.worker_resources.{TRAINER}=1",
            "--address", address]                            # RAY.md trap 8: explicit


@pytest.fixture(scope="module")
def node_loss_run(eav_features, tmp_path_factory) -> dict:
    """The stage on the cluster through the loss of a worker node (see the module
    docstring); what the tests need to know about it."""
    root = tmp_path_factory.mktemp("multinode")
    out = root / "runs"                       # reachable by every node: one machine
    stage_dir = out / NAME / "fusion"
    # a short folder: Ray's socket paths under it must stay within 107 characters
    ray_tmp = Path(tempfile.mkdtemp(prefix="emr"))
    token = root / "auth_token"
    token.write_text(secrets.token_hex(32))
    env, log = _env(ray_tmp, token), root / "driver.log"
    owner, driver, run = _Owner(env, root / "cluster.log"), None, {}

    def alive() -> bool:
        return driver.poll() is None

    def detail() -> str:
        return log.read_text()[-3000:]

    def wait(condition, what: str, timeout: float = 240):
        return wait_for(condition, timeout, what, alive=alive, detail=detail)

    try:
        t0 = time.monotonic()
        address = owner.start()
        timeline = {"head": time.monotonic() - t0}
        with open(log, "w") as f:
            driver = subprocess.Popen(_train_command(eav_features / "feat", out, address),
                                      cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        # the controller starts after the datasets are cached: its worker group's
        # placement group now waits for worker nodes, which join as an autoscaler adds them
        wait(lambda: _actors("TrainController", owner.raylet_pids(), 1), "the controller")
        timeline["controller"] = time.monotonic() - t0
        owner.add(2)
        timeline["nodes"] = time.monotonic() - t0
        placed = wait(lambda: _actors("RayTrainWorker", owner.raylet_pids(), WORKERS),
                      "both Train workers")
        timeline["workers"] = time.monotonic() - t0
        committed = wait(lambda: _committed(stage_dir), "the first registered checkpoint")
        timeline["checkpoint"] = time.monotonic() - t0
        if committed["epoch"] >= EPOCHS - 2:
            pytest.fail(f"the stage was at epoch {committed['epoch']} of {EPOCHS} when its "
                        "node was to be removed; raise EPOCHS")
        victim_pid, victim_node = next(iter(placed.items()))
        victim = psutil.Process(victim_pid)
        t_loss = time.monotonic()
        owner.remove(victim_node)
        timeline["removed"] = time.monotonic() - t0
        added, = owner.add(1)                           # the autoscaler's replacement
        timeline["replaced"] = time.monotonic() - t0
        replaced = wait(lambda: _actors("RayTrainWorker", owner.raylet_pids(), WORKERS,
                                        old=set(placed)), "the restarted worker group")
        timeline["regrouped"] = time.monotonic() - t0
        wait(lambda: (_committed(stage_dir) or {}).get("resumed_from", 0) > 0,
             "a checkpoint of the restarted worker group")
        recovery = time.monotonic() - t_loss
        timeline["recovered"] = time.monotonic() - t0
        code = driver.wait(timeout=300)
        timeline["finished"] = time.monotonic() - t0
        run = {"placed": placed, "victim": victim, "victim_node": victim_node,
               "committed": committed, "replaced": replaced, "added": added, "code": code,
               "log": detail(), "folder": out / NAME, "recovery": recovery}
        print(f"\nrecovery {recovery:.1f} s (node removal at epoch {committed['epoch']} to "
              "the restarted group's first checkpoint); timeline (s): " + ", ".join(f"{k} {v:.1f}"
                                                      for k, v in timeline.items()))
    except BaseException:
        with contextlib.suppress(OSError):      # Ray's logs, for the failure's reader
            shutil.copytree(ray_tmp / "ray" / "session_latest" / "logs", root / "ray-logs",
                            ignore_dangling_symlinks=True, dirs_exist_ok=True)
        raise
    finally:
        if driver is not None and driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(timeout=30)
        owner.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    run["owner"] = owner
    return run


def test_workers_land_on_different_worker_nodes(node_loss_run):
    run = node_loss_run
    heads = {i for i, n in run["owner"].nodes.items() if n["head"]}
    for placed in (run["placed"], run["replaced"]):
        on = list(placed.values())
        assert len(set(on)) == WORKERS, placed          # STRICT_SPREAD: one node each
        assert not heads & set(on), placed              # the head does no training work
    # after the loss: the surviving worker node and the replacement, never the lost node
    survivor = set(run["placed"].values()) - {run["victim_node"]}
    assert set(run["replaced"].values()) == survivor | {run["added"]}


def test_stage_recovers_from_a_lost_node(node_loss_run):
    run = node_loss_run
    assert run["code"] == 0, run["log"]
    assert _gone(run["victim"])
    state = read_state(run["folder"])["stages"]["fusion"]
    assert state["status"] == "finished" and state["epoch"] == EPOCHS - 1
    history = _history(state["bundle"])
    assert [h["epoch"] for h in history] == list(range(EPOCHS))     # every epoch once
    # the step count carries over the restart: each epoch adds its own steps
    assert [h["steps"] for h in history] == list(accumulate(h["train_steps"]
                                                            for h in history))
    # one restart, from the checkpoint registered before the removal (or a later one)
    resumed = [h["resumed_from"] for h in history]
    r = state["metrics"]["resumed_from"]
    assert r > 0 and resumed == [0] * r + [r] * (EPOCHS - r), resumed
    assert r >= run["committed"]["epoch"] + 1, (run["committed"], resumed)


def test_no_process_of_the_cluster_survives(node_loss_run):
    owner = node_loss_run["owner"]
    assert owner.proc.returncode == 0                   # the owner shut the cluster down
    assert len(owner.raylets) == 4                      # head, two workers, replacement
    # psutil.Process.is_running() also tells a reused pid from the raylet that had it
    assert not [p for p in owner.raylets if p.is_running() and not _gone(p)]
    assert not owner.outlived, owner.outlived           # Cluster.shutdown stopped them all
