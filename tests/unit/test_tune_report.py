"""Campaign reports from a real, tiny Ray Tune experiment: a plain function trainable over a
dotted-key space under ASHA, six trials run one at a time so that some are stopped early,
one fails before reporting and one fails after two reports. Expectations come from Tune's
own ResultGrid, not from the report code."""

from __future__ import annotations

import json
import math
import shutil

import pandas as pd
import pytest
from PIL import Image

from emoray.errors import ConfigError
from emoray.tune.plots import param_importances
from emoray.tune.report import format_table, trials_table, write_report

pytestmark = pytest.mark.integration

MAX_T = 4
SPACE = {"stages.inter.k": {"type": "int", "low": 2, "high": 8},
         "stages.inter.alpha": {"type": "float", "low": 0.001, "high": 1.0, "log": True},
         "case": {"type": "choice", "values": [0, 1, 2, 3, 4, 5]}}


@pytest.fixture(scope="module")
def campaign(ray_cluster, tmp_path_factory):
    """``(EXP, {case: {"error", "values", "checkpoints", "config"}})`` of a finished run."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    def trainable(config):
        # case -> (level of val_f1, epoch at which it raises); ASHA (rungs at 1 and 2
        # iterations) stops the low ones, case 1 fails before any report, case 4 after two
        level, fail_at = {0: (0.5, None), 1: (0.4, 0), 2: (0.2, None), 3: (0.6, None),
                          4: (0.7, 2), 5: (0.1, None)}[config["case"]]
        for epoch in range(MAX_T):
            if epoch == fail_at:
                raise RuntimeError(f"case {config['case']} fails at epoch {epoch}")
            tune.report({"val_f1": level + 0.05 * epoch + 0.01 * config["stages.inter.alpha"],
                         "epoch": epoch, "checkpoint_path": f"ck/{config['case']}/{epoch}",
                         "pairing": "natural"})

    storage = tmp_path_factory.mktemp("tune")
    space = {"stages.inter.k": tune.randint(2, 9),
             "stages.inter.alpha": tune.loguniform(1e-3, 1),
             "case": tune.grid_search(SPACE["case"]["values"])}
    tuner = tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(
            metric="val_f1", mode="max", max_concurrent_trials=1,
            search_alg=BasicVariantGenerator(random_state=0),
            scheduler=ASHAScheduler(time_attr="training_iteration", max_t=MAX_T,
                                    grace_period=1, reduction_factor=2)),
        run_config=tune.RunConfig(name="camp", storage_path=str(storage), verbose=0))
    grid = tuner.fit()
    exp = storage / "camp"
    (exp / "campaign.json").write_text(json.dumps(
        {"name": "camp", "metric": "val_f1", "mode": "max", "max_t": MAX_T, "space": SPACE}))
    truth = {}
    for result in grid:
        hist = result.metrics_dataframe
        hist = hist if hist is not None else pd.DataFrame()
        truth[result.config["case"]] = {
            "error": result.error is not None, "config": result.config,
            "values": list(hist.get("val_f1", [])),
            "checkpoints": list(hist.get("checkpoint_path", []))}
    return exp, truth


def test_table_has_every_trial_with_what_it_reported(campaign):
    exp, truth = campaign
    df = trials_table(exp, "val_f1", "max")
    assert list(df["case"]) == sorted(truth)              # creation order (the grid's)
    assert df["trial_id"].is_unique
    for _, row in df.iterrows():
        want = truth[row["case"]]
        values = want["values"]
        assert (row["status"] == "ERROR") == want["error"]
        assert row["iterations"] == len(values)
        assert row["stopped_early"] == (not want["error"] and 0 < len(values) < MAX_T)
        assert row["stages.inter.k"] == want["config"]["stages.inter.k"]
        assert row["stages.inter.alpha"] == pytest.approx(want["config"]["stages.inter.alpha"])
        if values:
            assert row["val_f1"] == pytest.approx(values[-1])
            assert row["best_val_f1"] == pytest.approx(max(values))
            assert row["checkpoint"] == want["checkpoints"][-1]
            assert row["time_s"] >= 0
        else:                                             # failed before any report
            assert math.isnan(row["val_f1"]) and math.isnan(row["best_val_f1"])
            assert row["checkpoint"] == ""
        if want["error"]:
            assert f"case {row['case']} fails at epoch" in row["error"]
        else:
            assert row["error"] == ""
    # the experiment exercised what the table must show
    full = ~df["stopped_early"] & (df["status"] == "TERMINATED")
    assert df["stopped_early"].any() and full.any()
    assert (df["status"] == "ERROR").sum() == 2 and df["val_f1"].isna().sum() == 1

    low = trials_table(exp, "val_f1", "min")
    reported = [t for t in truth.values() if t["values"]]
    assert sorted(low["best_val_f1"].dropna()) == pytest.approx(
        sorted(min(t["values"]) for t in reported))


def test_report_writes_table_files_and_plots(campaign):
    exp, truth = campaign
    paths = write_report(exp)
    assert set(paths) == {"csv", "parquet", "history", "importance", "slices", "parallel"}
    assert all(p.parent == exp / "report" for p in paths.values())
    table = trials_table(exp, "val_f1", "max")
    for back in (pd.read_csv(paths["csv"]), pd.read_parquet(paths["parquet"])):
        assert list(back["trial_id"]) == list(table["trial_id"])
        assert list(back["status"]) == list(table["status"])
        assert list(back["stopped_early"]) == list(table["stopped_early"])
        pd.testing.assert_series_equal(back["best_val_f1"], table["best_val_f1"],
                                       check_dtype=False)
        assert "stages.inter.k" in back and "stages.inter.alpha" in back
    for key in ("history", "importance", "slices", "parallel"):
        with Image.open(paths[key]) as img:
            img.verify()
        with Image.open(paths[key]) as img:
            assert img.format == "PNG" and img.width > 100 and img.height > 100
    found, how = param_importances(table, "val_f1", "max", SPACE)
    assert found is not None and set(found) == set(SPACE), how      # not the fallback note
    assert sum(found.values()) == pytest.approx(1.0)
    few, why = param_importances(table.iloc[:1], "val_f1", "max", SPACE)
    assert few is None and "at least 2 finished trials" in why


def test_format_table_lists_trials_and_marks_the_best(campaign):
    exp, _ = campaign
    df = trials_table(exp, "val_f1", "max")
    text = format_table(df, "val_f1")
    for trial_id in df["trial_id"]:
        assert trial_id in text
    assert text.count("(early stop)") == int(df["stopped_early"].sum())
    for mode, pick in (("max", df["val_f1"].idxmax()), ("min", df["val_f1"].idxmin())):
        marked = [line for line in format_table(df, "val_f1", mode).splitlines()
                  if line.startswith("*")]
        assert len(marked) == 2 and df.at[pick, "trial_id"] in marked[0]
    assert text.count(" failed: RuntimeError: case ") == 2


def test_table_without_campaign_file_uses_the_trials(campaign, tmp_path):
    exp, _ = campaign
    bare = tmp_path / "camp"
    shutil.copytree(exp, bare, ignore=shutil.ignore_patterns("campaign.json", "report"))
    df = trials_table(bare, "val_f1", "max")                 # a moved copy reads the same
    want = trials_table(exp, "val_f1", "max")
    assert {"stages.inter.k", "stages.inter.alpha", "case"} <= set(df.columns)
    assert list(df["stopped_early"]) == list(want["stopped_early"])    # max_t from the data
    assert list(df["error"]) == list(want["error"])          # error.txt found in the copy
    with pytest.raises(ConfigError, match="expected campaign.json"):
        write_report(bare)


def test_bad_folders_and_arguments_raise_config_errors(campaign, tmp_path):
    exp, _ = campaign
    with pytest.raises(ConfigError, match="not a campaign folder"):
        write_report(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a campaign folder"):
        trials_table(tmp_path / "file", "val_f1", "max")
    with pytest.raises(ConfigError, match="expected campaign.json written by `emoray tune`"):
        write_report(tmp_path)
    (tmp_path / "campaign.json").write_text(json.dumps(
        {"metric": "val_f1", "mode": "max", "space": SPACE}))
    with pytest.raises(ConfigError, match="experiment_state"):
        write_report(tmp_path)
    (tmp_path / "campaign.json").write_text(json.dumps({"metric": "val_f1", "mode": "best"}))
    with pytest.raises(ConfigError, match="'mode'"):
        write_report(tmp_path)
    (tmp_path / "campaign.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        write_report(tmp_path)
    with pytest.raises(ConfigError, match="local folder"):
        write_report("s3://bucket/campaigns/camp")
    with pytest.raises(ConfigError, match="reports 'val_acc'.*val_f1"):
        trials_table(exp, "val_acc", "max")
    with pytest.raises(ConfigError, match="mode"):
        trials_table(exp, "val_f1", "best")
