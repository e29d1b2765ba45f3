"""`emoray bench serve` without `--checkpoint`: the tiny model the benchmark trains for
itself is a servable bundle, and the benchmark's own request gets an answer from it through
the in-process floor (the real contract and model; the HTTP systems are the benchmark's)."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from benchmarks.serve import _serve_config, _stop_loop, floor_sender, request_body, tiny_checkpoint
from emoray.serving.app import LocalBackend
from emoray.serving.model import resolve_checkpoint

pytestmark = pytest.mark.integration


def test_the_benchmarks_own_model_is_servable_and_answers_its_request(eav_features, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "30")
    bundle = tiny_checkpoint(tmp_path, eav_features / "feat")
    assert resolve_checkpoint(bundle) == resolve_checkpoint(str(bundle))
    assert (resolve_checkpoint(bundle) / "bundle.json").is_file()
    body = request_body(bundle)
    assert set(json.loads(body)) >= {"eeg", "speech", "video"}
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        send = floor_sender(LocalBackend(_serve_config(bundle, False, 1)), body, loop, steps := [])
        assert send() and send()
        assert len(steps) == 2 and all(s["total"] > 0 for s in steps)
    finally:
        _stop_loop(loop, thread)
