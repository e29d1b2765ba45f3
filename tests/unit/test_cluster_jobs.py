"""Job submission checks that need no cluster: what is uploaded, the size limit, configs in
the uploaded tree, job arguments, tokens, addresses (the cluster side is in
tests/integration/test_jobs.py)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import yaml

from emoray.cli import main
from emoray.cli.submission import ENTRYPOINTS, find_working_dir, prepare
from emoray.cluster import jobs
from emoray.cluster.jobs import connect, find_token, job_address
from emoray.cluster.upload import (DEFAULT_EXCLUDES, UPLOAD_LIMIT, in_upload, list_package,
                                   ray_default_excludes)
from emoray.errors import ClusterError, ConfigError
from emoray.runtime import check_reachable, embedded_defaults

REPO = Path(__file__).resolve().parents[2]
TINY = "configs/train/fusion-tiny.yaml"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_upload_limit_is_the_dashboards():
    from ray._private import ray_constants

    assert UPLOAD_LIMIT == ray_constants.DASHBOARD_CLIENT_MAX_SIZE


def test_runtime_env_file_for_ray_job_submit_matches_emoray_submit():
    env = yaml.safe_load((REPO / "jobs" / "runtime_env.yaml").read_text())
    assert tuple(env["excludes"]) == DEFAULT_EXCLUDES
    assert env["working_dir"] == "." and env["py_modules"] == ["platform/emoray"]
    for script in ENTRYPOINTS.values():
        assert (REPO / script).is_file()


def test_the_working_dir_upload_holds_code_and_configs_not_outputs(tmp_path):
    # an output folder and a data file inside the checkout would be uploaded without
    # the excludes; they are not
    upload = list_package(REPO, ray_default_excludes() + list(DEFAULT_EXCLUDES))
    assert {"jobs/train.py", "jobs/tune.py", TINY, "serve/config.yaml"} <= set(upload.files)
    for rel in upload.files:
        top = rel.split("/", 1)[0]
        assert top not in {"runs", "data", "platform", "tests", "k8s", ".git", ".venv"}, rel
        assert not rel.endswith((".parquet", ".pyc")), rel
    assert upload.size < 5 * 1024 ** 2


def test_the_excludes_keep_every_module_of_the_package():
    # Ray applies one excludes list to the working dir and to py_modules: none may drop a
    # module of emoray (an anchored "/data" would drop emoray/data/)
    import emoray

    pkg = Path(emoray.__file__).parent
    listed = set(list_package(pkg, DEFAULT_EXCLUDES).files)
    modules = {p.relative_to(pkg).as_posix() for p in pkg.rglob("*.py")
               if "__pycache__" not in p.parts}
    assert modules and modules <= listed
    assert "data/shards.py" in listed and "cluster/jobs.py" in listed


def test_prepare_builds_the_entrypoint_and_runtime_env():
    spec = prepare("train", ["--config", TINY, "/shared/feat", "--name", "a b"],
                   working_dir=REPO, env={"OMP_NUM_THREADS": "2"})
    assert spec.entrypoint == f"python jobs/train.py --config {TINY} /shared/feat --name 'a b'"
    env = spec.runtime_env
    assert env["working_dir"] == str(REPO) and env["py_modules"][0].endswith("emoray")
    assert env["env_vars"] == {"OMP_NUM_THREADS": "2"}
    assert spec.submission_id.startswith("emoray-train-") and spec.notes == []
    assert 0 < spec.upload_bytes < 10 * 1024 ** 2
    assert "py_modules" not in prepare("tune", ["--config", "configs/tune/fusion-tiny.yaml"],
                                       working_dir=REPO, upload_package=False).runtime_env


def test_configs_outside_the_uploaded_tree_are_refused_before_submission(tmp_path):
    with pytest.raises(ConfigError, match=r"--config configs/train/nope\.yaml: does not exist "
                       "in the uploaded tree"):
        prepare("train", ["--config", "configs/train/nope.yaml"], working_dir=REPO)
    with pytest.raises(ConfigError, match="is excluded from the upload"):
        prepare("train", ["--config", TINY], working_dir=REPO, excludes=["/configs/train"])
    # an absolute path outside the tree is the cluster's business: a note, not an error
    outside = tmp_path / "plan.yaml"
    outside.write_text("train: {name: x}\n")
    spec = prepare("train", ["--config", str(outside)], working_dir=REPO)
    assert "the cluster must have that file" in spec.notes[0]


def test_job_arguments_and_config_fields_are_checked_locally():
    with pytest.raises(ConfigError, match="the train job's arguments: .*unrecognized "
                       "arguments: --bogus"):
        prepare("train", ["--bogus"], working_dir=REPO)
    with pytest.raises(ConfigError, match=r"fusion\.epochs: Input should be a valid integer"):
        prepare("train", ["--config", TINY, "--set", "train.stages.fusion.epochs=abc"],
                working_dir=REPO)
    with pytest.raises(ConfigError, match="job kind 'serve'"):
        prepare("serve", [], working_dir=REPO)


def _tiny_tree(root: Path) -> Path:
    (root / "jobs").mkdir(parents=True)
    (root / "jobs" / "train.py").write_text("print('hi')\n")
    return root


def test_an_upload_over_the_limit_is_refused_naming_the_biggest_entries(tmp_path):
    root = _tiny_tree(tmp_path / "repo")
    (root / "recordings").mkdir()
    (root / "recordings" / "s01.bdf").write_bytes(os.urandom(3 * 1024 ** 2))
    (root / "notes.txt").write_text("x" * 1024 ** 2)
    with pytest.raises(ConfigError, match=r"working_dir: .* would upload 4\.0 MiB \(3 files, "
                       r"stored uncompressed\), over Ray's job upload limit of 2\.0 MiB\. "
                       r"Largest entries: recordings/ \(3\.0 MiB\), notes\.txt \(1\.0 MiB\)"):
        prepare("train", [], working_dir=root, upload_package=False, limit=2 * 1024 ** 2)
    # .rayignore is honoured, as Ray does; then it fits
    (root / ".rayignore").write_text("recordings/\n")
    assert not in_upload(list_package(root), "recordings/s01.bdf")
    spec = prepare("train", [], working_dir=root, upload_package=False, limit=2 * 1024 ** 2)
    assert 1024 ** 2 < spec.upload_bytes < 1024 ** 2 + 4096
    # the size is the zip Ray builds (files stored, not compressed): checked against Ray's
    from ray._private.runtime_env.packaging import create_package
    zipped = tmp_path / "pkg.zip"
    create_package(str(root), zipped, include_gitignore=True)
    assert abs(zipped.stat().st_size - spec.upload_bytes) < 512


def test_the_real_limit_through_the_cli_before_contacting_anyone(tmp_path, capsys):
    root = _tiny_tree(tmp_path / "repo")
    with open(root / "big.bin", "wb") as f:
        for _ in range(101):
            f.write(os.urandom(1024 ** 2))
    address = f"http://127.0.0.1:{_closed_port()}"       # nobody there: never reached
    assert main(["submit", "--address", address, "--working-dir", str(root),
                 "--no-package", "train"]) == 2
    err = capsys.readouterr().err
    assert "over Ray's job upload limit of 100.0 MiB" in err and "big.bin" in err
    assert "cannot reach" not in err


def test_unreachable_addresses_fail_fast_with_a_clear_message(capsys, monkeypatch):
    t0 = time.perf_counter()
    with pytest.raises(ClusterError, match=r"cannot reach the Ray dashboard at "
                       r"http://127\.0\.0\.1:\d+ .*dashboard port"):
        connect(f"127.0.0.1:{_closed_port()}")
    # something that accepts the connection and never answers: bounded, not a hang
    monkeypatch.setattr(jobs, "REQUEST_TIMEOUT_S", 1.0)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        with pytest.raises(ClusterError, match="accepted the connection but did not answer"):
            connect(f"http://127.0.0.1:{silent.getsockname()[1]}")
    assert time.perf_counter() - t0 < 20
    assert main(["jobs", "list", "--address", f"http://127.0.0.1:{_closed_port()}"]) == 2
    assert "cannot reach the Ray dashboard" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="not a dashboard URL"):
        job_address("ftp://head:8265")


def test_a_driver_address_that_does_not_answer_fails_fast():
    # `emoray train|tune|... --address HOST:PORT`: Ray alone would retry the GCS for minutes
    t0 = time.perf_counter()
    for address in (f"127.0.0.1:{_closed_port()}", f"ray://127.0.0.1:{_closed_port()}"):
        with pytest.raises(ClusterError, match=r"cannot reach the Ray cluster at .*GCS port"):
            check_reachable(address)
    assert time.perf_counter() - t0 < 15
    with pytest.raises(ClusterError, match=r"--address head:8265x: expected HOST:PORT"):
        check_reachable("head:8265x")
    with socket.socket() as listening:               # a port that accepts: no error
        listening.bind(("127.0.0.1", 0))
        listening.listen(1)
        check_reachable(f"127.0.0.1:{listening.getsockname()[1]}")
    check_reachable("auto")                          # left to Ray


def test_embedded_settings_yield_to_the_users(monkeypatch):
    import ray.data

    ctx = ray.data.DataContext.get_current()
    monkeypatch.setattr(ctx, "use_datasource_v2", ctx.use_datasource_v2)
    monkeypatch.delenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", raising=False)
    monkeypatch.setenv("RAY_DATA_USE_DATASOURCE_V2", "1")        # the user asked for V2
    embedded_defaults()
    assert os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"
    assert os.environ["RAY_DATA_USE_DATASOURCE_V2"] == "1" and ctx.use_datasource_v2
    monkeypatch.setenv("RAY_DATA_USE_DATASOURCE_V2", "0")
    embedded_defaults()
    assert not ctx.use_datasource_v2          # ray.data already imported: its context too


def test_tokens_are_found_in_rays_order(tmp_path, monkeypatch):
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert find_token() == (None, "")
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert find_token()[0] == "from-home"
    path_file = tmp_path / "tok"
    path_file.write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path_file))
    assert find_token()[0] == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert find_token() == ("from-env", "RAY_AUTH_TOKEN")
    flag = tmp_path / "flag"
    flag.write_text("from-flag")
    assert find_token(flag)[0] == "from-flag"
    flag.write_text("  \n")
    with pytest.raises(ConfigError, match="--token-file: the token file .* is empty"):
        find_token(flag)
    with pytest.raises(ConfigError, match="cannot read the token file"):
        find_token(tmp_path / "absent")


def test_addresses_and_working_dir_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")          # a GCS address: not ours
    assert job_address(None) == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://head:8265/")
    assert job_address(None) == "http://head:8265"
    assert job_address("head:9000") == "http://head:9000"
    assert find_working_dir(REPO / "configs" / "train") == REPO
    with pytest.raises(ConfigError, match="no jobs/ folder"):
        find_working_dir(tmp_path)
    with pytest.raises(ConfigError, match="--env 'NOEQUALS': expected KEY=VALUE"):
        from emoray.cli.cluster import _env_pairs
        _env_pairs(["NOEQUALS"])
