"""Hostile input through Serve: hundreds of malformed requests and bytes that are not HTTP get
a 4xx in the documented shape (or the server's own 400), never a 5xx; the live stream
answers as /v1/predict and closes every malformed stream with a code and a reason; the
same router replicas answer afterwards.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from serve_checks import close
from emoray.predict import EEGInput, SpeechInput
from emoray.serving.client import ClientError, json_request

from .served import KEY, post, router_actors

pytestmark = pytest.mark.integration


def test_fuzz_of_malformed_requests_gets_4xx_and_the_server_stays_up(served, record,
                                                                     tmp_path):
    from serve_fuzz import file_bytes, malformed_requests, not_http

    url = served["url"]
    routers = router_actors()
    assert routers
    eeg, speech = record["eeg"], record["speech"]
    short = {"eeg": EEGInput(eeg.data[:, : int(1.2 * eeg.sfreq)], eeg.sfreq, eeg.ch_names),
             "speech": SpeechInput(speech.samples[: int(1.2 * speech.sample_rate)],
                                   speech.sample_rate), "video": record["video"]}
    body = json_request(**short)
    cap = int(served["fusion"].max_body_mb * (1 << 20))
    cases = malformed_requests(body, file_bytes(record, tmp_path), KEY, cap, seed=1)
    assert len(cases) >= 500

    def send(case):
        label, kwargs = case
        kwargs = dict(kwargs)
        path, method = kwargs.pop("path", "/v1/predict"), kwargs.pop("method", "post")
        try:
            r = requests.request(method, url + path, timeout=60, **kwargs)
        except requests.ConnectionError as err:   # the server may close on an over-cap body
            return label, None, str(err)
        return label, r.status_code, r.text[:300]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, cases))
    bad = [(label, status, text) for label, status, text in results
           if status is None or not 400 <= status < 500]
    assert not bad, f"{len(bad)} of {len(cases)} malformed requests not refused with 4xx: " \
                    f"{bad[:8]}"
    shapeless = [(label, status, text[:80]) for label, status, text in results
                 if status is not None and not text.startswith('{"error"')]
    assert not shapeless, f"4xx not in the documented shape: {shapeless[:8]}"
    for label, status, text in results:
        if status != 401 and text.startswith('{"error"'):
            err = json.loads(text)["error"] if len(text) < 300 else None
            assert err is None or err["message"], label
    # bytes that are not HTTP: the server's own 400 (plain text) or a closed connection
    host, port = url.rsplit("/", 1)[1].split(":")
    raw = not_http(host, int(port))
    for label, line in raw.items():
        assert line is None or line.startswith("HTTP/1.1 4"), (label, line)
    statuses = sorted({status for _, status, _ in results if status is not None})
    print(f"fuzz: {len(cases)} malformed requests, statuses {statuses}; {len(raw)} not-HTTP "
          f"byte sequences, answers {sorted(set(map(str, raw.values())))}")
    # still answering, with the same router process (no replica crashed)
    assert router_actors() == routers
    assert post(url, json_request(speech=record["speech"])).status_code == 200


def test_live_stream_through_serve_answers_as_predict_and_refuses_what_is_malformed(
        served, record):
    """/v1/stream through the Serve proxy and router: a window answers as /v1/predict of
    the same signal; without the key the stream is refused (1008); every fuzz case closes
    with a code and a reason; the router process survives and streams on."""
    import asyncio

    from stream_fuzz import check_all, malformed_streams
    from emoray.serving.stream_client import first_message, replay, ws_url

    url = served["url"]
    routers = router_actors()
    assert routers
    eeg, speech = record["eeg"], record["speech"]
    window = min(eeg.data.shape[1] / eeg.sfreq, len(speech.samples) / speech.sample_rate)
    got = asyncio.run(replay(url, eeg, speech, api_key=KEY, window_seconds=window,
                             hop_seconds=window, speed=0))
    assert [a["index"] for a in got.answers] == [0] and got.latencies_ms[0] > 0
    want = post(url, json_request(eeg=eeg, speech=speech)).json()
    close(got.answers[0]["probabilities"], want["probabilities"], tol=1e-4)
    with pytest.raises(ClientError, match="API key"):
        asyncio.run(replay(url, eeg, speech, speed=0))
    cases = malformed_streams(first_message(eeg, speech), b"e" + eeg.data[:, :10].T.astype(
        "<f4").tobytes(), b"s" + speech.samples[:800].astype("<f4").tobytes(), KEY,
        eeg.sfreq, speech.sample_rate, len(eeg.ch_names), first_timeout=2.0)
    assert not check_all(ws_url(url), cases, KEY)
    assert router_actors() == routers
    again = asyncio.run(replay(url, eeg, speech, api_key=KEY, window_seconds=window,
                               speed=0))
    close(again.answers[0]["probabilities"], want["probabilities"], tol=1e-4)
