"""`emoray bench serve` without `--checkpoint`: the tiny model the benchmark trains for
itself (the quickstart's fusion recipe) is a servable bundle, and the benchmark's own request, binary and JSON, gets an answer
from it through the in-process floor (the server's decoder, the real contract and model; the
HTTP systems are the benchmark's)."""

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
    # the quickstart's recipe: its encoders, auxiliary heads and per-subject statistics
    config = json.loads((resolve_checkpoint(bundle) / "bundle.json").read_text())["model_config"]
    assert {m: e["name"] for m, e in config["encoders"].items()} == {
        "eeg": "bandpower-mlp", "speech": "speechstats", "video": "vit"}
    assert config["per_modality"] == "aux" and config["fusion"]["fuse_aux"]
    assert (resolve_checkpoint(bundle) / "subject_stats.npz").is_file()
    body, ctype = request_body(bundle, "json")
    assert set(json.loads(body)) >= {"eeg", "speech", "video"} and ctype == "application/json"
    binary, btype = request_body(bundle)                           # the client's default
    assert btype.startswith("multipart/form-data") and len(binary) < len(body)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        backend = LocalBackend(_serve_config(bundle, False, 1))
        for b, t in ((body, ctype), (binary, btype)):
            send = floor_sender(backend, b, t, loop, steps := [])
            assert send() and send()
            assert len(steps) == 2 and all(s["total"] > s["decode"] > 0 for s in steps)
    finally:
        _stop_loop(loop, thread)
