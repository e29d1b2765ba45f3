"""The contract where it scales: the router only checks and routes a request
(:meth:`ServedModel.route`), each modality's deployment applies the contract to its part
(:meth:`ServedModel.prepare_modality`). Split across three role-pruned models, with the
parts pickled as Ray carries them, the tensors equal the in-process ``prepare``; a refusal
raised in a modality's deployment comes back as the same error naming the field."""

from __future__ import annotations

import asyncio
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from emoray.errors import DataError
from emoray.predict import EEGInput, SpeechInput, VideoInput
from emoray.serving.app import LocalBackend, _features
from emoray.serving.model import ServedModel, raise_refusal

BUNDLE = Path(__file__).resolve().parents[1] / "fixtures" / "bundles_v0" / "fusion"


@pytest.fixture(scope="module")
def models() -> dict[str, ServedModel]:
    return {role: ServedModel(BUNDLE, role=role, device="cpu")
            for role in ("all", "router", "eeg", "speech", "video")}


def _jpegs(frames: np.ndarray) -> list[bytes]:
    from PIL import Image

    blobs = []
    for f in frames:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="JPEG", quality=90)
        blobs.append(buf.getvalue())
    return blobs


def _sample(models, seconds: float = 10.0, jpeg: bool = False) -> dict:
    rng = np.random.default_rng(0)
    info = models["all"].info()
    ch, sf = info["eeg"]["channels"], 250.0
    frames = rng.integers(0, 255, (int(10 * seconds), 40, 48, 3), dtype=np.uint8)
    return {"eeg": EEGInput(rng.normal(0, 20e-6, (len(ch), int(sf * seconds))), sf, ch[::-1]),
            "speech": SpeechInput(rng.uniform(-0.2, 0.2, int(16000 * seconds)), 16000),
            "video": VideoInput(_jpegs(frames) if jpeg else frames, fps=10.0)}


@pytest.mark.parametrize("jpeg", [False, True])
def test_routed_parts_prepared_in_each_deployment_equal_the_in_process_prepare(models, jpeg):
    sample = _sample(models, jpeg=jpeg)
    whole = models["all"].prepare(sample)
    routed = models["router"].route(sample)
    assert sorted(routed.parts) == sorted(whole.inputs) == ["eeg", "speech", "video"]
    if jpeg:       # the router counts JPEG frames; the video deployment decodes them
        assert isinstance(routed.parts["video"]["value"].frames, list)
    for m, part in routed.parts.items():
        carried = pickle.loads(pickle.dumps(part))                 # as Ray carries it
        got = models[m].prepare_modality(m, carried)
        assert sorted(got) == sorted(whole.inputs[m])
        for key, value in got.items():
            assert torch.equal(value, whole.inputs[m][key]), f"{m}.{key}"
    for m in routed.present:
        assert np.array_equal(routed.present[m], whole.present[m])
    n = int(10.0 // models["all"].contract.segment_seconds)         # several segments
    assert n >= 2 and np.array_equal(routed.owner, whole.owner) and routed.owner.shape == (n,)


def test_a_refusal_in_a_deployment_is_the_in_process_error(models):
    sample = _sample(models, jpeg=True)
    sample["video"] = VideoInput([b"\xff\xd8 not a jpeg"] * 100, fps=10.0)
    routed = models["router"].route(sample)                        # the router does not decode
    answer = _features(models["video"], "video", routed.parts["video"])
    assert answer["refused"] == "data" and answer["field"] == "video.frames"
    with pytest.raises(DataError) as raised:
        raise_refusal(pickle.loads(pickle.dumps(answer)))
    with pytest.raises(DataError) as direct:
        models["all"].prepare(sample)
    assert (raised.value.field, raised.value.kind, raised.value.reason) == \
        (direct.value.field, direct.value.kind, direct.value.reason)
    raise_refusal(np.zeros(3))                                      # an answer passes
    backend = LocalBackend({"checkpoint": str(BUNDLE), "device": "cpu"}, batching=False)
    with pytest.raises(DataError, match="cannot decode JPEG"):
        asyncio.run(backend.predict(sample))


def test_every_modality_alone_in_one_pass_equals_one_pass_each(models):
    """The fusion head scores each modality alone for ``per_modality``: all of them in one
    stacked pass (the others masked) gives each one's own pass's logits."""
    model = models["all"].parts.model
    assert model.per_modality == "fusion"
    gen = torch.Generator().manual_seed(0)
    dims = model.fusion.modality_dims
    lengths = {m: min(model.fusion.max_tokens.get(m, 4), 4) for m in dims}
    tokens = {m: torch.randn(5, lengths[m], d, generator=gen) for m, d in dims.items()}
    rows = {"eeg": torch.tensor([1, 1, 0, 1, 1], dtype=torch.bool),
            "speech": torch.tensor([1, 0, 1, 1, 0], dtype=torch.bool),
            "video": torch.tensor([0, 1, 1, 1, 1], dtype=torch.bool)}
    with torch.no_grad():
        out = model.fusion(tokens, present=rows)
        single = model.alone(out, tokens, rows)
        for m, keep in rows.items():
            own = model.fusion({m: tokens[m][keep]}).logits
            torch.testing.assert_close(single[m], own, atol=1e-5, rtol=1e-5)
        one = model.alone(out, tokens, {"speech": rows["speech"]})
    torch.testing.assert_close(one["speech"], single["speech"], atol=1e-5, rtol=1e-5)


def test_requests_combined_in_one_pass_get_their_own_answers(models):
    """The router's batches: several requests' fusion heads in one pass per set of present
    modalities (:meth:`ServedModel.combine_many`) give each request what ``combine`` gives
    it alone, whatever else shares the batch; each keeps its own ignored inputs."""
    full = _sample(models)
    no_video = {k: v for k, v in _sample(models, seconds=5.0).items() if k != "video"}
    eeg_only = {"eeg": full["eeg"]}
    shifted = dict(full, speech=SpeechInput(full["speech"].samples[::-1].copy(), 16000))
    requests = [full, no_video, shifted, eeg_only, full]
    items = []
    for sample in requests:
        routed = models["router"].route(sample)
        encoded = {m: models[m].encode(m, models[m].prepare_modality(m, part))
                   for m, part in routed.parts.items()}
        items.append((encoded, routed))
    items[1][1].ignored.append("face")                  # a per-request field is kept apart
    alone = [models["all"].combine(enc, routed) for enc, routed in items]
    together = models["all"].combine_many(items)
    assert len(together) == len(requests)
    for a, b in zip(alone, together):
        assert (a.label, a.modalities, a.n_segments, a.ignored) == \
            (b.label, b.modalities, b.n_segments, b.ignored)
        for name, p in a.probabilities.items():
            assert b.probabilities[name] == pytest.approx(p, abs=1e-5)
        assert sorted(a.per_modality) == sorted(b.per_modality)
        for m, own in a.per_modality.items():
            assert b.per_modality[m].probabilities == pytest.approx(own.probabilities, abs=1e-5)
    assert together[1].ignored == ["face"] and together[0].ignored == []
    assert together[0].modalities == ["eeg", "speech", "video"] != together[3].modalities


def test_a_fault_in_one_batched_request_fails_that_request_only(models):
    """A batch carries several requests: an unexpected fault in one request's contract or
    fusion head gives that request a failure (its 500), while the rest of the batch gets
    the answers it gets alone."""
    from emoray.serving.app import _encode_parts
    from emoray.serving.model import failure

    sample = _sample(models, seconds=5.0)
    routed = models["router"].route(sample)
    part = routed.parts["eeg"]
    broken = dict(part, value=None)                       # not a refusal: a fault
    out = _encode_parts(models["eeg"], "eeg", [part, broken, part])
    assert out[1]["refused"] == "fault" and "AttributeError" in out[1]["reason"]
    alone = models["eeg"].encode("eeg", models["eeg"].prepare_modality("eeg", part)).numpy()
    np.testing.assert_allclose(out[0], alone, atol=1e-5)
    np.testing.assert_allclose(out[2], alone, atol=1e-5)
    with pytest.raises(RuntimeError, match="AttributeError"):
        raise_refusal(out[1])

    encoded = {m: models[m].encode(m, models[m].prepare_modality(m, p))
               for m, p in routed.parts.items()}
    bad = dict(encoded, eeg=encoded["eeg"][:, :, :3])     # wrong width: the pass fails
    preds = models["all"].combine_many([(encoded, routed), (bad, routed), (encoded, routed)])
    assert isinstance(preds[1], dict) and preds[1]["refused"] == "fault"
    good = models["all"].combine(encoded, routed)
    for p in (preds[0], preds[2]):
        assert p.label == good.label
        assert p.probabilities[good.label] == pytest.approx(good.probabilities[good.label],
                                                            abs=1e-5)
    assert failure(ValueError("x")) == {"refused": "fault", "reason": "ValueError: x"}
