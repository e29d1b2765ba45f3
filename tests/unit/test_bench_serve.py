"""The arithmetic and the printed report of `emoray bench serve` on handmade cells (no Ray):
percentiles, per-cell stats, both targets, the table and the JSON result."""

from __future__ import annotations

import json
import math
import threading
import time

import numpy as np
import pytest

from benchmarks.serve import (COLUMNS, baseline, cell_stats, drive_rounds,
                                noop_lines,
                                parse_server_timing, percentile, report, rows, step_medians,
                                step_rows, summary_lines, targets)
from benchmarks._runner import table
from emoray.errors import ConfigError


@pytest.mark.parametrize("q", [0, 25, 50, 95, 99, 100])
def test_percentile_matches_numpy_linear(q):
    xs = [7.0, 1.0, 3.5, 10.0, 2.0, 2.0, 9.25]
    assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


def test_percentile_edges():
    assert percentile([4.0], 99) == 4.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ConfigError, match="0..100"):
        percentile([1.0], 101)


def test_cell_stats_in_ms_and_requests_per_second():
    s = cell_stats([0.010, 0.020, 0.030, 0.040], wall_s=0.5, errors=1)
    assert s["n"] == 4 and s["errors"] == 1
    assert s["p50"] == pytest.approx(25.0)
    assert s["mean"] == pytest.approx(25.0)
    assert s["p99"] == pytest.approx(39.7)
    assert s["rps"] == pytest.approx(8.0)            # answered requests only


def _cell(p50: float, rps: float) -> dict:
    return {"n": 10, "errors": 0, "wall_s": 1.0, "p50": p50, "p95": p50 * 2,
            "p99": p50 * 3, "mean": p50, "rps": rps}


def _cells(router_p50: float, router_rps: float) -> dict:
    return {"floor": {1: _cell(20.0, 50.0), 32: _cell(30.0, 60.0)},
            "fastapi": {1: _cell(25.0, 40.0), 32: _cell(300.0, 10.0)},
            "router+batch": {1: _cell(router_p50, 30.0), 32: _cell(100.0, router_rps)},
            "router": {1: _cell(40.0, 20.0), 32: _cell(200.0, 15.0)}}


def test_targets_pass_at_the_bounds():
    # bound = 1.15 * 20 + 5 = 28 ms; ratio 20 / 10 = 2.0
    t = targets(_cells(28.0, 20.0), 1, 32, "router+batch")
    assert t["latency"]["bound_ms"] == pytest.approx(28.0)
    assert t["latency"]["overhead_ms"] == pytest.approx(8.0)
    assert t["latency"]["pass"] and t["throughput"]["pass"]
    assert t["throughput"]["ratio"] == pytest.approx(2.0)


def test_targets_fail_just_past_the_bounds():
    t = targets(_cells(28.1, 19.9), 1, 32, "router+batch")
    assert not t["latency"]["pass"] and not t["throughput"]["pass"]
    t = targets(_cells(28.0, 20.0), 1, 32, "router")    # the unbatched row: 40 ms, 1.5x
    assert not t["latency"]["pass"]
    assert t["throughput"]["ratio"] == pytest.approx(1.5)


def test_table_rows_and_ratio_column():
    text = table(rows(_cells(28.0, 20.0)), COLUMNS)
    lines = text.splitlines()
    assert lines[0].split() == ["system", "c", "n", "err", "p50", "ms", "p95", "ms", "p99",
                                "ms", "req/s", "vs", "fastapi"]
    assert len(lines) == 2 + 8                     # header, rule, 4 systems x 2 levels
    batch32 = next(ln for ln in lines if ln.startswith("router+batch") and " 32 " in ln)
    assert batch32.split()[-1] == "2.00x" and "20.0" in batch32.split()


def test_summary_lines_say_pass_or_fail():
    good, bad = (summary_lines(targets(_cells(p, r), 1, 32, "router+batch"))
                 for p, r in ((28.0, 20.0), (50.0, 5.0)))
    assert all(ln.endswith("PASS") for ln in good)
    assert all(ln.endswith("FAIL") for ln in bad)
    assert "2.00x" in good[1] and "bound 28.0 ms" in good[0]


def test_report_writes_json_with_targets(tmp_path, capsys):
    cells = _cells(28.0, 20.0)
    cells["fastapi"][1]["p99"] = math.nan                # not JSON: written as null
    info = {"quick": True, "environment": {"cpus": 2, "replicas": 2}}
    out = report(cells, tmp_path, info)
    doc = json.loads((tmp_path / "serve.json").read_text())
    assert doc["name"] == "serve" and doc["ratio"] == 2.0 and doc["target"] == 2.0
    assert doc["details"]["targets"]["batching"]["throughput"]["pass"] is True
    assert doc["details"]["cells"]["fastapi"]["1"]["p99"] is None
    assert out["targets"]["no_batching"]["throughput"]["ratio"] == pytest.approx(1.5)
    printed = capsys.readouterr().out
    assert printed.rstrip().endswith("serve: ratio 2.00 (target 2.0)")
    assert "[no_batching] throughput" in printed and "where the time goes at c=1" in printed


def _with_batched_baselines() -> dict:
    cells = _cells(28.0, 20.0)
    cells["floor+batch"] = {1: _cell(10.0, 90.0), 32: _cell(15.0, 95.0)}
    cells["fastapi+batch"] = {1: _cell(12.0, 80.0), 32: _cell(80.0, 40.0)}
    return cells


def test_targets_compare_like_with_like_batching():
    cells = _with_batched_baselines()
    assert baseline(cells, "fastapi", "router+batch") == "fastapi+batch"
    assert baseline(cells, "fastapi", "router") == "fastapi"
    assert baseline(_cells(28.0, 20.0), "floor", "router+batch") == "floor"   # not measured
    t = targets(cells, 1, 32, "router+batch")
    assert t["baselines"] == {"floor": "floor+batch", "fastapi": "fastapi+batch"}
    assert t["latency"]["bound_ms"] == pytest.approx(1.15 * 10.0 + 5.0)     # floor+batch
    assert t["throughput"]["ratio"] == pytest.approx(20.0 / 40.0)
    assert not t["throughput"]["pass"]
    assert "fastapi+batch 40.0 req/s" in summary_lines(t)[1]
    batch32 = next(r for r in rows(cells) if r["system"] == "router+batch" and r["c"] == "32")
    assert batch32["vs fastapi"] == "0.50x"                # against fastapi+batch


def test_server_timing_parse_and_medians():
    assert parse_server_timing("read;dur=0.4, decode;dur=21.25,eeg;desc=x;dur=9") == {
        "read": 0.4, "decode": 21.25, "eeg": 9.0}
    assert parse_server_timing("") == {}
    assert parse_server_timing("miss, bad;dur=abc, ok;dur=1") == {"ok": 1.0}
    med = step_medians([{"a": 1.0, "b": 5.0}, {"a": 3.0}, {"a": 2.0, "b": 7.0}])
    assert med == {"a": 2.0, "b": 6.0} and list(med) == ["a", "b"]


def test_step_rows_and_noop_lines():
    cells = _cells(28.0, 20.0)
    cells["router+batch"][1]["steps"] = {"read": 9.5, "prepare": 60.0, "eeg": 20.25,
                                         "total": 120.0}
    text = table(step_rows(cells, 1), ["system", "read", "prepare", "eeg", "video",
                                       "total", "client p50"])
    line = next(ln for ln in text.splitlines() if ln.startswith("router+batch"))
    assert line.split()[1:] == ["9.5", "60.0", "20.2", "-", "120.0", "28.0"]
    assert noop_lines({}) == []
    (msg,) = noop_lines({"health_ms": 10.0, "deep_health_ms": 31.5, "encoder_fanout_ms": 21.5})
    assert "10.0 ms" in msg and "21.5 ms" in msg and "31.5 ms" in msg


def test_drive_counts_every_request_once_and_errors_apart():
    seen, lock = [], threading.Lock()

    def send():
        with lock:
            seen.append(1)
            k = len(seen)
        time.sleep(0.002)
        return k % 5 != 0                           # every fifth request fails

    s = drive_rounds({"only": send}, 20, 4)["only"]
    assert len(seen) == 20 and s["n"] + s["errors"] == 20 and s["errors"] == 4
    assert s["p50"] >= 2.0 and s["rps"] > 0


def test_drive_rounds_interleaves_systems_and_counts_each_request_once():
    order, lock = [], threading.Lock()

    def sender(name, ok=True):
        def send():
            with lock:
                order.append(name)
            time.sleep(0.001)
            return ok
        return send

    cells = drive_rounds({"a": sender("a"), "b": sender("b"), "c": sender("c", ok=False)},
                         n=10, concurrency=2, rounds=5)
    assert [cells[k]["n"] for k in "abc"] == [10, 10, 0] and cells["c"]["errors"] == 10
    runs = [order[i] for i in range(0, 30, 2)]          # 5 rounds x 3 systems x 2 requests
    assert runs[:3] == ["a", "b", "c"] and runs[3:6] == ["b", "c", "a"]   # rotating turns
    assert cells["a"]["rps"] > 0 and cells["a"]["wall_s"] < 1.0
    order.clear()
    one = drive_rounds({"a": sender("a")}, n=5, concurrency=8, rounds=5)  # fewer than c
    assert one["a"]["n"] == 5 and len(order) == 5
