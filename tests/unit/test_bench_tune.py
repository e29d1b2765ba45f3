"""The summaries of `emoray bench tune` on handmade trial histories (no Ray): report times
from Tune's whole-second timestamps and per-trial clocks, time to target, the target
choice, ERT with campaigns that never reach the target, the ratios and the JSON result."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.tune import (_json_safe, campaign_record, choose_target, expected_time,
                               max_overlap, method_summary, ratios, report, report_times,
                               time_to_target, trial_start)
from emoray.errors import ConfigError

M = "val_f1_speech_only"


def _rows(start: float, totals: list[float], values: list[float]) -> list[dict]:
    """Reports as Tune writes them: ``timestamp`` truncated to whole seconds."""
    return [{M: v, "timestamp": int(start + t), "time_total_s": t, "training_iteration": i}
            for i, (t, v) in enumerate(zip(totals, values), start=1)]


def test_trial_start_is_recovered_from_truncated_timestamps():
    rows = _rows(1000.3, [2.5, 5.9, 9.2], [0.1, 0.2, 0.3])
    # timestamps 1002, 1006, 1009 -> 999.5, 1000.1, 999.8: the latest is the tightest bound
    assert trial_start(rows) == pytest.approx(1000.1)
    assert report_times(rows) == pytest.approx([1002.6, 1006.0, 1009.3])
    with pytest.raises(ValueError):
        trial_start([])


def test_campaign_record_times_from_the_first_trial_start():
    hist = {"a": _rows(100.0, [10.0, 20.0, 30.0], [0.2, 0.5, 0.4]),
            "b": _rows(104.0, [8.0], [0.3]),                        # stopped at rung 1
            "c": _rows(131.0, [9.0, 18.0], [0.6, math.nan]),
            "d": []}                                                 # never reported
    rec = campaign_record(hist, M, "max")
    assert rec["best"] == pytest.approx(0.6)
    assert rec["epochs"] == 3 + 1 + 2 and rec["trials"] == 4
    assert rec["start"] == pytest.approx(100.0)
    assert rec["trials_s"] == pytest.approx(49.0)                   # c's last report at 149
    assert rec["overlap"] == 2                  # a+b at 104-112; c starts after a's last
    times, values = zip(*rec["events"])                             # NaN report dropped
    assert times == pytest.approx((10.0, 12.0, 20.0, 30.0, 40.0))
    assert values == pytest.approx((0.2, 0.3, 0.5, 0.4, 0.6))
    low = campaign_record(hist, M, "min")
    assert low["best"] == pytest.approx(0.2)
    empty = campaign_record({"x": []}, M, "max")
    assert math.isnan(empty["best"]) and empty["epochs"] == 0 and empty["events"] == []
    with pytest.raises(ConfigError, match="mode"):
        campaign_record(hist, M, "maximum")


def test_max_overlap_counts_trials_open_at_once():
    assert max_overlap([]) == 0
    assert max_overlap([(0, 10), (10, 20), (20, 30)]) == 1         # back to back
    assert max_overlap([(0, 10), (5, 20), (6, 7), (15, 30)]) == 3   # at 6-7
    assert max_overlap(iter([(0, 5), (1, 2)])) == 2                 # an iterator is fine


def test_time_to_target_is_the_first_report_at_or_past_it():
    events = [[10.0, 0.2], [12.0, 0.3], [20.0, 0.5], [30.0, 0.4], [40.0, 0.6]]
    assert time_to_target(events, 0.5, "max") == 20.0              # equal counts
    assert time_to_target(events, 0.45, "max") == 20.0
    assert time_to_target(events, 0.61, "max") == math.inf
    assert time_to_target(events, 0.25, "min") == 10.0
    assert time_to_target([], 0.1, "max") == math.inf


def test_target_is_the_median_on_the_easier_side():
    assert choose_target([0.4, 0.9, 0.6], "max") == 0.6
    assert choose_target([0.4, 0.9, 0.6, 0.7], "max") == 0.6        # lower middle
    assert choose_target([0.4, 0.9, 0.6, 0.7], "min") == 0.7        # higher middle
    assert choose_target([0.5, math.nan, 0.8], "max") == 0.5
    with pytest.raises(ValueError):
        choose_target([math.nan], "max")
    with pytest.raises(ConfigError):
        choose_target([0.5], "best")


def test_expected_time_counts_failed_campaigns_whole_search():
    assert expected_time([10.0, 30.0], [50.0, 60.0]) == 20.0        # all reached: the mean
    assert expected_time([10.0, math.inf], [50.0, 60.0]) == 70.0    # (10 + 60) / 1
    assert expected_time([math.inf, math.inf], [50.0, 60.0]) == math.inf


def _records():
    return [{"method": "optuna", "best": 0.8, "epochs": 10, "trials_s": 100.0,
             "time_to_target": 40.0},
            {"method": "random", "best": 0.6, "epochs": 24, "trials_s": 200.0,
             "time_to_target": math.inf},
            {"method": "random", "best": 0.7, "epochs": 24, "trials_s": 180.0,
             "time_to_target": 90.0},
            {"method": "optuna", "best": 0.6, "epochs": 14, "trials_s": 120.0,
             "time_to_target": 60.0}]


def test_method_summary_and_ratios():
    s = method_summary(_records())
    assert list(s) == ["optuna", "random"]
    assert s["optuna"]["best"] == pytest.approx(0.7) and s["optuna"]["epochs"] == 12
    assert s["optuna"]["time_to_target"] == 50.0 and s["optuna"]["reached"] == 2
    assert s["random"]["time_to_target"] == 290.0 and s["random"]["reached"] == 1
    assert s["random"]["trials_s"] == 190.0 and s["random"]["campaigns"] == 2
    r = ratios(s)
    assert r["best"] == pytest.approx(0.7 / 0.65)
    assert r["time_to_target"] == pytest.approx(5.8) and r["epochs"] == 2.0
    assert r["headline"] == "time_to_target" and r["ratio"] == pytest.approx(5.8)


def test_ratios_fall_back_to_epochs_when_time_to_target_is_undefined():
    base = {"best": 0.5, "epochs": 10.0}
    never = ratios({"optuna": dict(base, time_to_target=math.inf),
                    "random": dict(base, time_to_target=math.inf, epochs=30.0)})
    assert math.isnan(never["time_to_target"])
    assert never["headline"] == "epochs" and never["ratio"] == 3.0
    only_optuna = ratios({"optuna": dict(base, time_to_target=20.0),
                          "random": dict(base, time_to_target=math.inf)})
    assert only_optuna["time_to_target"] == math.inf and only_optuna["headline"] == "epochs"
    only_random = ratios({"optuna": dict(base, time_to_target=math.inf),
                          "random": dict(base, time_to_target=20.0)})
    assert only_random["time_to_target"] == 0.0                     # Optuna never got there
    assert only_random["headline"] == "time_to_target" and only_random["ratio"] == 0.0


def test_json_safe_replaces_non_finite_values():
    assert _json_safe({"a": [1.0, math.inf, (math.nan, 2)], "b": "x"}) == \
        {"a": [1.0, None, [None, 2]], "b": "x"}


def test_report_writes_json_with_target_and_closing_line(tmp_path, capsys):
    def rec(method, seed, order, hist):
        r = campaign_record(hist, M, "max")
        r.update(method=method, seed=seed, order=order, name=f"s{seed}-{method}", metric=M,
                 mode="max", concurrency=2, status={"TERMINATED": len(hist)},
                 promoted=r["best"], campaign_s=r["trials_s"] + 30.0, setup_s=20.0,
                 promote_s=10.0)
        return r

    records = [rec("optuna", 0, 1, {"a": _rows(0.0, [5.0, 10.0], [0.3, 0.7]),
                                    "b": _rows(2.0, [4.0], [0.2])}),
               rec("random", 0, 2, {"a": _rows(50.0, [5.0, 10.0, 15.0], [0.1, 0.4, 0.5]),
                                    "b": _rows(51.0, [6.0, 12.0, 18.0], [0.2, 0.3, 0.6])})]
    info = {"quick": True, "seeds": [0], "trials": 2, "loadavg": {"before": (1.0, 0, 0),
                                                                  "after": (2.0, 0, 0)}}
    figures = report(records, tmp_path, info)
    out = capsys.readouterr().out
    # target: lower middle of {0.7, 0.6} = 0.6; optuna reaches 0.7 at 10 s, random 0.6 at 19 s
    assert figures["target_metric"] == 0.6
    assert figures["ratio"] == pytest.approx(19.0 / 10.0)
    assert figures["epochs"] == pytest.approx(6 / 3)
    assert out.rstrip().splitlines()[-1] == "tune: ratio 1.90 (target 1.0)"
    data = json.loads((tmp_path / "tune.json").read_text())
    assert data["name"] == "tune" and data["target"] == 1.0 and data["ratio"] == 1.9
    d = data["details"]
    assert d["target_metric"] == 0.6 and d["headline"] == "time_to_target"
    assert [c["time_to_target"] for c in d["campaigns"]] == pytest.approx([10.0, 19.0])
    assert "start" not in d["campaigns"][0] and d["seeds"] == [0]
    assert d["over_concurrency"] == [] and "WARNING" not in out


def test_report_warns_when_a_campaign_ran_more_trials_at_once(tmp_path, capsys):
    hist = {k: _rows(0.0, [5.0, 10.0], [0.5, 0.6]) for k in "abc"}    # 3 trials at once
    rec = campaign_record(hist, M, "max")
    rec.update(method="random", seed=0, order=1, name="s0-random", metric=M, mode="max",
               concurrency=2, status={"TERMINATED": 3}, promoted=0.6, campaign_s=40.0,
               setup_s=20.0, promote_s=10.0)
    other = dict(rec, method="optuna", name="s0-optuna", overlap=1, epochs=3)
    info = {"loadavg": {"before": (1.0,), "after": (1.0,)}}
    figures = report([other, rec], tmp_path, info)
    out = capsys.readouterr().out
    assert "WARNING: ['s0-random'] ran more than 2 trials at once" in out
    assert figures["ratio"] == pytest.approx(1.0)                  # both reach 0.6 at 10 s
    data = json.loads((tmp_path / "tune.json").read_text())
    assert data["details"]["over_concurrency"] == ["s0-random"]
