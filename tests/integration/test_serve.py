"""Ray Serve end to end: real HTTP on a real local Serve, one application deployed once.

The session's tiny fusion bundle, API key on, a 4 MiB body cap, the speech encoder
autoscaled with short delays, the EEG encoder on two fixed replicas (the replica-kill
target). The same API on a plain uvicorn server is tested in test_serve_plain.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests

from conftest import wait_for
import sockets
from serve_checks import close, one_record, server_steps
from emoray.config import ServeConfig
from emoray.data.shards import read_metadata, shard_files, unflatten
from emoray.predict import EEGInput, Predictor, SpeechInput, VideoInput
from emoray.serving.client import ClientError, json_request, predict_files

pytestmark = pytest.mark.integration

KEY_ENV, KEY = "EMORAY_TEST_API_KEY", "s3cret-test-key"
FAST_SCALE = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
              "upscale_delay_s": 0.5, "downscale_delay_s": 3, "metrics_interval_s": 0.5,
              "look_back_period_s": 2}
LEAN = {"num_cpus": 0.05}
SUBSETS = [("eeg",), ("speech",), ("video",), ("eeg", "speech"), ("eeg", "video"),
           ("speech", "video"), ("eeg", "speech", "video")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _replicas(app: str, deployment: str) -> int:
    from ray import serve

    status = serve.status().applications[app].deployments[deployment]
    return int(status.replica_states.get("RUNNING", 0))


@pytest.fixture(scope="module")
def record(eav_features):
    return one_record(eav_features)


@pytest.fixture(scope="module")
def served(ray_cluster, fusion_run):
    """The fusion application on Serve; shut down after the module."""
    from ray import serve

    from emoray.serving.app import build_app

    os.environ[KEY_ENV] = KEY
    port = _free_port()
    deps = {"router": {"autoscaling": None, **LEAN},
            "eeg": {"autoscaling": None, "num_replicas": 2, **LEAN},
            "speech": {"autoscaling": FAST_SCALE, "max_batch_size": 4, **LEAN},
            "video": {"autoscaling": None, **LEAN}}
    fusion_cfg = ServeConfig(checkpoint=str(fusion_run["checkpoint"]), port=port,
                             api_key_env=KEY_ENV, max_body_mb=4.0, deployments=deps,
                             stream={"first_message_timeout_s": 2, "idle_timeout_s": 10})
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    t0 = time.monotonic()
    serve.run(build_app(fusion_cfg), name="fusion", route_prefix="/")
    print(f"application deployed in {time.monotonic() - t0:.1f} s")
    yield {"url": f"http://127.0.0.1:{port}", "fusion": fusion_cfg,
           "bundle": Path(fusion_run["checkpoint"])}
    serve.shutdown()
    os.environ.pop(KEY_ENV, None)


def _router_actors() -> set[str]:
    """Ids of the live router replicas' actors (the health answer shows no pid): a router
    that crashed and was replaced changes the set."""
    import ray
    from ray.util.state import list_actors

    here = ray.get_runtime_context().gcs_address       # this session's Ray, not another's
    return {a.actor_id for a in list_actors(address=here, filters=[("state", "=", "ALIVE")],
                                            limit=1000)
            if "FusionRouter" in (a.class_name or "") or "FusionRouter" in (a.name or "")}


def _post(url: str, body: dict, key: str | None = KEY, path: str = "/v1/predict"):
    headers = {"X-API-Key": key} if key else {}
    return requests.post(url + path, json=body, headers=headers, timeout=60)


def test_health_model_docs_and_auth(served, record):
    url = served["url"]
    health = requests.get(url + "/v1/health?deep=true", timeout=30).json()
    assert health["status"] == "ok"
    assert health["encoders"] == {"eeg": "ok", "speech": "ok", "video": "ok"}

    refused = requests.get(url + "/v1/model", timeout=30)
    assert refused.status_code == 401 and refused.json()["error"]["field"] == "X-API-Key"
    wrong = requests.get(url + "/v1/model", headers={"X-API-Key": "nope"}, timeout=30)
    assert wrong.status_code == 401
    info = requests.get(url + "/v1/model", headers={"X-API-Key": KEY}, timeout=30).json()
    meta = json.loads((served["bundle"] / "bundle.json").read_text())
    assert info["label_names"] == meta["label_names"] and info["stage"] == "fusion"
    assert info["eeg"]["channels"] == meta["contract"]["eeg"]["channels"]
    assert info["speech"]["sample_rate"] == meta["contract"]["audio"]["sample_rate"]
    assert len(info["version"]) == 12 and info["version"] == health["model_version"]
    assert _post(url, json_request(speech=record["speech"]), key=None).status_code == 401

    assert requests.get(url + "/openapi.json", timeout=30).status_code == 401   # key set
    spec = requests.get(url + "/openapi.json", headers={"X-API-Key": KEY}, timeout=30).json()
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
    assert {"PredictRequest", "EEGJson", "PredictResponse"} <= set(spec["components"]["schemas"])
    assert requests.get(url + "/docs", headers={"X-API-Key": KEY}, timeout=30).status_code == 200
    missing = requests.get(url + "/v2/predict", headers={"X-API-Key": KEY}, timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["status"] == 404


def test_every_modality_subset_over_json_matches_in_process(served, record):
    """Each subset answers 200 with the in-process prediction (JPEG frames on both sides),
    EEG channels shuffled in the request."""
    url = served["url"]
    local = Predictor.from_bundle(served["bundle"], device="cpu")
    eeg = record["eeg"]
    order = np.random.default_rng(0).permutation(len(eeg.ch_names))
    shuffled = EEGInput(eeg.data[order], eeg.sfreq, [eeg.ch_names[i] for i in order])
    inputs = {"eeg": shuffled, "speech": record["speech"], "video": record["video"]}
    for subset in SUBSETS:
        given = {m: inputs[m] for m in subset}
        body = json_request(**given, speech_as_file=subset == ("speech", "video"))
        answer = _post(url, body)
        assert answer.status_code == 200, (subset, answer.text)
        got = answer.json()
        assert got["modalities"] == list(subset) and set(got["per_modality"]) == set(subset)
        assert set(server_steps(answer)) == {"read", "decode", "prepare", "combine", "total",
                                       *subset}       # one encoder call per modality
        frames = body.get("video", {}).get("frames_base64")
        if frames:                               # the same JPEG bytes the server decoded
            import base64

            given["video"] = VideoInput([base64.b64decode(f) for f in frames],
                                        record["video"].fps)
        expected = local.predict(**given)
        assert got["label"] == expected.label
        close(got["probabilities"], expected.probabilities)
        close(got["attention_mass"], expected.attention_mass)
        for m in subset:
            close(got["per_modality"][m]["probabilities"],
                   expected.per_modality[m].probabilities)
        assert (got["incongruence"] is not None) == ({"eeg", "speech"} <= set(subset))
        if got["incongruence"] is not None:      # the face counts as expressed when given
            assert got["incongruence"]["expressed_by"] == [m for m in ("speech", "video")
                                                           if m in subset]
            assert got["incongruence"]["score"] == pytest.approx(
                expected.incongruence.score, abs=1e-4)
        assert got["valence"] is not None and -1 <= got["valence"] <= 1


def test_binary_requests_answer_as_json_does(served, record, tmp_path):
    """The same signals sent as JSON, as .npy (the client's default), .npz and raw parts,
    and as files decoded by the client (``encoding="arrays"``/``"json"``) get the same
    probabilities; raw uint8 frames answer as the in-process model given those frames."""
    import io

    from emoray.io.audio import write_audio
    from emoray.io.eeg import write_eeg
    from emoray.io.video import encode_jpeg
    from emoray.serving.client import predict_signals
    from emoray.types import EEG, Audio

    url = served["url"]
    eeg = EEGInput(np.asarray(record["eeg"].data, np.float32), record["eeg"].sfreq,
                   list(record["eeg"].ch_names))                          # (C, T) f32
    speech = record["speech"]
    pcm = SpeechInput(np.clip(np.round(speech.samples * 32768), -32768, 32767)
                      .astype(np.int16), speech.sample_rate)              # (T,) i16
    jpegs = VideoInput(encode_jpeg(record["video"].frames), record["video"].fps)
    for given in ({"eeg": eeg, "speech": speech, "video": jpegs}, {"speech": pcm},
                  {"eeg": eeg, "speech": pcm}):
        as_json = predict_signals(url, **given, encoding="json", api_key=KEY)
        as_npy = predict_signals(url, **given, api_key=KEY)
        assert as_npy["modalities"] == list(given)
        close(as_npy["probabilities"], as_json["probabilities"], tol=1e-5)
        for m in given:
            close(as_npy["per_modality"][m]["probabilities"],
                   as_json["per_modality"][m]["probabilities"], tol=1e-5)

    npz = io.BytesIO()
    np.savez_compressed(npz, data=eeg.data, sfreq=eeg.sfreq, ch_names=np.array(eeg.ch_names))
    answer = requests.post(url + "/v1/predict", headers={"X-API-Key": KEY}, timeout=60,
                           files=[("eeg", ("eeg.npz", npz.getvalue())),
                                  ("speech", ("speech.bin", pcm.samples.astype("<i2").tobytes(),
                                              "application/octet-stream"))],
                           data={"speech_dtype": "int16",
                                 "speech_sample_rate": str(pcm.sample_rate)})
    assert answer.status_code == 200, answer.text
    as_json = predict_signals(url, eeg=eeg, speech=pcm, encoding="json", api_key=KEY)
    close(answer.json()["probabilities"], as_json["probabilities"], tol=1e-5)
    steps = server_steps(answer)
    print(f"npz + raw int16: decode {steps['decode']:.1f} ms of {steps['total']:.1f} ms")

    raw_frames = predict_signals(url, video=record["video"], api_key=KEY)   # uint8 .npy
    local = Predictor.from_bundle(served["bundle"], device="cpu")
    close(raw_frames["probabilities"], local.predict(video=record["video"]).probabilities)

    write_eeg(tmp_path / "rec.fif", EEG(data=eeg.data, sfreq=eeg.sfreq,
                                        ch_names=list(eeg.ch_names), source="test"))
    write_audio(tmp_path / "rec.wav", Audio(samples=speech.samples,
                                            sample_rate=speech.sample_rate, source="t"))
    files = [tmp_path / "rec.fif", tmp_path / "rec.wav"]
    answers = {enc: predict_files(url, files, api_key=KEY, encoding=enc)
               for enc in ("binary", "arrays", "json")}
    for enc in ("arrays", "json"):
        close(answers[enc]["probabilities"], answers["binary"]["probabilities"], tol=1e-5)


def test_multipart_real_files_and_the_cli_client(served, record, tmp_path):
    from emoray.io.audio import write_audio
    from emoray.io.eeg import write_eeg
    from emoray.io.video import encode_jpeg, write_mp4
    from emoray.types import EEG, Audio

    eeg, speech, video = record["eeg"], record["speech"], record["video"]
    for ext in ("edf", "bdf", "fif"):
        write_eeg(tmp_path / f"rec.{ext}", EEG(data=eeg.data, sfreq=eeg.sfreq,
                                               ch_names=list(eeg.ch_names), source="test"))
    for ext in ("wav", "flac"):
        write_audio(tmp_path / f"rec.{ext}", Audio(samples=speech.samples,
                                                   sample_rate=speech.sample_rate, source="t"))
    write_mp4(tmp_path / "rec.mp4", video.frames, video.fps)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, blob in enumerate(encode_jpeg(video.frames)):
        (frames / f"{i:03d}.jpg").write_bytes(blob)
    url = served["url"]
    combos = {("eeg", "speech", "video"): ["rec.edf", "rec.wav", "rec.mp4"],
              ("eeg", "speech"): ["rec.bdf", "rec.flac"],
              ("eeg", "video"): ["rec.fif", "frames"], ("speech",): ["rec.flac"]}
    answers = {}
    for mods, names in combos.items():
        answer = predict_files(url, [tmp_path / n for n in names], api_key=KEY,
                               video_fps=video.fps if "frames" in names else None)
        assert answer["modalities"] == list(mods), names
        answers[names[0]] = answer
    # the same EEG through EDF (16-bit) and FIF (float) predicts nearly the same
    fif_only = predict_files(url, [tmp_path / "rec.fif"], api_key=KEY)
    edf_only = predict_files(url, [tmp_path / "rec.edf"], api_key=KEY)
    close(fif_only["probabilities"], edf_only["probabilities"], tol=0.05)

    env = dict(os.environ, EMORAY_KEY=KEY)
    cli = [sys.executable, "-m", "emoray", "predict", "--url", url, "--api-key-env",
           "EMORAY_KEY"]
    done = subprocess.run(cli + [str(tmp_path / "rec.wav"), str(tmp_path / "rec.fif")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "expressed (speech) vs EEG" in done.stdout and fif_only["model_version"] in done.stdout
    as_json = subprocess.run(cli + ["--encoding", "json", "--json", str(tmp_path / "rec.wav"),
                                    str(tmp_path / "rec.fif")],
                             capture_output=True, text=True, env=env, timeout=120)
    assert as_json.returncode == 0, as_json.stderr
    both = predict_files(url, [tmp_path / "rec.wav", tmp_path / "rec.fif"], api_key=KEY)
    close(json.loads(as_json.stdout)["probabilities"], both["probabilities"], tol=1e-5)
    refused = subprocess.run(cli[:-2] + [str(tmp_path / "rec.wav")], capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 2 and "X-API-Key" in refused.stderr
    gone = subprocess.run(cli[:4] + ["--url", "http://127.0.0.1:9", str(tmp_path / "rec.wav")],
                          capture_output=True, text=True, timeout=120)
    assert gone.returncode == 2 and "emoray serve" in gone.stderr


def test_fuzz_of_malformed_requests_gets_4xx_and_the_server_stays_up(served, record,
                                                                     tmp_path):
    from serve_fuzz import file_bytes, malformed_requests, not_http

    url = served["url"]
    routers = _router_actors()
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
    assert _router_actors() == routers
    assert _post(url, json_request(speech=record["speech"])).status_code == 200


def test_live_stream_through_serve_answers_as_predict_and_refuses_what_is_malformed(
        served, record):
    """/v1/stream through the Serve proxy and router: a window answers as /v1/predict of
    the same signal; without the key the stream is refused (1008); every fuzz case closes
    with a code and a reason; the router process survives and streams on."""
    import asyncio

    from stream_fuzz import check_all, malformed_streams
    from emoray.serving.stream_client import first_message, replay, ws_url

    url = served["url"]
    routers = _router_actors()
    assert routers
    eeg, speech = record["eeg"], record["speech"]
    window = min(eeg.data.shape[1] / eeg.sfreq, len(speech.samples) / speech.sample_rate)
    got = asyncio.run(replay(url, eeg, speech, api_key=KEY, window_seconds=window,
                             hop_seconds=window, speed=0))
    assert [a["index"] for a in got.answers] == [0] and got.latencies_ms[0] > 0
    want = _post(url, json_request(eeg=eeg, speech=speech)).json()
    close(got.answers[0]["probabilities"], want["probabilities"], tol=1e-4)
    with pytest.raises(ClientError, match="API key"):
        asyncio.run(replay(url, eeg, speech, speed=0))
    cases = malformed_streams(first_message(eeg, speech), b"e" + eeg.data[:, :10].T.astype(
        "<f4").tobytes(), b"s" + speech.samples[:800].astype("<f4").tobytes(), KEY,
        eeg.sfreq, speech.sample_rate, len(eeg.ch_names), first_timeout=2.0)
    assert not check_all(ws_url(url), cases, KEY)
    assert _router_actors() == routers
    again = asyncio.run(replay(url, eeg, speech, api_key=KEY, window_seconds=window,
                               speed=0))
    close(again.answers[0]["probabilities"], want["probabilities"], tol=1e-4)


def test_autoscaling_adds_a_speech_replica_under_a_burst_then_removes_it(served, record):
    url = served["url"]
    body = json_request(speech=record["speech"])
    assert _replicas("fusion", "SpeechEncoder") == 1
    stop, codes = threading.Event(), []

    def client():
        while not stop.is_set():
            codes.append(_post(url, body).status_code)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        t0 = time.monotonic()
        wait_for(lambda: _replicas("fusion", "SpeechEncoder") >= 2, 90,
                 "a second SpeechEncoder replica under the burst", poll=0.5)
        print(f"scaled up after {time.monotonic() - t0:.1f} s of burst")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert codes and set(codes) == {200}
    t0 = time.monotonic()
    wait_for(lambda: _replicas("fusion", "SpeechEncoder") == 1, 90,
             "the SpeechEncoder to scale back to one replica", poll=0.5)
    print(f"scaled down {time.monotonic() - t0:.1f} s after the burst")


def test_killed_encoder_replica_under_load(served, record):
    """One of the two EEG encoder replicas is killed while 4 clients send EEG + speech:
    under 1 % of requests fail, answers are whole again within 15 s, and Serve replaces the
    replica."""
    import ray

    url = served["url"]
    body = json_request(eeg=record["eeg"], speech=record["speech"])
    stop, log, lock = threading.Event(), [], threading.Lock()

    def client():
        while not stop.is_set():
            t = time.monotonic()
            try:
                ok = _post(url, body).status_code == 200
            except requests.RequestException:
                ok = False
            with lock:
                log.append((t, ok))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(3)
        victims = [a for a in ray.util.list_named_actors(all_namespaces=True)
                   if "fusion#EEGEncoder" in a["name"]]
        assert len(victims) == 2, victims
        killed_at = time.monotonic()
        ray.kill(ray.get_actor(victims[0]["name"], namespace=victims[0]["namespace"]),
                 no_restart=True)
        wait_for(lambda: _replicas("fusion", "EEGEncoder") < 2 or
                 time.monotonic() - killed_at > 5, 10, "Serve to notice the kill", poll=0.2)
        replaced = wait_for(lambda: _replicas("fusion", "EEGEncoder") == 2 and
                            time.monotonic(), 120, "a replacement EEGEncoder replica", poll=0.5)
        time.sleep(2)
    finally:
        stop.set()
        for t in threads:
            t.join()
    failed = [t for t, ok in log if not ok]
    rate = len(failed) / len(log)
    last_failure = max(failed, default=killed_at) - killed_at
    print(f"{len(log)} requests, {len(failed)} failed ({100 * rate:.2f} %), last failure "
          f"{last_failure:.1f} s after the kill, replica replaced after "
          f"{replaced - killed_at:.1f} s")
    assert rate < 0.01
    assert last_failure < 15
    assert any(ok for t, ok in log if t > killed_at + last_failure)


def _train_rows_of(eav_features, subject: str) -> list[dict]:
    """The raw record rows of ``subject`` in the training split (what its statistics in
    the bundle were computed from), as model inputs with the JPEG frames as stored."""
    from emoray.train.split import split_records

    train_ids, _ = split_records(shard_files(eav_features / "feat"), None, "feat")
    names = list(read_metadata(eav_features / "rec")["dataset"]["eeg_channels"])
    rows = [r for r in pq.read_table(shard_files(eav_features / "rec")).to_pylist()
            if r["subject"] == subject and r["record_id"] in train_ids]
    return [{"eeg": EEGInput(unflatten(r["eeg"], r["eeg_shape"]), r["eeg_sfreq"], names)
             if r["eeg"] is not None else None,
             "speech": SpeechInput(np.asarray(r["audio"], np.float32), r["audio_rate"])
             if r["audio"] is not None else None,
             "video": VideoInput(list(r["video"]), r["video_fps"])
             if r["video"] is not None else None} for r in sorted(rows, key=lambda r: r["record_id"])]


def test_subject_calibration_round_trips_the_training_statistics(served, record, eav_features):
    """Calibrating a new name with a training subject's own train-split recordings over HTTP
    reproduces the statistics the bundle holds for that subject: answers naming either are
    equal, and the subject's inputs differ from the subject-independent (pooled) ones."""
    url = served["url"]
    subject = min(pq.read_table(shard_files(eav_features / "rec"),
                                columns=["subject"])["subject"].to_pylist())
    rows = _train_rows_of(eav_features, subject)
    assert len(rows) >= 8
    for i, inputs in enumerate(rows):
        answer = _post(url, json_request(**{m: v for m, v in inputs.items() if v is not None}),
                       path="/v1/subjects/calib-1/calibration" + ("?reset=true" if i == 0 else ""))
        assert answer.status_code == 200, answer.text
    summary = answer.json()
    assert summary["subject"] == "calib-1" and summary["segments"] == len(rows)
    assert set(summary["modalities"]) == {"eeg", "speech", "video"}

    body = json_request(eeg=record["eeg"], speech=record["speech"])
    pooled = _post(url, body).json()
    training = _post(url, body, path=f"/v1/predict?subject={subject}").json()
    calibrated = _post(url, body, path="/v1/predict?subject=calib-1").json()
    unknown = _post(url, body, path="/v1/predict?subject=never-seen").json()
    diff = lambda a, b: max(abs(a["probabilities"][k] - b["probabilities"][k])   # noqa: E731
                            for k in a["probabilities"])
    print("calibrated vs training", diff(calibrated, training),
          "training vs pooled", diff(training, pooled))
    assert diff(calibrated, training) < 1e-3
    assert diff(unknown, pooled) < 1e-6
    # the subject's statistics change what the encoders see (the 2-epoch model's answers
    # barely move, so the inputs are compared in process)
    import torch

    from emoray.serving.model import ServedModel

    local_model = ServedModel(served["bundle"], role="all", device="cpu")
    # (video: the contract's EEG and log-mel are already standardised per segment)
    own = local_model.prepare({"video": record["video"], "subject": subject}).inputs[
        "video"]["video"]
    pooled_in = local_model.prepare({"video": record["video"]}).inputs["video"]["video"]
    assert (own - pooled_in).abs().mean() > 0.05
    assert torch.isfinite(own).all()

    local = Predictor.from_bundle(served["bundle"], device="cpu")
    close(local.predict(eeg=record["eeg"], speech=record["speech"],
                         subject=subject).probabilities, training["probabilities"])

    bad = _post(url, body, path="/v1/predict?subject=" + "x" * 200)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "subject"
    empty = _post(url, {"eeg": None}, path="/v1/subjects/calib-2/calibration")
    assert empty.status_code in (400, 422)


def test_removing_a_replica_under_load_fails_no_request(served, record):
    """A downscale while requests run (the EEG encoder 2 -> 1 replica, by redeploying the
    application): the replica removed first finishes what it holds (graceful shutdown
    waits as long as a request may run), so every request answers 200."""
    from ray import serve

    from emoray.serving.app import build_app

    url = served["url"]
    body = json_request(eeg=record["eeg"], speech=record["speech"])
    # (a replica killed by an earlier test may still be coming back)
    wait_for(lambda: _replicas("fusion", "EEGEncoder") == 2, 120, "two EEG replicas")
    stop, codes = threading.Event(), []

    def client():
        while not stop.is_set():
            try:
                codes.append(_post(url, body).status_code)
            except requests.RequestException as err:       # a dropped connection fails too
                codes.append(type(err).__name__)

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(codes) >= 6, 60, "load to start")
        plain = served["fusion"].model_dump()
        plain["deployments"]["eeg"]["num_replicas"] = 1
        serve.run(build_app(ServeConfig.model_validate(plain)), name="fusion",
                  route_prefix="/")
        wait_for(lambda: _replicas("fusion", "EEGEncoder") == 1, 120, "the downscale")
        seen = len(codes)
        wait_for(lambda: len(codes) >= seen + 6, 60, "requests after the downscale")
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    print(f"downscale under load: {len(codes)} requests, {codes.count(200)} answered 200")
    assert len(codes) >= 12 and set(codes) == {200}, [c for c in codes if c != 200][:10]


def test_the_cluster_listens_on_loopback_and_ray_guards_its_one_exception(served):
    """Every listening socket of this session's Ray (GCS, raylet, agents, the proxy, the
    controller, every replica and worker, this driver) is on loopback, but for each Serve
    replica's inter-deployment gRPC server, which Ray 2.60 binds to ``[::]``: a call
    without Ray's token is refused (README "Security")."""
    import grpc

    found = sockets.listening(os.getpid())
    assert sockets.exposed(found) == [], sorted(map(str, found))
    assert any(s.port == int(served["url"].rsplit(":", 1)[1]) and s.loopback for s in found)
    wildcard = [s for s in found if not s.loopback]
    replicas = {s.pid for s in found if s.process.startswith(sockets.RAY_WILDCARD_PROCESS)}
    assert len(replicas) >= 4, sorted(map(str, found))     # router, EEG, speech, video
    assert {s.pid for s in wildcard} == replicas            # one each
    for listener in wildcard:
        with grpc.insecure_channel(f"127.0.0.1:{listener.port}") as channel:
            call = channel.unary_unary("/ray.serve.ASGIService/HandleRequest")
            with pytest.raises(grpc.RpcError) as refused:
                call(b"", timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, listener
    print(f"listening: {len(found)} sockets in {len({s.pid for s in found})} processes, "
          f"{len(found) - len(wildcard)} on loopback, {len(wildcard)} replica gRPC servers "
          f"on {sorted({s.ip for s in wildcard})} refusing calls without the token")
