"""`emoray train` in-process on real local Ray: a tiny fusion plan writes its run folder
(config, plan state, bundle, PNG plots); a second identical call skips the finished stage;
config mistakes exit 2 with one line naming the field, before anything starts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from emoray.cli import main
from emoray.config import resolve
from emoray.train import read_bundle_meta
from emoray.train.curves import read_history, val_confusion

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "train" / "fusion-tiny.yaml")


@pytest.fixture(scope="module")
def features(eav_features):
    return eav_features / "feat"


@pytest.fixture(scope="module")
def first_run(features, tmp_path_factory):
    """One `emoray train` call; returns (run folder, stdout, seconds)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "15")
    root = tmp_path_factory.mktemp("trainruns")
    try:
        t0 = time.perf_counter()
        code = main(["train", "--config", TINY, str(features), "--name", "smoke",
                     "--out", str(root)])
        seconds = time.perf_counter() - t0
    finally:
        mp.undo()
    assert code == 0
    return root / "smoke", seconds


def test_train_writes_the_run_folder(first_run, features):
    folder, _ = first_run
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    assert set(saved) == {"ray", "train"}
    assert saved["train"]["name"] == "smoke" and saved["train"]["features"] == str(features)
    assert saved["train"]["stages"]["fusion"]["epochs"] == 2
    assert resolve(folder / "config.yaml").train.stages["fusion"].dim == 32   # reloads

    state = json.loads((folder / "plan_state.json").read_text())
    entry = state["stages"]["fusion"]
    assert entry["status"] == "finished" and entry["epoch"] == 1
    bundle = Path(entry["bundle"])
    assert bundle.parent == folder.resolve() / "fusion"      # Ray run <folder>/fusion
    meta = read_bundle_meta(bundle)
    assert meta["stage"] == "fusion" and meta["metrics"]["epoch"] == 1
    assert entry["metrics"]["val_n"] == entry["n_val"] > 0

    # the driver-side confusion matrix scores the same val rows as the workers did
    conf, names = val_confusion(bundle, features)["label"]
    assert conf.shape == (len(names), len(names)) and conf.sum() == entry["n_val"]
    assert conf.trace() / conf.sum() == pytest.approx(meta["metrics"]["val_acc"], abs=1e-6)

    history = read_history(bundle)
    assert [h["epoch"] for h in history] == [0, 1]
    for name in ("fusion_curves.png", "fusion_confusion.png"):
        png = folder / name
        assert str(png.resolve()) in entry["curves"]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000


def test_second_call_skips_the_finished_stage(first_run, features, capsys):
    folder, first_seconds = first_run
    before = sorted(p.name for p in (folder / "fusion").glob("checkpoint_*"))
    t0 = time.perf_counter()
    code = main(["train", "--config", TINY, str(features), "--name", "smoke",
                 "--out", str(folder.parent)])
    seconds = time.perf_counter() - t0
    out = capsys.readouterr().out
    assert code == 0
    assert "stage fusion already finished: " in out and "skipped" in out
    assert "bundle: " + json.loads((folder / "plan_state.json").read_text())[
        "stages"]["fusion"]["bundle"] in out
    assert sorted(p.name for p in (folder / "fusion").glob("checkpoint_*")) == before
    assert seconds < min(10.0, first_seconds / 2)                   # no training ran


def test_config_mistakes_exit_2_with_one_line(features, tmp_path, capsys):
    base = ["train", "--config", TINY, str(features), "--out", str(tmp_path)]
    assert main(base + ["--set", "train.stages.intro.epochs=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "unknown stage 'intro'" in err
    assert "valid stages: ['intra', 'inter', 'classifier', 'fusion']" in err

    assert main(base + ["--set", "train.stages.inter.k=4"]) == 2      # inter needs intra
    assert "starts from the intra stage's bundle" in capsys.readouterr().err

    assert main(base + ["--set", "train.stages.fusion.epochs=many"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "fusion.epochs" in err and "'many'" in err and "integer" in err

    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stages:\n    fusion: {epochs: 1}\n    jmml: {}\n")
    assert main(["train", "--config", str(bad), str(features), "--out", str(tmp_path)]) == 2
    assert "unknown stage 'jmml'" in capsys.readouterr().err

    assert main(["train", "--config", TINY, str(tmp_path / "nowhere"),
                 "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("emoray train: error:")
    assert list(tmp_path.iterdir()) == [bad]                          # nothing was started
