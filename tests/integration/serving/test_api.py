"""The API through Serve: health, the model card, the key and the docs; every modality subset
over JSON, binary and multipart requests answering as the in-process model; the CLI client;
subject calibration over HTTP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests

from serve_checks import close, server_steps
from emoray.data.shards import read_metadata, shard_files, unflatten
from emoray.predict import EEGInput, Predictor, SpeechInput, VideoInput
from emoray.serving.client import json_request, predict_files

from .served import KEY, post

pytestmark = pytest.mark.integration

SUBSETS = [("eeg",), ("speech",), ("video",), ("eeg", "speech"), ("eeg", "video"),
           ("speech", "video"), ("eeg", "speech", "video")]


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
    assert post(url, json_request(speech=record["speech"]), key=None).status_code == 401

    assert requests.get(url + "/openapi.json", timeout=30).status_code == 401   # key set
    spec = requests.get(url + "/openapi.json", headers={"X-API-Key": KEY}, timeout=30).json()
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
    assert {"PredictRequest", "EEGJson", "PredictResponse"} <= set(spec["components"]["schemas"])
    assert requests.get(url + "/docs", headers={"X-API-Key": KEY}, timeout=30).status_code == 200
    missing = requests.get(url + "/v2/predict", headers={"X-API-Key": KEY}, timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["status"] == 404


def test_the_router_answers_on_its_direct_ingress_port_as_through_the_proxy(served, record):
    """Ray's high-throughput mode (the embedded Ray's default, ``runtime.EMBEDDED_ENV``):
    the one router replica also answers HTTP on its own port, on loopback like the proxy,
    with the same key, the same refusals and the same answers."""
    from ray.serve._private.constants import (RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT,
                                              RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT)

    from emoray.serving.app import direct_ingress_urls

    (direct,) = direct_ingress_urls("fusion")                 # one router replica
    host, port = direct.removeprefix("http://").rsplit(":", 1)
    assert direct != served["url"] and host == "127.0.0.1"
    assert RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT <= int(port) <= RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT
    assert requests.get(direct + "/v1/model", timeout=30).status_code == 401
    body = json_request(eeg=record["eeg"], speech=record["speech"], video=record["video"])
    via_proxy, via_port = post(served["url"], body), post(direct, body)
    assert via_proxy.status_code == via_port.status_code == 200, via_port.text
    close(via_port.json()["probabilities"], via_proxy.json()["probabilities"], tol=1e-6)
    bad = dict(body, speech={**body["speech"], "sample_rate": -1})
    refused = post(direct, bad)
    assert refused.status_code == 422 and refused.json()["error"]["field"].startswith("speech")
    assert requests.get(direct + "/v1/health", timeout=30).json()["status"] == "ok"


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
        answer = post(url, body)
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
        answer = post(url, json_request(**{m: v for m, v in inputs.items() if v is not None}),
                       path="/v1/subjects/calib-1/calibration" + ("?reset=true" if i == 0 else ""))
        assert answer.status_code == 200, answer.text
    summary = answer.json()
    assert summary["subject"] == "calib-1" and summary["segments"] == len(rows)
    assert set(summary["modalities"]) == {"eeg", "speech", "video"}

    body = json_request(eeg=record["eeg"], speech=record["speech"])
    pooled = post(url, body).json()
    training = post(url, body, path=f"/v1/predict?subject={subject}").json()
    calibrated = post(url, body, path="/v1/predict?subject=calib-1").json()
    unknown = post(url, body, path="/v1/predict?subject=never-seen").json()
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

    bad = post(url, body, path="/v1/predict?subject=" + "x" * 200)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "subject"
    empty = post(url, {"eeg": None}, path="/v1/subjects/calib-2/calibration")
    assert empty.status_code in (400, 422)
