"""The same HTTP API on a plain uvicorn server over the in-process backend
(:class:`emoray.serving.app.LocalBackend`, the benchmark's FastAPI baseline): the JMML
classifier bundle (speech-only path) served from a ``file://`` URI, and the encoder
micro-batching of concurrent requests. Serve's transport is tested in tests/integration/serving/."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from conftest import plain_server
from emoray.predict import Predictor
from emoray.serving.client import json_request, post_json
from serve_checks import close, one_record, server_steps

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def record(eav_features):
    return one_record(eav_features)


@pytest.fixture(scope="module")
def jmml_http(jmml_run):
    """The JMML classifier bundle behind the same HTTP API on uvicorn, from a file:// URI."""
    from emoray.serving.app import LocalBackend

    bundle = Path(jmml_run[0]["stages"]["classifier"]["bundle"]).resolve()
    backend = LocalBackend({"checkpoint": bundle.as_uri(), "device": "cpu"})
    with plain_server(backend) as url:
        yield {"url": url, "bundle": bundle, "backend": backend}


def test_jmml_speech_only_path_from_a_uri(jmml_http, record):
    url = jmml_http["url"]
    info = requests.get(url + "/v1/model", timeout=30).json()
    assert info["stage"] == "classifier" and info["modalities"] == ["speech", "eeg"]
    speech = post_json(url, json_request(speech=record["speech"]))
    assert speech["path"] == "speech_only" and speech["modalities"] == ["speech"]
    assert speech["incongruence"] is None and -1 <= speech["valence"] <= 1
    both = post_json(url, json_request(eeg=record["eeg"], speech=record["speech"],
                                       video=record["video"]))
    assert both["path"] == "combined" and both["ignored"] == ["video"]
    conflict = both["incongruence"]
    assert 0 <= conflict["score"] <= 1 and conflict["flag"] == (
        conflict["speech"] != conflict["eeg"] and conflict["score"] >= conflict["threshold"])
    # JMML has no video encoder: what is expressed is speech alone
    assert conflict["expressed_by"] == ["speech"] and conflict["expressed"] == conflict["speech"]
    local = Predictor.from_bundle(jmml_http["bundle"], device="cpu")
    close(speech["probabilities"], local.predict(speech=record["speech"]).probabilities)
    only_video = requests.post(url + "/v1/predict", json=json_request(video=record["video"]),
                               timeout=30)
    assert only_video.status_code == 422 and "video" in only_video.json()["error"]["message"]


def test_plain_server_batches_concurrent_requests_without_changing_answers(jmml_http,
                                                                           record):
    """LocalBackend (the benchmark's FastAPI baseline) batches encoder calls per modality
    (MicroBatcher): concurrent answers equal the lone answer, every call went through it."""
    url, batchers = jmml_http["url"], jmml_http["backend"].batchers
    body = json_request(eeg=record["eeg"], speech=record["speech"])
    alone = requests.post(url + "/v1/predict", json=body, timeout=60)
    assert alone.status_code == 200
    assert set(server_steps(alone)) == {"read", "decode", "prepare", "speech", "eeg", "combine",
                                  "total"}
    before = {m: sum(b.sizes) for m, b in batchers.items()}
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: requests.post(url + "/v1/predict", json=body,
                                                        timeout=60), range(16)))
    assert [a.status_code for a in answers] == [200] * 16
    for a in answers:
        close(a.json()["probabilities"], alone.json()["probabilities"], tol=1e-5)
    assert {m: sum(b.sizes) - before[m] for m, b in batchers.items()} == {"speech": 16,
                                                                          "eeg": 16}
