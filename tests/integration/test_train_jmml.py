"""The JMML plan (intra -> inter -> classifier) on real local Ray Train: bundles that feed
each other, the ablation metrics, a servable classifier bundle (speech-only path), the
driver-side evaluation reproducing the workers' scores, non-parallel label pairing, and
bad input caught before any worker starts."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from emoray.config import resolve
from emoray.data.shards import shard_files
from emoray.errors import ConfigError, DataError
from emoray.models.jmml_model import JMMLModel
from emoray.bundle import load_bundle, read_bundle_meta
from emoray.train.curves import val_batches
from emoray.data.features import batch_to_tensors, feature_metadata
from emoray.train.evaluate import evaluate_bundle
from emoray.train.stages.jmml_classifier import train_classifier
from emoray.train.stages.jmml_inter import train_inter
from emoray.train.plan import plan_stages, run_plan

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def features(eav_features):
    return eav_features / "feat"


# jmml_run: the session fixture in conftest.py (the Serve tests serve its classifier)


def test_plan_runs_three_stages_each_feeding_the_next(jmml_run):
    result, _ = jmml_run
    stages = result["stages"]
    assert list(stages) == ["intra", "inter", "classifier"]
    metas = {s: read_bundle_meta(r["bundle"]) for s, r in stages.items()}
    assert [m["stage"] for m in metas.values()] == ["intra", "inter", "classifier"]
    assert metas["intra"]["model_config"]["cae"] is None
    assert metas["inter"]["model_config"]["cae"]["k"] == 4
    assert metas["classifier"]["model_config"]["classifiers"] == \
        ["speech_only", "eeg_only", "combined"]
    assert metas["classifier"]["targets"] == ["valence", "arousal"]
    # the inter stage started from the intra encoders: identical frozen weights
    w = {s: torch.load(Path(r["bundle"]) / "model.pt", weights_only=True)
         for s, r in stages.items()}
    key = "encoders.speech.mlp.stem.0.weight"
    assert torch.equal(w["intra"][key], w["inter"][key])
    assert torch.equal(w["inter"][key], w["classifier"][key])
    state = json.loads((Path(result["run_dir"]) / "plan_state.json").read_text())
    assert all(state["stages"][s]["status"] == "finished" for s in stages)
    for name in ("intra_curves.png", "inter_curves.png", "classifier_confusion_valence.png"):
        assert (Path(result["run_dir"]) / name).stat().st_size > 1000


def test_a_runs_results_read_back_from_its_folder_as_it_returned_them(jmml_run):
    """What the quickstart prints for a run its evaluation's pool trained: the stages in
    plan order with the bundles and metrics run_plan returned."""
    from emoray.train.plan import format_summary, run_results

    result, _ = jmml_run
    back = run_results(result["run_dir"])
    assert list(back["stages"]) == list(result["stages"]) == ["intra", "inter", "classifier"]
    for stage, r in result["stages"].items():
        assert back["stages"][stage]["bundle"] == r["bundle"]
        assert back["stages"][stage]["metrics"] == r["metrics"]
        assert back["stages"][stage]["seconds"] > 0
    # the same lines, up to the order of the metrics and the seconds (kept to 0.01 s)
    lines = lambda r: [sorted(re.sub(r", [\d.]+ s\)", "", ln).split())  # noqa: E731
                       for ln in format_summary(r).splitlines()]
    assert lines(back) == lines(result)


def test_each_stage_is_an_mlflow_run_nested_under_the_plan_run(jmml_run):
    """Read back through MLflow's client from the default store beside the run folder."""
    from mlflow.tracking import MlflowClient

    result, _ = jmml_run
    folder = Path(result["run_dir"])
    client = MlflowClient(tracking_uri=f"sqlite:///{folder.parent / 'mlflow.db'}")
    plan = client.get_run(result["mlflow_run_id"])
    assert plan.info.run_name == "train tiny" and plan.info.status == "FINISHED"
    assert plan.data.params["train.name"] == "tiny"
    assert plan.data.params["train.stages.inter.k"] == "4"                 # the resolved plan
    assert {a.path for a in client.list_artifacts(plan.info.run_id)} >= {"config.yaml",
                                                                        "plan_state.json"}
    children = client.search_runs([plan.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{plan.info.run_id}'")
    runs = {r.info.run_name: r for r in children}
    assert sorted(runs) == ["classifier", "inter", "intra"] and len(children) == 3
    state = json.loads((folder / "plan_state.json").read_text())
    cfg = resolve(folder / "config.yaml")
    for name, run in runs.items():
        assert run.info.status == "FINISHED"
        assert state["stages"][name]["mlflow_run_id"] == run.info.run_id
        assert run.data.params["stage"] == name
        assert run.data.params["epochs"] == str(cfg.train.stages[name].epochs)
        # one point per epoch, the last one the stage's final metrics
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "epoch"))
        assert steps == list(range(cfg.train.stages[name].epochs))
        final = {k: v for k, v in result["stages"][name]["metrics"].items()
                 if isinstance(v, float) and v == v}
        assert len(final) > 3
        for k, v in final.items():
            assert run.data.metrics[k] == pytest.approx(v, rel=1e-6), (name, k)
        files = {a.path for a in client.list_artifacts(run.info.run_id, "bundle")}
        assert {"bundle/bundle.json", "bundle/model.pt"} <= files
        assert "bundle/train_state.pt" not in files                   # no optimizer state
        plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert f"plots/{name}_curves.png" in plots


def test_metrics_hold_the_ablation_and_the_pairing(jmml_run):
    stages = jmml_run[0]["stages"]
    intra = stages["intra"]["metrics"]
    assert intra["epoch"] == 2 and 0 <= intra["val_f1_speech_valence"] <= 1
    inter = stages["inter"]["metrics"]
    assert inter["pairing"] == "natural"                 # EAV is parallel
    assert inter["train_corr"] > 0
    # steps, not just epochs: each epoch's optimiser steps add up (intra ran 3 epochs)
    assert intra["steps"] > intra["train_steps"] > 0
    assert inter["steps"] >= inter["train_steps"] > 0
    clf = stages["classifier"]["metrics"]
    for rep in ("raw_speech", "jec_speech", "speech_only", "raw_eeg", "jec_eeg", "eeg_only",
                "combined"):
        for target in ("valence", "arousal"):
            assert 0.0 <= clf[f"val_f1_{rep}_{target}"] <= 1.0
    # listening trials have no speech: fewer speech-scored rows than EEG-scored rows
    assert 0 < clf["val_n_speech_only_valence"] < clf["val_n_eeg_only_valence"]


def test_classifier_bundle_serves_speech_alone(jmml_run, features):
    bundle = jmml_run[0]["stages"]["classifier"]["bundle"]
    meta = feature_metadata(features)
    model, info = load_bundle(bundle, feature_meta=meta)
    assert isinstance(model, JMMLModel) and not model.training
    batch = next(val_batches(features, ["audio_stats", "eeg_de"], max_rows=None))
    t = batch_to_tensors(batch, meta)
    speech_rows = t["speech_present"]
    alone = model.predict({"audio_stats": t["audio_stats"][speech_rows]})
    assert set(alone["path"]) == {"speech_only"}
    p = alone["probs"]["valence"]
    assert torch.allclose(p.sum(1), torch.ones(len(p)))


def test_driver_side_evaluation_reproduces_the_worker_scores(jmml_run, features):
    stage = jmml_run[0]["stages"]["classifier"]
    scored = evaluate_bundle(stage["bundle"], features)["metrics"]
    for key in ("val_f1_speech_only_valence", "val_f1_eeg_only_arousal",
                "val_n_combined_valence"):
        assert scored[key] == pytest.approx(stage["metrics"][key], abs=1e-6)


def test_rerun_skips_every_finished_stage(jmml_run, features):
    result, _ = jmml_run
    cfg = resolve(Path(result["run_dir"]) / "config.yaml")
    lines: list[str] = []
    t0 = time.perf_counter()
    again = run_plan(cfg, echo=lines.append)
    assert {r["status"] for r in again["stages"].values()} == {"skipped"}
    assert time.perf_counter() - t0 < 30


def _nonparallel_copy(features: Path, out: Path) -> Path:
    """The feature shards with speech removed from even and EEG from odd records."""
    shards = out / "shards"
    shards.mkdir(parents=True)
    for f in shard_files(features):
        table = pq.read_table(f)
        even = pa.array([i % 2 == 0 for i in range(table.num_rows)])
        for col, rows in (("audio_stats", even), ("eeg_de", pa.compute.invert(even))):
            i = table.schema.get_field_index(col)
            nulls = pa.nulls(table.num_rows, table.schema.field(i).type)
            table = table.set_column(i, table.schema.field(i),
                                     pa.compute.if_else(rows, nulls, table[col]))
        pq.write_table(table, shards / f.name)
    for extra in features.iterdir():
        if extra.is_file():
            (out / extra.name).write_bytes(extra.read_bytes())
    return out


def test_nonparallel_data_pairs_by_label(jmml_run, features, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "15")
    split_feats = _nonparallel_copy(features, tmp_path / "nonparallel")
    # few speech records survive (listening trials have none): one worker, small k
    fast = dict(epochs=1, batch_size=6, k=2, hidden=16, num_workers=1, cpus_per_worker=0.25,
                max_failures=0, controller_failure_limit=0, materialize=True)
    intra = jmml_run[0]["stages"]["intra"]["bundle"]
    inter = train_inter(split_feats, tmp_path / "runs", fast, init=intra)
    assert inter["metrics"]["pairing"] == "label"
    assert inter["metrics"]["n_pairs"] > 0
    clf = train_classifier(split_feats, tmp_path / "runs",
                           dict(num_workers=1, cpus_per_worker=0.25, max_failures=0,
                                controller_failure_limit=0), init=inter["checkpoint"])
    assert clf["metrics"]["paths"] == "speech_only,eeg_only"        # no record has both
    assert "val_f1_combined_valence" not in clf["metrics"]
    model, _ = load_bundle(clf["checkpoint"])
    both = model.predict({"audio_stats": torch.randn(2, 265), "eeg_de": torch.randn(2, 30, 5)})
    assert both["path"] == ["combined"] * 2                          # mean of the two paths


def test_bad_plans_fail_before_any_worker(jmml_run, features, tmp_path):
    t0 = time.perf_counter()
    base = {"train.features": str(features), "train.output": str(tmp_path)}
    with pytest.raises(ConfigError, match=r"train\.stages\.inter: starts from the intra"):
        plan_stages(resolve(None, base, ["train.stages.inter.k=4"]))
    with pytest.raises(ConfigError, match="unknown stage 'intro'"):
        resolve(None, base, ["train.stages.intro.epochs=1"])
    with pytest.raises(ConfigError, match=r"inter\.k: Input should be a valid integer"):
        resolve(None, base, ["train.stages.intra.epochs=1", "train.stages.inter.k=abc"])
    with pytest.raises(ConfigError, match=r"top_o \(9\) must be <= k \(4\)"):
        resolve(None, base, ["train.stages.inter.k=4", "train.stages.inter.top_o=9"])
    fusion_bundle_like = jmml_run[0]["stages"]["classifier"]["bundle"]
    with pytest.raises(ConfigError, match="is a 'classifier' bundle, expected intra"):
        train_inter(features, tmp_path / "r", {}, init=fusion_bundle_like)
    with pytest.raises(ConfigError, match="from_checkpoint"):
        train_classifier(features, tmp_path / "r", {})
    with pytest.raises(ConfigError, match=r"encoders\.speech: unknown preset 'huge'"):
        run_plan(resolve(None, base, ["train.stages.intra.encoders.speech=huge"]))
    # shards without valence labels
    novalence = tmp_path / "novalence"
    (novalence / "shards").mkdir(parents=True)
    for f in shard_files(features):
        table = pq.read_table(f)
        i = table.schema.get_field_index("valence_high")
        table = table.set_column(i, table.schema.field(i),
                                 pa.nulls(table.num_rows, table.schema.field(i).type))
        pq.write_table(table, novalence / "shards" / f.name)
    for extra in features.iterdir():
        if extra.is_file():
            (novalence / extra.name).write_bytes(extra.read_bytes())
    with pytest.raises(DataError, match=r"valence_high.*null in every shard"):
        run_plan(resolve(None, {**base, "train.features": str(novalence)},
                         ["train.stages.intra.epochs=1"]))
    assert not any(tmp_path.glob("**/checkpoint_*"))                 # nothing trained
    assert time.perf_counter() - t0 < 20


def test_evaluate_reuses_the_run_for_its_own_seed_and_writes_the_report(jmml_run, capsys):
    from emoray.cli import main

    run = jmml_run[0]["run_dir"]
    code = main(["evaluate", run, "--protocol", "within-subject", "--seeds", "0"])
    out = capsys.readouterr().out
    assert code == 0
    assert "## JMML ablation: macro-F1 per binary target" in out
    report = json.loads((Path(run) / "eval" / "within-subject" / "report.json").read_text())
    rows = {(r["modality"], r["method"]): r for r in report["jmml"]["rows"]}
    clf = jmml_run[0]["stages"]["classifier"]["metrics"]
    assert rows[("speech", "JMML")]["valence"]["mean"] == pytest.approx(
        clf["val_f1_speech_only_valence"])
    assert rows[("eeg", "raw features")]["arousal"]["n_seeds"] == 1
    assert report["units"][0]["run_dir"] == run                 # no re-training for seed 0
    # the evaluation is an MLflow run: its settings, the report's means and files
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{Path(run).parent / 'mlflow.db'}")
    found = client.search_runs([client.get_experiment_by_name("emoray").experiment_id],
                               "tags.`emoray.kind` = 'evaluation'")
    assert len(found) == 1 and found[0].info.status == "FINISHED"
    evaluation = found[0]
    assert evaluation.data.params["evaluate.protocol"] == "within-subject"
    assert evaluation.data.params["evaluate.seeds"] == "[0]"
    assert evaluation.data.metrics["speech_speech_only_valence_f1_mean"] == pytest.approx(
        rows[("speech", "JMML")]["valence"]["mean"])
    assert {a.path for a in client.list_artifacts(evaluation.info.run_id, "report")} == {
        "report/report.json", "report/report.md"}
    assert not (Path(run) / "eval" / "within-subject" / "seed0").exists()
    # a checkpoint is scored as it is; a protocol that re-trains needs the run
    bundle = jmml_run[0]["stages"]["classifier"]["bundle"]
    assert main(["evaluate", bundle]) == 0
    assert "val_f1_speech_only_valence" in capsys.readouterr().out
    assert main(["evaluate", bundle, "--protocol", "loso"]) == 2
    assert "need a run" in capsys.readouterr().err
