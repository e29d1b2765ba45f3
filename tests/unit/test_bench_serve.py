"""The arithmetic and the printed report of `emoray bench serve` on handmade cells (no Ray):
percentiles, per-cell stats, CPU per request, the targets, the table, the headline and the
JSON result; the request bodies decoded by the server's own decoder without HTTP."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import psutil
import pytest

from benchmarks._runner import table
from benchmarks._serve_cpu import (cpu_delta, is_serve_process, per_request_ms,
                                   process_meter, short_title)
from benchmarks._serve_report import _metered, by_process_ms, process_lines
from benchmarks.serve import (COLUMNS, baseline, cell_stats, drive_rounds,
                              encode_request, headline, local_request, noop_lines,
                              parse_server_timing, percentile, report, rows, step_medians,
                              step_rows, summary_lines, targets)
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


def _cell(p50: float, rps: float, cpu_ms: float = 20.0) -> dict:
    return {"n": 10, "errors": 0, "wall_s": 1.0, "p50": p50, "p95": p50 * 2,
            "p99": p50 * 3, "mean": p50, "rps": rps, "cpu_ms": cpu_ms, "ray_core_ms": 1.5}


def _cells(router_p50: float, router_rps: float, router_cpu: float = 25.0) -> dict:
    return {"floor": {1: _cell(20.0, 50.0), 32: _cell(30.0, 60.0, 18.0)},
            "fastapi": {1: _cell(25.0, 40.0), 32: _cell(300.0, 10.0, 22.0)},
            "router+batch": {1: _cell(router_p50, 30.0),
                             32: _cell(100.0, router_rps, router_cpu)},
            "router": {1: _cell(40.0, 20.0), 32: _cell(200.0, 15.0, 40.0)}}


def test_targets_pass_at_the_bounds():
    # bound = floor 20 + 15 = 35 ms; ratio 54 / floor 60 = 0.9; cpu 25 ms <= 25
    t = targets(_cells(35.0, 54.0, 25.0), 1, 32, "router+batch")
    assert t["latency"]["bound_ms"] == pytest.approx(35.0)
    assert t["latency"]["overhead_ms"] == pytest.approx(15.0)
    assert t["throughput"]["ratio"] == pytest.approx(0.9)
    assert t["throughput"]["vs_fastapi"] == pytest.approx(5.4)       # informational
    assert t["latency"]["pass"] and t["throughput"]["pass"] and t["cpu"]["pass"]
    assert t["cpu"]["systems_ms"] == {"floor": 18.0, "fastapi": 22.0, "router+batch": 25.0}


def test_targets_fail_just_past_the_bounds():
    t = targets(_cells(35.1, 53.9, 25.1), 1, 32, "router+batch")
    assert not t["latency"]["pass"] and not t["throughput"]["pass"] and not t["cpu"]["pass"]
    t = targets(_cells(35.0, 54.0), 1, 32, "router")    # the unbatched row: 40 ms, 0.25, 40 ms
    assert not t["latency"]["pass"] and not t["cpu"]["pass"]
    assert t["throughput"]["ratio"] == pytest.approx(15.0 / 60.0)


def test_the_router_beating_the_floor_passes_and_cpu_not_measured_fails():
    cells = _cells(10.0, 120.0, math.nan)             # faster than the floor: ratio 2.0
    t = targets(cells, 1, 32, "router+batch")
    assert t["throughput"]["ratio"] == pytest.approx(2.0) and t["throughput"]["pass"]
    assert t["latency"]["pass"] and not t["cpu"]["pass"]      # NaN CPU is no PASS
    assert "router+batch - ms/request" in summary_lines(t)[2]
    assert summary_lines(t)[2].endswith("FAIL")


def test_table_rows_and_ratio_columns():
    text = table(rows(_cells(35.0, 54.0)), COLUMNS)
    lines = text.splitlines()
    assert lines[0].split() == ["system", "c", "n", "err", "p50", "ms", "p95", "ms", "p99",
                                "ms", "req/s", "vs", "floor", "vs", "fastapi", "cpu", "ms",
                                "ray", "core", "ms"]
    assert len(lines) == 2 + 8                     # header, rule, 4 systems x 2 levels
    batch32 = next(ln for ln in lines if ln.startswith("router+batch") and " 32 " in ln)
    assert batch32.split()[-5:] == ["54.0", "0.90x", "5.40x", "25.0", "1.5"]
    no_cpu = _cells(35.0, 54.0)
    del no_cpu["fastapi"][1]["cpu_ms"]
    row = next(r for r in rows(no_cpu) if r["system"] == "fastapi" and r["c"] == "1")
    assert row["cpu ms"] == "-" and row["vs floor"] == "0.80x"


def test_summary_lines_say_pass_or_fail():
    good, bad = (summary_lines(targets(_cells(p, r, c), 1, 32, "router+batch"))
                 for p, r, c in ((35.0, 54.0, 25.0), (50.0, 5.0, 30.0)))
    assert len(good) == 3
    assert all(ln.endswith("PASS") for ln in good)
    assert all(ln.endswith("FAIL") for ln in bad)
    assert "bound 35.0 ms (floor 20.0 + 15)" in good[0]
    assert "/ floor 60.0 req/s = 0.90 (target >= 0.9; vs fastapi 10.0 req/s: 5.40x)" in good[1]
    assert good[2].startswith("cpu @c32: router+batch 25.0 ms/request (+ ray core 1.5; "
                              "floor 18.0, fastapi 22.0) (target <= 25)")


def test_headline_line():
    assert headline(0.9) == "serve: ratio 0.90 (target 0.9)"
    assert headline(1.234) == "serve: ratio 1.23 (target 0.9)"
    assert headline(math.nan) == "serve: ratio nan (target 0.9)"


def test_report_writes_json_with_targets(tmp_path, capsys):
    cells = _cells(35.0, 54.0)
    cells["fastapi"][1]["p99"] = math.nan                # not JSON: written as null
    info = {"quick": True, "encoding": "binary", "environment": {"cpus": 2, "replicas": 2}}
    out = report(cells, tmp_path, info)
    doc = json.loads((tmp_path / "serve.json").read_text())
    assert doc["name"] == "serve" and doc["ratio"] == 0.9 and doc["target"] == 0.9
    assert doc["details"]["encoding"] == "binary"
    assert doc["details"]["targets"]["batching"]["throughput"]["pass"] is True
    assert doc["details"]["targets"]["batching"]["cpu"]["router_ms"] == 25.0
    assert doc["details"]["cells"]["fastapi"]["1"]["p99"] is None
    assert out["targets"]["no_batching"]["throughput"]["ratio"] == pytest.approx(0.25)
    printed = capsys.readouterr().out
    assert printed.splitlines()[-1] == "serve: ratio 0.90 (target 0.9)"
    assert "[no_batching] throughput" in printed and "where the time goes at c=1" in printed
    assert "[batching] cpu @c32" in printed and "multipart/form-data" in printed
    assert ("cpu ms per request @c32: floor 18.0 (ray core 1.5), fastapi 22.0 (ray core "
            "1.5), router+batch 25.0") in printed


def _with_batched_baselines() -> dict:
    cells = _cells(35.0, 54.0)
    cells["floor+batch"] = {1: _cell(10.0, 90.0), 32: _cell(15.0, 100.0, 12.0)}
    cells["fastapi+batch"] = {1: _cell(12.0, 80.0), 32: _cell(80.0, 40.0, 14.0)}
    return cells


def test_targets_compare_like_with_like_batching():
    cells = _with_batched_baselines()
    assert baseline(cells, "fastapi", "router+batch") == "fastapi+batch"
    assert baseline(cells, "fastapi", "router") == "fastapi"
    assert baseline(_cells(35.0, 54.0), "floor", "router+batch") == "floor"  # not measured
    t = targets(cells, 1, 32, "router+batch")
    assert t["baselines"] == {"floor": "floor+batch", "fastapi": "fastapi+batch"}
    assert t["latency"]["bound_ms"] == pytest.approx(10.0 + 15.0)         # floor+batch
    assert t["throughput"]["ratio"] == pytest.approx(54.0 / 100.0)
    assert t["throughput"]["vs_fastapi"] == pytest.approx(54.0 / 40.0)
    assert not t["throughput"]["pass"]
    assert t["cpu"]["systems_ms"] == {"floor+batch": 12.0, "fastapi+batch": 14.0,
                                      "router+batch": 25.0}
    assert "floor+batch 100.0 req/s" in summary_lines(t)[1]
    batch32 = next(r for r in rows(cells) if r["system"] == "router+batch" and r["c"] == "32")
    assert batch32["vs floor"] == "0.54x" and batch32["vs fastapi"] == "1.35x"


def test_cpu_delta_and_per_request():
    assert cpu_delta({1: 2.0, 2: 5.0}, {1: 2.5, 2: 5.25}) == pytest.approx(0.75)
    # 2 ended during the turn (None), 3 was not there at the start: both left out
    assert cpu_delta({1: 2.0, 2: 5.0}, {1: 3.0, 2: None, 3: 9.0}) == pytest.approx(1.0)
    assert math.isnan(cpu_delta({}, {}))
    assert math.isnan(cpu_delta({1: None}, {1: 4.0}))       # no process read at both ends
    assert per_request_ms(0.5, 40) == pytest.approx(12.5)
    assert math.isnan(per_request_ms(0.5, 0))
    s = cell_stats([0.01, 0.02], wall_s=1.0, errors=3, cpu_s={"cpu": 0.05, "ray_core": 0.01})
    assert s["cpu_ms"] == pytest.approx(25.0) and s["ray_core_ms"] == pytest.approx(5.0)
    assert s["cpu_s"] == 0.05                               # per answered request, not sent


def test_serve_processes_by_title():
    assert is_serve_process("ray::ServeReplica:bench:FusionRouter", "bench")
    assert is_serve_process("ray::ServeReplica:bench:ModalityEncoder_eeg  ", "bench")
    assert is_serve_process("ray::ProxyActor", "bench")
    assert is_serve_process("ray::ServeController", "bench")
    assert not is_serve_process("ray::ServeReplica:other:FusionRouter", "bench")
    assert not is_serve_process("/venv/lib/ray/core/src/ray/raylet/raylet --x", "bench")
    assert not is_serve_process("ray::IDLE", "bench")
    assert is_serve_process("ray::ServeController.listen_for_change", "bench")  # busy


def test_short_titles_and_the_cpu_breakdown_by_process():
    assert short_title("ray::ServeReplica:bench:FusionRouter.handle_request_with_rejection"
                       ) == "ray::ServeReplica:bench:FusionRouter"
    assert short_title("/v/ray/core/src/ray/raylet/raylet --raylet_socket_name=/x") == "raylet"
    assert short_title("/v/bin/python -u /v/ray/_private/log_monitor.py --x=1"
                       ) == "python log_monitor.py"
    assert short_title("/v/bin/python -B -c from multiprocessing import x") == "python -c"
    assert short_title("") == "?"
    ms = by_process_ms({"ray::ProxyActor": 0.4, "raylet": 0.1, "router": 1.2,
                        "gcs_server": 0.01, "ray::IDLE": 0.006}, 40)
    assert list(ms)[:3] == ["router", "ray::ProxyActor", "raylet"]        # largest first
    assert ms["router"] == pytest.approx(30.0) and ms["raylet"] == pytest.approx(2.5)
    cells = _cells(35.0, 54.0)
    cells["router+batch"][32]["cpu_by_process_ms"] = ms
    assert process_lines(cells, 32) == ["router+batch cpu ms per request @c32 by process: "
                                        "router 30.0, ray::ProxyActor 10.0, raylet 2.5, "
                                        "other 0.4"]               # 0.25 + 0.15 under 0.5
    assert process_lines(cells, 1) == []


def test_process_meter_reads_this_process_and_gives_nan_for_an_ended_one():
    by_title: dict[str, float] = {}
    start = process_meter(lambda: [psutil.Process()], by_title)
    stop = start()
    t0 = time.process_time()
    while time.process_time() - t0 < 0.05:                 # burn 50 ms of CPU
        sum(i * i for i in range(1000))
    spent = stop()
    assert spent >= 0.035                                  # 50 ms in ticks of 10 ms
    assert list(by_title.values()) == [pytest.approx(spent)]
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    stop = process_meter(lambda: [psutil.Process(child.pid)])()
    child.wait(30)
    assert math.isnan(stop())                              # ended: not a flattering 0


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


def test_drive_rounds_meters_each_system_during_its_own_turns_only():
    clock, lock = [0.0], threading.Lock()               # one machine's CPU: every send adds

    def sender(cost):
        def send():
            with lock:
                clock[0] += cost
            return True
        return send

    def meter():
        t0 = clock[0]
        return lambda: clock[0] - t0

    cells = drive_rounds({"a": sender(0.010), "b": sender(0.100)}, n=10, concurrency=2,
                         rounds=5, meters={"a": {"cpu": meter}, "b": {"cpu": meter}})
    assert cells["a"]["cpu_ms"] == pytest.approx(10.0)   # none of b's 100 ms per request
    assert cells["b"]["cpu_ms"] == pytest.approx(100.0)
    assert cells["a"]["cpu_s"] == pytest.approx(0.1)
    plain = drive_rounds({"a": sender(0.01)}, n=4, concurrency=2)["a"]
    assert "cpu_ms" not in plain                          # no meter: no CPU figure


def test_metered_starts_the_last_meter_last_and_stops_it_first():
    log = []

    def meter(key):
        def start():
            log.append(f"start {key}")

            def stop():
                log.append(f"stop {key}")
                return 1.0 if key == "cpu" else 2.0
            return stop
        return start

    result, seconds = _metered({"ray_core": meter("ray_core"), "cpu": meter("cpu")},
                               lambda: log.append("run") or 7)
    assert result == 7 and seconds == {"ray_core": 2.0, "cpu": 1.0}
    assert log == ["start ray_core", "start cpu", "run", "stop cpu", "stop ray_core"]


@pytest.mark.parametrize("encoding", ["binary", "json"])
def test_the_floor_decodes_the_request_with_the_servers_decoder(encoding):
    from emoray.config import ServeConfig
    from emoray.predict import EEGInput, SpeechInput, VideoInput
    from emoray.serving.api import Timings, decode_request

    rng = np.random.default_rng(0)
    inputs = {"eeg": EEGInput(rng.normal(0, 2e-5, (3, 256)), 128.0, ["Fz", "Cz", "Pz"]),
              "speech": SpeechInput(rng.uniform(-0.1, 0.1, 800).astype("float32"), 8000),
              "video": VideoInput(rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8))}
    body, ctype = encode_request(inputs, encoding)
    assert ctype.startswith("multipart/form-data; boundary=" if encoding == "binary"
                            else "application/json")
    backend = SimpleNamespace(api_key_digest=None, settings=ServeConfig())
    timings = Timings()
    got = asyncio.run(decode_request(backend, local_request(body, ctype), timings))
    assert set(timings.ms) == {"read", "decode"}
    assert got["eeg"].data.shape == (3, 256) and list(got["eeg"].ch_names) == ["Fz", "Cz", "Pz"]
    np.testing.assert_allclose(got["eeg"].data, inputs["eeg"].data, rtol=1e-6)
    np.testing.assert_allclose(got["speech"].samples, inputs["speech"].samples, rtol=1e-6)
    assert got["video"].frames.shape == (2, 16, 16, 3)
    if encoding == "binary":                               # .npy parts: lossless frames
        np.testing.assert_array_equal(got["video"].frames, inputs["video"].frames)
    with pytest.raises(ConfigError, match="encoding"):
        encode_request(inputs, "xml")
