"""Bundles written before the package restructure still load and predict the same.

``tests/fixtures/bundles_v0`` holds a fusion and a JMML classifier bundle written by the
code of commit 9def523 (real pipeline, one epoch per stage; see its README.md and
make_fixtures.py) and ``expected.json``: what that code's in-process predictor answered for
seeded raw inputs. Here the current code loads the same folders and must answer the same
(labels equal, every probability within ``expected["tolerance"]``). No Ray, CPU only.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from emoray.bundle import load_bundle, read_bundle_meta, servable
from emoray.predict import EEGInput, Predictor, SpeechInput, VideoInput, js_divergence

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bundles_v0"


def _generator():
    """``make_inputs`` of the script that wrote the fixtures (pure numpy: importing the
    script runs none of its old-code pipeline)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_inputs
EXPECTED = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))
TOL = float(EXPECTED["tolerance"])
STAGES = ("fusion", "classifier")
CASES = [(stage, case) for stage in STAGES for case in EXPECTED["cases"][stage]]


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    spec = EXPECTED["inputs"]
    return _generator()(spec, spec["ch_names"])


@pytest.fixture(scope="module")
def inputs(arrays) -> dict:
    spec = EXPECTED["inputs"]
    return {"eeg": EEGInput(arrays["eeg"], spec["eeg_sfreq"], list(spec["ch_names"])),
            "speech": SpeechInput(arrays["speech"], spec["speech_rate"]),
            "video": VideoInput(arrays["video"], fps=spec["video_fps"])}


@pytest.fixture(scope="module")
def predictors() -> dict:
    return {stage: Predictor.from_bundle(FIXTURES / stage, device="cpu") for stage in STAGES}


def test_inputs_are_the_ones_the_old_code_saw(arrays):
    digest = {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()[:16]
              for k, v in arrays.items()}
    assert digest == EXPECTED["inputs"]["sha256_16"], (
        "the seeded inputs differ from the ones expected.json was made with (numpy's "
        "random stream changed?); the comparisons below would be meaningless")


@pytest.mark.parametrize("stage", STAGES)
def test_read_bundle_meta_reports_the_stage(stage):
    meta = read_bundle_meta(FIXTURES / stage)
    assert meta["stage"] == stage
    assert meta["format"] == 1
    assert meta["contract"].eeg.channels == EXPECTED["inputs"]["ch_names"]
    assert meta["contract"].video.n_frames == 4 and meta["contract"].video.size == 32


@pytest.mark.parametrize("stage", STAGES)
def test_load_bundle_restores_every_weight(stage):
    model, meta = load_bundle(FIXTURES / stage)
    assert meta["stage"] == stage
    assert not model.training
    saved = torch.load(FIXTURES / stage / "model.pt", map_location="cpu", weights_only=True)
    state = model.state_dict()
    assert sorted(state) == sorted(saved)
    for name, value in saved.items():
        assert torch.equal(state[name], value), name


def _close(got, want, where: str) -> None:
    """Numbers within TOL, None/str/bool/int equal, dicts and lists element-wise."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), where
        for k in want:
            _close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _close(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert isinstance(got, (int, float)) and math.isclose(got, want, rel_tol=0,
                                                              abs_tol=TOL), \
            f"{where}: {got} vs expected {want}"
    else:
        assert got == want, f"{where}: {got!r} vs expected {want!r}"


@pytest.mark.parametrize("stage,case", CASES)
def test_prediction_matches_the_old_code(stage, case, predictors, inputs):
    want = EXPECTED["cases"][stage][case]
    predictor = predictors[stage]
    assert predictor.stage == stage
    got = predictor.predict(**{m: inputs[m] for m in case.split("+")}).to_dict()
    where = f"{stage}[{case}]"
    assert got["label"] == want["label"], where
    assert list(got["probabilities"]) == list(want["probabilities"]), f"{where}: classes"
    for name, p in want["probabilities"].items():
        assert abs(got["probabilities"][name] - p) <= TOL, f"{where}.{name}"
    # the rest of the answer too: modalities, per-modality predictions, attention mass,
    # valence/arousal, incongruence, path, segments, ignored modalities
    conflict, old = got.pop("incongruence"), want.get("incongruence")
    _close(got, {k: v for k, v in want.items() if k != "incongruence"}, where)
    assert (conflict is None) == (old is None), where
    if old is not None:
        # since stop 23 the incongruence compares what is expressed (speech, averaged with
        # the face's video-only distribution when the model has one) with EEG
        for key in ("speech", "eeg", "threshold"):
            _close(conflict[key], old[key], f"{where}.incongruence.{key}")
        per = want["per_modality"]
        shown = [m for m in ("speech", "video") if m in per]
        assert conflict["expressed_by"] == shown, where
        expressed = np.mean([list(per[m]["probabilities"].values()) for m in shown], 0)
        eeg = list(per["eeg"]["probabilities"].values())
        _close(conflict["score"], js_divergence(expressed, eeg), f"{where}.incongruence")
        if shown == ["speech"]:                            # unchanged without video
            _close(conflict, {**old, "expressed": old["speech"], "expressed_by": ["speech"]},
                   f"{where}.incongruence")


@pytest.mark.parametrize("stage,model", [("fusion", "fusion"), ("classifier", "jmml")])
def test_old_bundles_name_no_model_and_are_read_through_their_stage(stage, model):
    raw = json.loads((FIXTURES / stage / "bundle.json").read_text())
    assert "model" not in raw and "servable" not in raw       # written before both existed
    meta = read_bundle_meta(FIXTURES / stage)
    assert meta["model"] == model and servable(meta)


@pytest.mark.parametrize("stage,case", [("fusion", "eeg"), ("classifier", "eeg+speech")])
def test_old_bundles_serve_the_same_answers_over_http(stage, case, arrays):
    """The plain FastAPI server (the Serve router's own code on uvicorn) on an old bundle,
    over real HTTP with JSON bodies."""
    import threading
    import time

    import requests
    import uvicorn

    from emoray.serving.api import make_app
    from emoray.serving.app import LocalBackend

    spec = EXPECTED["inputs"]
    body = {"eeg": {"data": arrays["eeg"].tolist(), "sfreq": spec["eeg_sfreq"],
                    "ch_names": list(spec["ch_names"])},
            "speech": {"samples": arrays["speech"].tolist(),
                       "sample_rate": spec["speech_rate"]}}
    body = {m: body[m] for m in case.split("+")}
    backend = LocalBackend({"checkpoint": str(FIXTURES / stage), "device": "cpu"})
    server = uvicorn.Server(uvicorn.Config(make_app(backend), host="127.0.0.1", port=0,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        answer = requests.post(f"http://127.0.0.1:{port}/v1/predict", json=body, timeout=60)
    finally:
        server.should_exit = True
        thread.join(10)
    assert answer.status_code == 200, answer.text
    got, want = answer.json(), EXPECTED["cases"][stage][case]
    assert got["label"] == want["label"]
    _close(got["probabilities"], want["probabilities"], f"http {stage}[{case}]")
