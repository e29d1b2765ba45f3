"""Campaign configs without Ray: the search space against the plan's fields, the metric,
the resource budget, the shipped campaign files, and storage paths (folder and URI)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from ray import tune

from emoray import storage
from emoray.cli import main
from emoray.errors import ConfigError
from emoray.tune.campaign import budget, resolve_campaign, shape
from emoray.tune.space import apply, tune_space

REPO = Path(__file__).resolve().parents[2]
CCA = str(REPO / "configs" / "tune" / "cca-tiny.yaml")


def _cfg(*overrides: str, config: str = CCA):
    return resolve_campaign(config, {}, list(overrides))


def _error(*overrides: str, config: str = CCA) -> str:
    with pytest.raises(ConfigError) as err:
        shape(_cfg(*overrides, config=config))
    return str(err.value)


@pytest.mark.parametrize("name", ["cca", "cca-tiny", "fusion", "fusion-tiny"])
def test_shipped_campaigns_load_and_map_onto_their_plans(name):
    cfg = _cfg(config=str(REPO / "configs" / "tune" / f"{name}.yaml"))
    s = shape(cfg)
    assert cfg.tune.name == name
    stage = "inter" if name.startswith("cca") else "fusion"
    assert s["tuned"] == stage and s["chain"] == [stage]
    assert s["prefix"] == (["intra"] if stage == "inter" else [])
    assert s["suffix"] == (["classifier"] if stage == "inter" else [])
    assert s["max_t"] == s["stages"][stage].epochs
    for key in cfg.tune.space:       # every key is a field of the tuned stage
        assert key.split(".")[2] in type(s["stages"][stage]).model_fields


def test_the_campaign_file_overlays_its_plan():
    cfg = _cfg()
    # jmml-tiny.yaml gives 2 workers; cca-tiny.yaml lowers the tuned stage to 1
    assert cfg.train.stages["intra"].num_workers == 2
    assert cfg.train.stages["inter"].num_workers == 1
    assert cfg.train.stages["inter"].k == 4 and cfg.ray.num_cpus == 2
    with pytest.raises(ConfigError, match="tune.plan: the training plan nowhere.yaml"):
        _cfg("tune.plan=nowhere.yaml")


def test_space_becomes_tune_distributions_and_samples_map_onto_fields():
    cfg = _cfg("tune.space={stages.inter.k: {type: int, low: 2, high: 6}, "
               "stages.inter.alpha: {type: float, low: 0.001, high: 1.0, log: true}, "
               "stages.inter.top_o: {type: choice, values: [null, 1, 2]}, "
               "stages.inter.dropout: {type: float, low: 0.0, high: 0.5, step: 0.1}}")
    stages = shape(cfg)["stages"]
    space = tune_space(cfg.tune.space)
    assert isinstance(space["stages.inter.k"], tune.search.sample.Integer)
    assert isinstance(space["stages.inter.alpha"].get_sampler(), tune.search.sample.LogUniform)
    assert space["stages.inter.top_o"].categories == [None, 1, 2]
    seen_k = set()
    for seed in range(40):
        params = {k: d.sample(random_state=seed) for k, d in space.items()}
        out = apply(stages, params)["inter"]
        assert (out.k, out.alpha, out.top_o) == (params["stages.inter.k"],
                                                 params["stages.inter.alpha"],
                                                 params["stages.inter.top_o"])
        assert 2 <= out.k <= 6 and 1e-3 <= out.alpha <= 1.0
        assert math.isclose(out.dropout * 10, round(out.dropout * 10), abs_tol=1e-9)
        assert out.lr == stages["inter"].lr           # fields outside the space: the plan's
        seen_k.add(out.k)
    assert seen_k == {2, 3, 4, 5, 6}                  # the int range includes its high end


def test_bad_spaces_fail_naming_the_key():
    msg = _error("tune.space={stages.inter.kk: {type: int, low: 2, high: 4}}")
    assert "tune.space.stages.inter.kk: names no config field" in msg
    assert "did you mean stages.inter.k?" in msg
    msg = _error("tune.space={model.fusion.dim: {type: int, low: 2, high: 4}}")
    assert "expected a plan field 'stages.<stage>.<field>'" in msg
    msg = _error("tune.space={stages.fusion.dim: {type: int, low: 2, high: 4}}")
    assert "the plan has no stage 'fusion'" in msg
    msg = _error("tune.space={stages.inter.dropout: {type: float, low: 0.1, high: 1.5}}")
    assert "stages.inter.dropout" in msg and "1.5" in msg and "less than 1" in msg
    msg = _error("tune.space={stages.inter.pairing: {type: float, low: 0.1, high: 0.2}}")
    assert "takes str" in msg and "use type choice" in msg
    msg = _error("tune.space={stages.inter.pairing: {type: choice, values: [natural, odd]}}")
    assert "'odd'" in msg
    # every corner must be a valid plan: top_o <= k
    msg = _error("tune.space={stages.inter.top_o: {type: int, low: 1, high: 4}, "
                 "stages.inter.k: {type: int, low: 2, high: 4}}")
    assert "corner" in msg and "top_o (4) must be <= k (2)" in msg
    # batch_size 8 of the tiny plan bounds k (DCCA needs batch > k + 1)
    assert "must exceed k + 1" in _error(
        "tune.space={stages.inter.k: {type: int, low: 2, high: 40}}")
    with pytest.raises(ConfigError, match="expected low < high"):
        _cfg("tune.space={stages.inter.k: {type: int, low: 6, high: 2}}")
    with pytest.raises(ConfigError, match="a log range needs low > 0"):
        _cfg("tune.space={stages.inter.alpha: {type: float, low: 0, high: 1, log: true}}")
    assert "tune.space: empty" in _error("tune.space={}")


def test_metric_stage_and_points_are_checked_against_the_plan():
    msg = _error("tune.metric=val_acc_fused")
    assert "does not report 'val_acc_fused'" in msg and "val_f1_speech_only" in msg
    assert "no stage 'fusion'" in _error("tune.stage=fusion")
    # a space over intra and inter: the trial runs both, nothing is shared before them
    s = shape(_cfg("tune.space={stages.intra.lr: {type: float, low: 0.001, high: 0.1}, "
                   "stages.inter.k: {type: int, low: 2, high: 4}}"))
    assert (s["chain"], s["prefix"], s["suffix"]) == (["intra", "inter"], [], ["classifier"])
    # tuning intra: a space over inter is outside the trial
    assert "not run by a trial tuning 'intra'" in _error(
        "tune.stage=intra", "tune.metric=val_f1")
    msg = _error("tune.points_to_evaluate=[{stages.inter.k: 3}]")
    assert "tune.points_to_evaluate[0]: expected the keys" in msg
    point = "{stages.inter.k: 9, stages.inter.alpha: 0.1, stages.inter.gamma: 0.1, " \
            "stages.inter.lr: 0.001}"
    assert "must exceed k + 1" in _error(f"tune.points_to_evaluate=[{point}]")


def test_budget_fits_trials_beside_ray_data_or_refuses():
    cfg = _cfg()
    s = shape(cfg)
    conc, note = budget(cfg, s["stages"], s["chain"], {"CPU": 2.0})
    assert conc == 2 and "0.35 CPUs" in note            # 0.1 + 1 worker x 0.25; 1 for data
    cfg = _cfg("tune.max_concurrent=8", "tune.num_samples=20")
    assert budget(cfg, s["stages"], s["chain"], {"CPU": 2.0})[0] == 2
    conc, note = budget(cfg, s["stages"], s["chain"], {"CPU": 16.0})
    assert conc == 8 and "lowered" not in note
    cfg = _cfg("tune.max_concurrent=8", "tune.num_samples=3")
    assert budget(cfg, s["stages"], s["chain"], {"CPU": 16.0})[0] == 3
    cfg = _cfg("train.stages.inter.num_workers=4", "train.stages.inter.cpus_per_worker=0.5")
    s = shape(cfg)
    with pytest.raises(ConfigError, match=r"one trial needs 2.1 CPUs .* the cluster has 2 CPUs"):
        budget(cfg, s["stages"], s["chain"], {"CPU": 2.0})
    cfg = _cfg("train.stages.inter.use_gpu=true")
    s = shape(cfg)
    with pytest.raises(ConfigError, match="needs 1 GPUs"):
        budget(cfg, s["stages"], s["chain"], {"CPU": 8.0})
    assert budget(cfg, s["stages"], s["chain"], {"CPU": 8.0, "GPU": 1.0})[0] == 1
    # an autoscaling cluster: budget against what it can grow to
    cfg = _cfg("tune.cluster_cpus=32")
    s = shape(cfg)
    assert budget(cfg, s["stages"], s["chain"], {"CPU": 0.0})[0] == 2


def test_cli_rejects_a_bad_campaign_before_ray_starts(tmp_path, capsys):
    code = main(["tune", "--config", CCA, str(tmp_path), "--set",
                 "tune.space={stages.inter.kk: {type: int, low: 2, high: 4}}"])
    err = capsys.readouterr().err
    assert code == 2 and "names no config field" in err and "Traceback" not in err
    assert main(["tune", "--config", CCA, str(tmp_path)]) == 2
    assert "holds no shards" in capsys.readouterr().err      # not a preprocess output
    assert main(["tune", "--config", CCA]) == 2
    assert "tune needs a FEATURES folder" in capsys.readouterr().err
    assert main(["tune"]) == 2 and "needs --config" in capsys.readouterr().err
    assert main(["tune", "--resume", "nothing", "--storage", str(tmp_path)]) == 2
    assert "no campaign 'nothing'" in capsys.readouterr().err
    assert main(["tune", "report", "nothing", "--storage", str(tmp_path)]) == 2
    assert "nothing" in capsys.readouterr().err


def test_job_entrypoint_is_the_tune_command(tmp_path):
    res = subprocess.run([sys.executable, str(REPO / "jobs" / "tune.py"), "--resume",
                          "gone", "--storage", str(tmp_path)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and "emoray tune: error: tune: no campaign 'gone'" in res.stderr


@pytest.mark.parametrize("uri", [False, True])
def test_storage_round_trip_folder_and_uri(tmp_path, uri):
    base = f"file://{tmp_path}/store" if uri else str(tmp_path / "store")
    path = storage.join(base, "camp", "campaign.json")
    assert storage.read_text(path) is None
    storage.write_text(path, json.dumps({"a": 1}))
    assert json.loads(storage.read_text(path)) == {"a": 1}
    src = tmp_path / "bundle"
    (src / "sub").mkdir(parents=True)
    (src / "model.pt").write_bytes(b"weights")
    (src / "sub" / "x.json").write_text("{}")
    dest = storage.join(base, "camp", "best")
    storage.put_dir(src, dest)
    (src / "model.pt").write_bytes(b"newer")
    storage.put_dir(src, dest)                 # replaces, never mixes
    local = storage.fetch_dir(dest, tmp_path / "cache")
    assert (local / "model.pt").read_bytes() == b"newer"
    assert (local / "sub" / "x.json").read_text() == "{}"
    assert (tmp_path / "store" / "camp" / "best" / "model.pt").read_bytes() == b"newer"
    with pytest.raises(ConfigError, match="no such folder|not a folder"):
        storage.fetch_dir(storage.join(base, "missing"))
