"""The stream rows and target of `emoray bench serve` (benchmarks/_serve_stream.py): the
arithmetic without a server, then one small real run against uvicorn."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks._serve_stream import (STREAM_TARGET, measure_streams, stream_line,
                                      stream_rows, stream_target)
from conftest import plain_server

BUNDLE = Path(__file__).resolve().parents[1] / "fixtures" / "bundles_v0" / "fusion"


def _run(n: int, p99: float, speed: float = 1.0, errors=()) -> dict:
    return {"streams": n, "speed": speed, "windows": 4 * n, "errors": list(errors),
            "p50_ms": p99 / 2, "p99_ms": p99, "hop_ms": 1000.0, "realtime_factor": n * 0.98,
            "min_stream_rtf": 0.97, "window_s": 5.0,
            "keeps_up": not errors and p99 < 1000.0}


def test_the_target_is_the_largest_count_kept_up_with_every_smaller_one():
    runs = [_run(1, 80), _run(4, 300), _run(8, 900), _run(12, 1400), _run(8, 5000, 0)]
    t = stream_target(runs)
    assert t == {"streams_kept_up": 8, "target": STREAM_TARGET, "pass": True}
    assert stream_line("router", t).endswith("-> PASS")
    # a count that falls behind stops the count, even if a larger one happened to keep up
    t = stream_target([_run(1, 80), _run(4, 1200), _run(8, 900)])
    assert t["streams_kept_up"] == 1 and not t["pass"]
    assert stream_target([_run(1, 80, errors=["ClientError: refused"])])["streams_kept_up"] == 0
    rows = stream_rows({"router": runs})
    assert [r["p99 < hop"] for r in rows] == ["yes", "yes", "yes", "NO", "-"]
    assert rows[-1]["speed"] == "max" and rows[2]["signal s / wall s"] == "7.84"


@pytest.mark.usefixtures("one_torch_thread")
def test_real_streams_against_a_plain_server_answer_every_window():
    from emoray.serving.app import LocalBackend

    backend = LocalBackend({"checkpoint": str(BUNDLE), "device": "cpu"})
    with plain_server(backend) as url:
        runs = measure_streams(url, backend.info(), (2,), 6.5)
    real, fast = runs
    assert real["errors"] == [] and real["windows"] == 2 * 2       # windows at 0 and 1 s
    assert real["p50_ms"] > 0 and real["window_s"] == 5.0
    assert 1.2 < real["realtime_factor"] <= 2.0                     # 2 streams at real time
    assert fast["streams"] == STREAM_TARGET and fast["windows"] == STREAM_TARGET * 2
