"""MLflow tracking without Ray: a real SQLite store in a temporary folder, read back through
MLflow's own client.

What the store holds after real training (a run per stage, trials nested under a campaign)
is checked where the suite already trains: test_train_jmml.py, test_train_faults.py and
test_tune.py.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from emoray.errors import ConfigError
from emoray.tracking import (MAX_PARAM_LENGTH, PARENT_TAG, Tracker, default_uri,
                             flatten_params, open_tracker)

FUSION_BUNDLE = Path(__file__).resolve().parents[1] / "fixtures" / "bundles_v0" / "fusion"


def test_flatten_params_dots_nested_keys_and_respects_mlflow_limits():
    params = flatten_params({"train": {"stages": {"fusion": {"lr": 0.001, "subject_norm":
                                                             ["eeg", "logmel"]}},
                                       "split": {}, "features": None},
                             "tune": {"space": {"stages.fusion.lr": {"low": 1e-4}}},
                             "long": "x" * 10_000, "odd key+name": 1})
    assert params["train.stages.fusion.lr"] == "0.001"
    assert params["train.stages.fusion.subject_norm"] == "['eeg', 'logmel']"
    assert params["train.split"] == "{}" and params["train.features"] == "None"
    assert params["tune.space.stages.fusion.lr.low"] == "0.0001"
    assert len(params["long"]) == MAX_PARAM_LENGTH and params["long"].endswith("...")
    assert params["odd key_name"] == "1"                 # '+' is not valid in an MLflow key


def test_default_store_is_sqlite_in_the_output_root_with_artifacts_beside_it(tmp_path):
    tracker = open_tracker(None, "emoray", tmp_path / "runs")
    assert tracker.uri == default_uri(tmp_path / "runs")
    assert tracker.uri == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert (tmp_path / "runs" / "mlflow.db").is_file()
    client = MlflowClient(tracking_uri=tracker.uri)
    exp = client.get_experiment_by_name("emoray")
    assert exp.experiment_id == tracker.experiment_id
    assert exp.artifact_location == (tmp_path / "runs" / "mlartifacts").as_uri()
    # opening again finds the same experiment
    assert open_tracker(None, "emoray", tmp_path / "runs").experiment_id == exp.experiment_id


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("uri, expected", [
    (f"http://127.0.0.1:{_closed_port()}", "no MLflow server answers"),
    ("file:///tmp/mlruns", "a file store"),
    ("mlruns", "a file store"),
    ("sqlite:///{tmp}/a-file/mlflow.db", "MLflow cannot use this tracking store"),
    ("nosuchscheme://host/x", "MLflow cannot use this tracking store"),
])
def test_a_bad_tracking_uri_is_one_clear_config_error(uri, expected, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    uri = uri.format(tmp=tmp_path)
    with pytest.raises(ConfigError) as info:
        open_tracker(uri, "emoray", tmp_path)
    text = str(info.value)
    assert text.startswith(f"tracking.uri {uri}: ") and expected in text
    assert "\n" not in text


def test_a_store_that_fails_while_training_costs_a_warning_not_the_run(tmp_path, caplog):
    gone = Tracker(f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}", "emoray", "1")
    with caplog.at_level(logging.WARNING, logger="emoray.tracking"):
        assert gone.start("train x", params={"a": 1}) is None
        gone.log_metrics("abc", {"val_acc": 0.5}, step=0)
        gone.log_artifacts("abc", [FUSION_BUNDLE], "bundle")
        gone.end("abc")
    warnings = [r for r in caplog.records if r.name == "emoray.tracking"]
    assert len(warnings) == 4
    assert all(r.levelno == logging.WARNING and "\n" not in r.getMessage()
               and "training goes on" in r.getMessage() for r in warnings)


def test_runs_nest_params_resume_and_metrics_keep_one_point_per_step(tmp_path):
    tracker = open_tracker(None, "emoray", tmp_path)
    parent = tracker.start("train p", params={"train.name": "p"})
    child = tracker.start("fusion", parent=parent, params={"lr": "0.1"})
    tracker.log_metrics(child, {"epoch": 0, "train_loss": 1.5, "note": "text", "ok": True,
                                "nan": float("nan"), "lr": np.float32(0.25),
                                "steps": np.int64(7)}, step=0)
    again = tracker.start("fusion", resume=child, params={"lr": "0.2", "dim": "8"})
    assert again == child                  # the recorded run is continued, not duplicated
    client = MlflowClient(tracking_uri=tracker.uri)
    run = client.get_run(child)
    assert run.data.tags[PARENT_TAG] == parent
    assert run.data.params == {"lr": "0.1", "dim": "8"}    # a logged param never changes
    assert run.data.metrics == {"epoch": 0.0, "train_loss": 1.5, "lr": 0.25, "steps": 7.0}
    assert tracker.logged_steps(child, "epoch") == {0}
    tracker.end(child, "KILLED")
    assert client.get_run(child).info.status == "KILLED"


def test_epoch_callback_logs_rank_zero_once_per_report(tmp_path):
    from emoray.train.mlflow_runs import EpochMetrics

    tracker = open_tracker(None, "emoray", tmp_path)
    run_id = tracker.start("fusion")
    callback = EpochMetrics(tracker, run_id)
    for epoch in range(3):                 # two ranks report each epoch
        callback.after_report(None, [{"epoch": epoch, "train_loss": 1.0 / (epoch + 1)},
                                     {"epoch": epoch, "train_loss": 99.0}], None)
    history = MlflowClient(tracking_uri=tracker.uri).get_metric_history(run_id, "train_loss")
    assert sorted((m.step, m.value) for m in history) == [(0, 1.0), (1, 0.5),
                                                          (2, pytest.approx(1 / 3))]


def test_run_callbacks_of_nested_blocks_add_up():
    from emoray.train.loop import _CALLBACKS, run_callbacks

    with run_callbacks("outer"):
        with run_callbacks("inner"):
            assert _CALLBACKS.get() == ("outer", "inner")
        assert _CALLBACKS.get() == ("outer",)
    assert _CALLBACKS.get() == ()


def test_serve_resolves_an_mlflow_runs_bundle_uri(tmp_path, monkeypatch):
    from emoray.serving.model import resolve_checkpoint

    tracker = open_tracker(None, "emoray", tmp_path / "store")
    run_id = tracker.start("fusion")
    tracker.log_artifacts(run_id, [FUSION_BUNDLE], "bundle")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracker.uri)
    local = resolve_checkpoint(f"runs:/{run_id}/bundle", tmp_path / "cache")
    assert local.parent == tmp_path / "cache"
    assert sorted(p.name for p in local.iterdir()) == ["bundle.json", "model.pt"]
    assert (local / "model.pt").read_bytes() == (FUSION_BUNDLE / "model.pt").read_bytes()
    with pytest.raises(ConfigError, match=r"checkpoint runs:/0123/bundle: MLflow could not"):
        resolve_checkpoint("runs:/0123/bundle", tmp_path / "cache2")


def _open_in_process(root: str) -> str:
    return open_tracker(None, "emoray", root).experiment_id


def test_drivers_opening_a_new_store_at_once_all_get_it(tmp_path):
    """Two jobs started together create the same new SQLite store (MLflow creates its
    tables without a lock: without ours one of them failed, "table ... already exists")."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(3, mp_context=multiprocessing.get_context("spawn")) as pool:
        ids = list(pool.map(_open_in_process, [str(tmp_path)] * 3))
    assert len(set(ids)) == 1
    assert MlflowClient(tracking_uri=default_uri(tmp_path)).get_experiment(ids[0]).name == \
        "emoray"
