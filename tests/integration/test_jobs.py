"""Ray Jobs against real clusters started with ``ray start --head`` (dashboard on).

Two heads, started together: one with token auth (``RAY_AUTH_MODE=token``, the production
path) and one without. On the first, a tiny training job submitted with ``emoray submit``
and one submitted with Ray's own ``ray job submit`` CLI (the README's command, with
jobs/runtime_env.yaml) both SUCCEED and leave a loadable checkpoint; a missing or wrong
token is refused with a clear message. On the second, a job that fails (its features folder
does not exist on the cluster) reports FAILED with the log's tail, and ``emoray jobs``
lists, shows and follows it.

Each head runs in its own temp dir and ports, so the session's Ray is never touched; it is
stopped by terminating its process tree (never ``ray stop``, which stops every Ray on the
machine). Features and run outputs live in the test's tmp folders: storage every node of a
one-machine cluster reaches.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests

from conftest import wait_for  # tests/ is on sys.path under pytest
from emoray.cli import main
from emoray.runtime import EMBEDDED_ENV
from emoray.bundle import read_bundle_meta
from emoray.train.plan import read_state

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TINY = "configs/train/fusion-tiny.yaml"        # relative: it is in the uploaded tree


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Head:
    """A ``ray start --head --block`` process and how to reach it."""

    url: str
    token: str | None
    proc: subprocess.Popen
    temp_dir: str
    log: Path

    def env(self) -> dict[str, str]:
        """Environment of a client process talking to this head."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        if self.token:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        return env

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []


def _stop(heads: list[Head], grace: float = 5.0) -> None:
    """SIGTERM every process of the heads (raylet, GCS, dashboard, workers, job drivers),
    then SIGKILL what is left after ``grace`` seconds."""
    tree = [p for head in heads for p in head.tree()]
    for p in tree:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)
    for head in heads:
        shutil.rmtree(head.temp_dir, ignore_errors=True)


def _start_head(logs: Path, auth: bool) -> Head:
    gcs, dash, client, agent, agent_grpc, metrics, rt_env = _free_ports(7)
    temp_dir = tempfile.mkdtemp(prefix="erh", dir="/tmp")   # short: socket paths are limited
    token = secrets.token_hex(16) if auth else None
    log = logs / f"head-{'auth' if auth else 'open'}.log"
    head = Head(f"http://127.0.0.1:{dash}", token, None, temp_dir, log)   # type: ignore[arg-type]
    env = head.env()
    env["RAY_AUTH_MODE"] = "token" if auth else "disabled"
    env.update(EMBEDDED_ENV)        # as the session's Ray (tests/conftest.py)
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
           "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=2",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
           f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={rt_env}",
           f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    with open(log, "w") as f:
        head.proc = subprocess.Popen(cmd, cwd=logs, env=env, stdout=f,
                                     stderr=subprocess.STDOUT, start_new_session=True)
    return head


def _wait_ready(head: Head) -> None:
    headers = {"Authorization": f"Bearer {head.token}"} if head.token else {}

    def ready() -> bool:
        try:
            return requests.get(head.url + "/api/jobs/", headers=headers,
                                timeout=5).status_code == 200
        except requests.RequestException:
            return False

    wait_for(ready, 180, f"the Ray head at {head.url}", alive=lambda: head.proc.poll() is None,
             poll=0.5, detail=lambda: head.log.read_text()[-3000:])


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    logs = tmp_path_factory.mktemp("heads")
    started = []
    try:
        started = [_start_head(logs, auth=True), _start_head(logs, auth=False)]
        for head in started:
            _wait_ready(head)
        yield {"auth": started[0], "open": started[1]}
    finally:
        _stop(started)


@pytest.fixture
def token_env(monkeypatch, tmp_path):
    """No token anywhere in this process's reach (env, ~/.ray): each test says which."""
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS",
                "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _train_args(features: Path, out: Path, name: str) -> list[str]:
    # one epoch, one Train worker: these tests are about jobs (multi-worker training is
    # test_train_fusion's); two jobs at once on 2 cores pay for every process they start
    return ["--config", TINY, str(features), "--out", str(out), "--name", name,
            "--set", "train.stages.fusion.epochs=1",
            "--set", "train.stages.fusion.num_workers=1"]


def _checkpoint(out: Path, name: str) -> dict:
    state = read_state(out / name)["stages"]["fusion"]
    assert state["status"] == "finished"
    meta = read_bundle_meta(state["bundle"])
    assert meta["stage"] == "fusion" and meta["contract"]
    return state


def test_emoray_submit_and_ray_job_submit_both_train(heads, eav_features, tmp_path,
                                                   token_env, capsys):
    """Two tiny training jobs on the token-auth head, at once (their start-ups overlap):
    one through Ray's ``ray job submit`` CLI as the README shows it, one through
    ``emoray submit`` in this process."""
    head = heads["auth"]
    features, out = eav_features / "feat", tmp_path / "runs"
    ray_cli = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address",
               head.url, "--runtime-env", "jobs/runtime_env.yaml", "--",
               "python", "jobs/train.py", *_train_args(features, out, "viaray")]
    with open(tmp_path / "ray-job-submit.log", "w") as log:
        other = subprocess.Popen(ray_cli, cwd=REPO, env=head.env(), stdout=log,
                                 stderr=subprocess.STDOUT)
    try:
        token_file = tmp_path / "token"
        token_file.write_text(head.token + "\n")
        code = main(["submit", "--address", head.url, "--token-file", str(token_file),
                     "train", *_train_args(features, out, "viasubmit")])
        printed = capsys.readouterr().out
        assert code == 0, printed[-3000:]
        assert "submitted emoray-train-" in printed and "SUCCEEDED" in printed
        assert "fusion" in printed             # the job's own progress lines were streamed
        _checkpoint(out, "viasubmit")
        job_id = printed.split("submitted ", 1)[1].split()[0]
        assert main(["jobs", "status", job_id, "--address", head.url,
                     "--token-file", str(token_file)]) == 0
        assert "SUCCEEDED" in capsys.readouterr().out
        assert other.wait(timeout=400) == 0, (tmp_path / "ray-job-submit.log").read_text()
    finally:
        if other.poll() is None:
            other.kill()
    assert "succeeded" in (tmp_path / "ray-job-submit.log").read_text().lower()
    _checkpoint(out, "viaray")


def test_missing_and_wrong_tokens_are_refused_clearly(heads, tmp_path, token_env, capsys):
    head = heads["auth"]
    t0 = time.perf_counter()
    assert main(["jobs", "list", "--address", head.url]) == 2
    err = capsys.readouterr().err
    assert "requires a token" in err and "--token-file" in err and "Traceback" not in err
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token")
    assert main(["submit", "--address", head.url, "--token-file", str(wrong), "train",
                 "--config", TINY, str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "refused the token" in err and str(wrong) in err
    assert time.perf_counter() - t0 < 60


def test_failing_job_reports_failed_with_its_log_on_an_open_cluster(heads, tmp_path,
                                                                    token_env, capsys):
    head = heads["open"]
    missing = tmp_path / "no-such-features"
    code = main(["submit", "--address", head.url, "--no-wait", "--submission-id",
                 "emoray-test-failing", "train", "--config", TINY, str(missing),
                 "--out", str(tmp_path / "runs")])
    printed = capsys.readouterr().out
    assert code == 0 and "emoray jobs logs emoray-test-failing --follow" in printed
    # follow it to its end: exit 1, Ray's status and the job's own error in the log tail
    assert main(["jobs", "logs", "emoray-test-failing", "--follow",
                 "--address", head.url]) == 1
    printed = capsys.readouterr().out
    assert "emoray-test-failing: FAILED" in printed
    assert "last lines of the job's log" in printed and str(missing) in printed
    assert main(["jobs", "list", "--address", head.url]) == 0
    listed = capsys.readouterr().out
    assert "emoray-test-failing" in listed and "FAILED" in listed and "train" in listed
