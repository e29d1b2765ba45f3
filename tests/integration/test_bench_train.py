"""`emoray bench train` on real local Ray: a quick run over the shared tiny feature set
writes train.json whose figures are consistent (both sides train every train row of the
same within-subject split each epoch; thread counts match); bad inputs fail before Ray
work. Speed is not asserted."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest

from benchmarks.train import TARGET, run_benchmark
from emoray.data.shards import shard_files
from emoray.errors import ConfigError, DataError
from emoray.train.split import within_subject_split

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def quick_result(eav_features, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "30")
    out = tmp_path_factory.mktemp("bench")
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            figures = run_benchmark(quick=True, out_dir=out, features=eav_features / "feat")
    finally:
        mp.undo()
    return figures, out / "train.json", printed.getvalue()


def test_quick_run_writes_consistent_figures(quick_result, eav_features):
    figures, path, _ = quick_result
    data = json.loads(path.read_text())
    assert data["name"] == "train" and data["target"] == TARGET
    assert math.isfinite(data["ratio"]) and data["ratio"] > 0
    assert data["machine"]["cpus"] >= 1
    details = data["details"]
    n_train = len(within_subject_split(shard_files(eav_features / "feat"))[0])
    assert details["n_train"] == n_train > 0 and details["epochs"] == 2
    runs = details["runs"]
    two = runs["ray_2w"]           # quick: the headline run only (no 1-worker run)
    plain = runs[two["compared_with"]]
    assert set(runs) == {"ray_2w", two["compared_with"]}
    for key, run in runs.items():
        # every epoch trains the train rows once, on both sides (global over Ray ranks;
        # Ray's equal split of the train set drops at most workers - 1 rows)
        assert len(run["epoch_samples"]) == 2, key
        assert all(n_train - run["workers"] < n <= n_train for n in run["epoch_samples"]), key
        assert all(s > 0 for s in run["epoch_seconds"]), key
        assert run["samples_per_s"] > 0 and run["wall_s"] >= sum(run["epoch_seconds"])
        # steady state = the epochs after the first (here only the second)
        rate = run["epoch_samples"][1] / run["epoch_seconds"][1]
        assert run["samples_per_s"] == pytest.approx(rate)
        assert run["samples_per_s_mean"] == pytest.approx(rate)
    assert two["workers"] == 2 and two["cpus_per_worker"] == 0.5
    # the plain loop gets as many intra-op threads as the Ray workers together
    assert plain["workers"] == 1 and plain["threads"] == two["threads"] >= 2
    assert plain["threads"] == 2 * details["threads_per_worker"]["0.5"]
    ratio = two["samples_per_s"] / plain["samples_per_s"]
    assert data["ratio"] == pytest.approx(ratio, abs=1e-3)
    assert "scaling_2w_vs_1w" not in details
    assert figures["ratio"] == pytest.approx(ratio)


def test_prints_the_table_and_ends_with_the_ratio(quick_result):
    figures, _, printed = quick_result
    lines = [line for line in printed.splitlines() if line.strip()]
    assert lines[-1] == f"train: ratio {figures['ratio']:.2f} (target {TARGET})"
    header = next(line for line in lines if line.startswith("runner"))
    assert "samples/s" in header and "wall s (e2e)" in header
    assert any(line.startswith("ray_2w ") for line in lines)
    assert any(line.startswith("plain_") for line in lines)


def test_bad_inputs_fail_before_training(eav_features, tmp_path):
    with pytest.raises(DataError, match="preprocess"):
        run_benchmark(quick=True, out_dir=tmp_path, features=eav_features / "rec")
    with pytest.raises(ConfigError, match="epochs"):
        run_benchmark(quick=True, out_dir=tmp_path, features=eav_features / "feat", epochs=0)
    assert not (tmp_path / "train.json").exists()


def test_steady_state_skips_the_warm_up_epoch():
    from benchmarks.train import steady

    # warm-up epoch 10 rows in 5 s is ignored; then 10 rows in 1 s and 10 rows in 2 s
    best, mean = steady([10, 10, 10], [5.0, 1.0, 2.0])
    assert best == pytest.approx(10.0) and mean == pytest.approx(20 / 3)
    assert steady([8], [2.0]) == (4.0, 4.0)          # a single epoch counts as it is
