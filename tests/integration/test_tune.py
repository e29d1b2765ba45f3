"""Tune campaigns on real local Ray, driven through the CLI like a user would.

One campaign carries the end-to-end checks, because every trial costs a TorchTrainer
start-up: the tiny fusion campaign over 3 trials, one at a time, on the training loss, with
two fixed starting points (``tune.points_to_evaluate``) that make ASHA's decision
predictable: Adam with a learning rate of 1.0 blows the loss up within the first epoch, far
above the other point's, so ASHA stops it at its first rung. (A tiny learning rate does not
do: a good rate can raise the loss in the first epoch on this little data.) The driver is
killed by SIGKILL while the third trial trains; ``--resume``
finishes the campaign without re-running the two finished trials; ``tune report`` (called
in-process) tabulates and plots it; the promoted ``best`` bundle predicts from raw signals.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import wait_for  # tests/ is on sys.path under pytest
from emoray.cli import main
from emoray.data.shards import read_metadata, shard_files, unflatten
from emoray.errors import ConfigError
from emoray.tune.campaign import prepare, resolve_campaign
from emoray.tune.report import trials_table

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CAMPAIGN = str(REPO / "configs" / "tune" / "fusion-tiny.yaml")
NAME = "fusion-tiny"
GOOD = {"stages.fusion.lr": 0.001, "stages.fusion.dropout": 0.0,
        "stages.fusion.modality_dropout": 0.0}
BAD = dict(GOOD, **{"stages.fusion.lr": 1.0})
SPACE = ("{stages.fusion.lr: {type: float, low: 0.0001, high: 1.0, log: true}, "
         "stages.fusion.dropout: {type: float, low: 0.0, high: 0.3}, "
         "stages.fusion.modality_dropout: {type: float, low: 0.0, high: 0.5}}")


def _flow(point: dict) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in point.items()) + "}"


def _env() -> dict[str, str]:
    # Tune saves its experiment state at most this often: the test waits for a saved state
    # that holds the finished trials before it kills the driver
    return dict(os.environ, TUNE_GLOBAL_CHECKPOINT_S="1", PYTHONUNBUFFERED="1",
                RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="60")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "emoray.cli", "tune", *args]


def _table(exp: Path) -> pd.DataFrame | None:
    try:
        return trials_table(exp, "train_loss", "min")
    except Exception:             # no experiment state saved yet, or being written
        return None


def _finished(exp: Path) -> int:
    df = _table(exp)
    return 0 if df is None else int((df["status"] == "TERMINATED").sum())


def _trial_dirs(work: Path) -> set[str]:
    return {p.name for p in work.iterdir() if p.is_dir() and p.name != "base"
            and not p.name.startswith("best")} if work.is_dir() else set()


def _checkpoints(work: Path, trial: str) -> list[str]:
    return sorted(p.name for p in (work / trial / "fusion").glob("checkpoint_*"))


def test_campaign_killed_resumed_reported_promoted(ray_cluster, eav_features, tmp_path,
                                                   capsys, monkeypatch):
    from emoray.predict import EEGInput, Predictor, SpeechInput

    address = ray_cluster.get_runtime_context().gcs_address      # RAY.md trap 8
    storage = tmp_path / "tune"
    exp, work = storage / NAME, storage / NAME / "trials"
    start = _cli("--config", CAMPAIGN, str(eav_features / "feat"), "--storage", str(storage),
                 "--address", address, "--concurrency", "1", "--samples", "3",
                 "--set", "tune.metric=train_loss", "--set", "tune.mode=min",
                 "--set", f"tune.space={SPACE}",
                 "--set", f"tune.points_to_evaluate=[{_flow(GOOD)}, {_flow(BAD)}]")
    log1 = tmp_path / "run1.log"
    with open(log1, "w") as f:
        driver = subprocess.Popen(start, cwd=REPO, env=_env(), stdout=f,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: _finished(exp) >= 2 and len(_trial_dirs(work)) >= 3, 300,
                  "two finished trials and a third one training",
                  alive=lambda: driver.poll() is None,
                  poll=0.5, detail=lambda: log1.read_text()[-4000:])
        os.killpg(driver.pid, signal.SIGKILL)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    # the console: a line per trial start and end, Tune's tables and Optuna's lines in the log
    console = log1.read_text().splitlines()
    assert console[0] == f"logs: {exp / 'logs' / 'ray.log'}", console[:3]
    assert sum(" done after " in line for line in console) >= 2, console
    assert sum(line.startswith("tune: trial ") and " started: " in line and " lr=" in line
               for line in console) >= 3, console
    assert not any("│" in line or "Trial status" in line or "A new study" in line
                   for line in console), console
    before = _table(exp)
    done = before[before["status"] == "TERMINATED"]
    assert len(done) == 2 and before["status"].ne("TERMINATED").sum() >= 1, before
    kept = {t: _checkpoints(work, t) for t in done["trial_id"]}
    # the point with lr=1.0 diverged in its first epoch: ASHA stopped it at the first rung
    bad = done[np.isclose(done["stages.fusion.lr"], 1.0)]
    assert len(bad) == 1 and bool(bad["stopped_early"].iloc[0]), done
    assert int(bad["iterations"].iloc[0]) == 1

    # the dead driver's trials die with its job; wait for their CPUs before resuming
    free = ray_cluster.cluster_resources()["CPU"]
    wait_for(lambda: ray_cluster.available_resources().get("CPU", 0) >= free - 1e-6, 60,
              "the killed campaign's CPUs to be freed")
    second = subprocess.run(_cli("--resume", NAME, "--storage", str(storage),
                                 "--address", address),
                            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    assert f"tune: resuming campaign {NAME}" in second.stdout

    after = trials_table(exp, "train_loss", "min")
    assert len(after) == 3 and set(after["status"]) == {"TERMINATED"}, after
    for trial, names in kept.items():             # finished trials were kept, not re-run
        row = after[after["trial_id"] == trial].iloc[0]
        old = done[done["trial_id"] == trial].iloc[0]
        assert row["iterations"] == old["iterations"]
        assert row["train_loss"] == pytest.approx(old["train_loss"])
        assert _checkpoints(work, trial) == names

    # the report: every trial in the printed table, the CSV and the Parquet file; 4 plots
    # (in-process: the same command line, without another interpreter start-up)
    capsys.readouterr()
    code = main(["tune", "report", NAME, "--storage", str(storage)])
    printed = capsys.readouterr()
    assert code == 0, printed.out[-3000:] + printed.err[-3000:]
    for trial in after["trial_id"]:
        assert trial in printed.out
    csv = pd.read_csv(exp / "report" / "trials.csv")
    table = pq.read_table(exp / "report" / "trials.parquet").to_pandas()
    assert sorted(csv["trial_id"]) == sorted(table["trial_id"]) == sorted(after["trial_id"])
    for name in ("history", "importance", "slices", "parallel"):
        with Image.open(exp / "report" / f"{name}.png") as img:
            assert img.size[0] > 100 and img.size[1] > 100

    # the same name again is refused before any trial (the campaign is there to resume)
    cfg = resolve_campaign(CAMPAIGN, {"train.features": str(eav_features / "feat"),
                                      "tune.storage": str(storage)}, [])
    with pytest.raises(ConfigError, match=rf"already exists.*emoray tune --resume {NAME}"):
        prepare(cfg)
    assert len(trials_table(exp, "train_loss", "min")) == 3

    # the promoted bundle: the trial with the lowest last-reported loss; it predicts
    best = exp / "best"
    info = json.loads((best / "campaign.json").read_text())
    winner = after.loc[after["train_loss"].idxmin()]
    assert info["trial_id"] == winner["trial_id"]
    assert info["value"] == pytest.approx(winner["train_loss"])
    assert json.loads((best / "bundle.json").read_text())["stage"] == "fusion"
    predictor = Predictor.from_bundle(best, device="cpu")
    rec = pq.read_table(shard_files(eav_features / "rec"))
    i = rec.column("audio").is_valid().to_pylist().index(True)
    raw = rec.slice(i, 1).to_pylist()[0]
    names = read_metadata(eav_features / "rec")["dataset"]["eeg_channels"]
    pred = predictor.predict(
        eeg=EEGInput(unflatten(raw["eeg"], raw["eeg_shape"]), raw["eeg_sfreq"], list(names)),
        speech=SpeechInput(np.asarray(raw["audio"], np.float32), raw["audio_rate"]))
    probs = np.array(list(pred.probabilities.values()))
    assert probs.sum() == pytest.approx(1.0, abs=1e-5) and pred.label in pred.probabilities
    assert pred.modalities == ["eeg", "speech"]

    # MLflow (the default store beside the campaigns): the campaign is a run, each trial a
    # run nested under it; the killed driver's unfinished trial run was marked KILLED and
    # Tune re-ran that trial as a new run
    from mlflow.tracking import MlflowClient

    from emoray.serving.model import resolve_checkpoint

    recorded = json.loads((exp / "campaign.json").read_text())["mlflow"]
    assert recorded["uri"] == f"sqlite:///{storage.resolve() / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=recorded["uri"])
    campaign = client.get_run(recorded["run_id"])
    assert campaign.info.run_name == f"tune {NAME}" and campaign.info.status == "FINISHED"
    assert campaign.data.params["tune.metric"] == "train_loss"
    assert campaign.data.metrics["best_train_loss"] == pytest.approx(info["value"])
    assert campaign.data.metrics["trials_terminated"] == 3
    trials = client.search_runs([campaign.info.experiment_id],
                                f"tags.`mlflow.parentRunId` = '{campaign.info.run_id}'")
    finished = [r for r in trials if r.info.status == "FINISHED"]
    assert len(finished) == 3, [(r.info.run_name, r.info.status) for r in trials]
    assert {r.info.status for r in trials if r not in finished} <= {"KILLED"}
    assert len(trials) <= 4
    for _, trial in after.iterrows():       # one report per epoch, step training_iteration
        run = next(r for r in finished if trial["trial_id"] in r.data.tags["trial_name"])
        assert float(run.data.params["stages.fusion.lr"]) == pytest.approx(
            trial["stages.fusion.lr"])
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id,
                                                                 "train_loss"))
        assert steps[-1] == trial["iterations"] and len(set(steps)) == len(steps)
        if trial["trial_id"] in kept:         # finished before the kill: every epoch here
            assert steps == list(range(1, int(trial["iterations"]) + 1))
        assert run.data.metrics["train_loss"] == pytest.approx(trial["train_loss"])
    files = {a.path for a in client.list_artifacts(campaign.info.run_id)}
    assert {"bundle", "report", "campaign.yaml", "campaign.json"} <= files
    assert "report/history.png" in {a.path for a in client.list_artifacts(
        campaign.info.run_id, "report")}
    # the promoted bundle serves straight from MLflow: runs:/<campaign run>/bundle
    monkeypatch.setenv("MLFLOW_TRACKING_URI", recorded["uri"])
    local = resolve_checkpoint(f"runs:/{campaign.info.run_id}/bundle", tmp_path / "mlflow")
    assert (local / "model.pt").read_bytes() == (best / "model.pt").read_bytes()
    assert not (local / "train_state.pt").exists()
