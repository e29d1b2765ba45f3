"""The API against a hostile client, on real HTTP (uvicorn over the in-process backend, the
v0 fusion bundle; the Serve router answers with the same functions): the framework's own
errors in the documented shape, invalid Unicode in keys, values no EEG or waveform can
hold, work-amplifying video within the caps, the per-request time limit, what the open
endpoints reveal, and the docs behind the key."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import requests

from conftest import plain_server
from emoray.predict import EEGInput, SpeechInput, VideoInput
from emoray.serving.api import Refused, check_answer
from emoray.serving.client import binary_request, json_request

BUNDLE = Path(__file__).resolve().parents[1] / "fixtures" / "bundles_v0" / "fusion"
KEY_ENV, KEY = "EMORAY_HARDENING_KEY", "k3y-for-hardening"


@contextmanager
def _server(**settings):
    from emoray.serving.app import LocalBackend

    backend = LocalBackend({"checkpoint": str(BUNDLE), "device": "cpu", **settings})
    with plain_server(backend, log_level="critical") as url:
        yield url, backend


@pytest.fixture(scope="module")
def keyed():
    os.environ[KEY_ENV] = KEY
    try:
        with _server(api_key_env=KEY_ENV, max_pixels=1_000_000) as (url, backend):
            yield url, backend
    finally:
        os.environ.pop(KEY_ENV, None)


def _error(r: requests.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert set(body) == {"error"} and body["error"]["status"] == status, body
    assert body["error"]["message"], body
    return body["error"]


def _signals(backend, seconds: float = 2.0):
    info = backend.info()
    rng = np.random.default_rng(0)
    names = info["eeg"]["channels"]
    eeg = EEGInput(rng.normal(0, 2e-5, (len(names), int(100 * seconds))).astype(np.float32),
                   100.0, names)
    speech = SpeechInput(rng.uniform(-0.1, 0.1, int(16000 * seconds)).astype(np.float32),
                         16000)
    return eeg, speech


def test_framework_errors_come_in_the_documented_shape(keyed):
    url, _ = keyed
    h = {"X-API-Key": KEY}
    assert "no such endpoint" in _error(requests.get(url + "/nope", headers=h), 404)["message"]
    assert _error(requests.get(url + "/v1/predict", headers=h), 405)["field"] == "path"
    assert _error(requests.delete(url + "/v1/model", headers=h), 405)["kind"] == "http"
    err = _error(requests.post(url + "/v1/subjects/%20%0A/calibration", headers=h,
                               json={}), 422)
    assert err["field"] == "subject"


def test_unpaired_surrogates_in_keys_and_values_are_refused_readably(keyed):
    url, _ = keyed
    body = b'{"eeg": {"data": [[1]], "sfreq": 1, "ch_names": ["Cz"], "\\ud800x": 1}}'
    err = _error(requests.post(url + "/v1/predict", data=body, headers={
        "X-API-Key": KEY, "content-type": "application/json"}), 422)
    assert "\\ud800" in err["message"] or "\\ud800" in (err["field"] or "")
    value = b'{"speech": {"samples": [0.1], "sample_rate": "\\udfff"}}'
    _error(requests.post(url + "/v1/predict", data=value, headers={
        "X-API-Key": KEY, "content-type": "application/json"}), 422)


def test_values_no_eeg_or_waveform_can_hold_are_refused_naming_the_field(keyed):
    url, backend = keyed
    eeg, speech = _signals(backend)
    huge = {"eeg": {"data": (eeg.data.astype(float) + 0).tolist(), "sfreq": 100.0,
                    "ch_names": list(eeg.ch_names)}}
    huge["eeg"]["data"][3][7] = 1e308
    err = _error(requests.post(url + "/v1/predict", json=huge, headers={"X-API-Key": KEY}),
                 422)
    assert err["field"] == "eeg.data"
    cases = {"eeg.data": dict(eeg=EEGInput(eeg.data * 1e6, 100.0, eeg.ch_names)),  # in uV
             "speech.samples": dict(speech=SpeechInput(speech.samples * 3e4, 16000))}
    for field, kw in cases.items():
        err = _error(requests.post(url + "/v1/predict", files=binary_request(**kw),
                                   headers={"X-API-Key": KEY}), 422)
        assert err["field"] == field and "expected" in err["message"], err
    ok = requests.post(url + "/v1/predict", files=binary_request(eeg=eeg, speech=speech),
                       headers={"X-API-Key": KEY})
    assert ok.status_code == 200 and ok.json()["label"]


def test_a_non_finite_answer_is_a_422_naming_the_modalities():
    check_answer({"probabilities": {"a": 0.5, "b": 0.5}, "modalities": ["eeg"]})
    with pytest.raises(Refused) as err:
        check_answer({"probabilities": {"a": float("nan")}, "per_modality": {},
                      "modalities": ["eeg", "speech"]})
    assert err.value.status == 422 and err.value.field == "eeg+speech"


def test_video_over_the_request_pixel_budget_is_refused_before_decoding(keyed, tmp_path):
    from emoray.io.video import encode_jpeg, write_mp4

    url, _ = keyed
    frames = np.zeros((8, 480, 640, 3), dtype=np.uint8)       # 2.5 Mpx > 1 Mpx budget
    for files in (binary_request(video=VideoInput(frames, 4.0), video_as_jpeg=True),
                  [("video", (f"f{i}.jpg", b, "image/jpeg"))
                   for i, b in enumerate(encode_jpeg(frames))] + [("video_fps", (None, "4"))]):
        err = _error(requests.post(url + "/v1/predict", files=files,
                                   headers={"X-API-Key": KEY}), 422)
        assert err["field"] == "video" and "serve.max_pixels" in err["message"]
    write_mp4(tmp_path / "big.mp4", frames, 4.0)
    err = _error(requests.post(url + "/v1/predict", headers={"X-API-Key": KEY}, files=[
        ("video", ("big.mp4", (tmp_path / "big.mp4").read_bytes(), "video/mp4"))]), 422)
    assert "serve.max_pixels" in err["message"]
    small = encode_jpeg(frames[:2, :240, :320])                # 0.15 Mpx: fine
    body = json_request(video=VideoInput(small, 2.0))
    assert requests.post(url + "/v1/predict", json=body,
                         headers={"X-API-Key": KEY}).status_code == 200


def test_open_endpoints_reveal_no_paths_or_pids_and_docs_need_the_key(keyed):
    url, _ = keyed
    health = requests.get(url + "/v1/health").json()
    assert set(health) == {"status", "model_version", "modalities"}
    info = requests.get(url + "/v1/model", headers={"X-API-Key": KEY}).json()
    assert str(BUNDLE) not in json.dumps(info) and "source" not in info
    assert info["eeg"]["unit"] == "V" and info["eeg"]["max_abs"] == 1.0
    for path in ("/openapi.json", "/docs"):
        assert _error(requests.get(url + path), 401)["field"] == "X-API-Key"
        assert requests.get(url + path, headers={"X-API-Key": KEY}).status_code == 200
    spec = requests.get(url + "/openapi.json", headers={"X-API-Key": KEY}).json()
    assert "/v1/predict" in spec["paths"] and "/docs" not in spec["paths"]


def test_public_docs_switch_and_the_request_time_limit():
    with _server(public_docs=True, request_timeout_s=0.001) as (url, backend):
        assert requests.get(url + "/openapi.json").status_code == 200
        eeg, speech = _signals(backend, 4.0)
        err = _error(requests.post(url + "/v1/predict",
                                   files=binary_request(eeg=eeg, speech=speech)), 504)
        assert err["kind"] == "timeout" and "serve.request_timeout_s" in err["message"]
        assert requests.get(url + "/v1/health").status_code == 200       # still answering
