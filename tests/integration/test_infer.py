"""Inference from raw signals with a real fusion bundle (trained here on Ray Train).

Behaviour tests of issue 3: serving's transform equals training's (prepared tensors equal
the feature shards), the prediction does not depend on the EEG channel order given the
names, any subset of modalities predicts, and bad inputs raise errors naming the field.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from emoray.data.features import MODALITY_OF, batch_to_tensors, feature_metadata
from emoray.data.shards import read_metadata, shard_files, unflatten
from emoray.errors import ConfigError, DataError
from emoray.predict import EEGInput, Predictor, SpeechInput, VideoInput
from emoray.io.video import decode_jpeg

pytestmark = pytest.mark.integration

#: Compared with the feature shards. The band features (eeg_de, eeg_bp) are compared in
#: their own test: the contract stored in shard metadata and bundle.json has lost the order
#: of ``eeg.bands`` (keys sorted), so their columns come out permuted (see that test).
FEATURES = ("eeg", "logmel", "audio_stats", "video")
BANDS = ("eeg_de", "eeg_bp")
TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def bundle(fusion_run) -> Path:
    """The session's tiny fusion bundle (conftest.py), read-only here."""
    return Path(fusion_run["checkpoint"])


@pytest.fixture(scope="module")
def predictor(bundle) -> Predictor:
    return Predictor.from_bundle(bundle, device="cpu")


@pytest.fixture(scope="module")
def corpus(eav_features):
    """Raw records (ingest shards) and feature rows of a few records, and channel names.

    ``full0``/``full1``: segments 0 and 1 of one trial with EEG, speech and video;
    ``listen``: a listening-task segment (no speech).
    """
    rec = pq.read_table(shard_files(eav_features / "rec"))
    ids = rec.column("record_id").to_pylist()
    has_audio = rec.column("audio").is_valid().to_pylist()
    first = next(i for i, r in enumerate(ids) if has_audio[i] and r.endswith("/0"))
    trial = ids[first][:-2]
    chosen = {"full0": first, "full1": ids.index(f"{trial}/1"),
              "listen": next(i for i, r in enumerate(ids) if not has_audio[i])}
    raw = {k: rec.slice(i, 1).to_pylist()[0] for k, i in chosen.items()}
    feat = pq.read_table(shard_files(eav_features / "feat"))
    feat_ids = feat.column("record_id").to_pylist()
    feats = {k: feat.slice(feat_ids.index(r["record_id"]), 1) for k, r in raw.items()}
    names = read_metadata(eav_features / "rec")["dataset"]["eeg_channels"]
    return raw, feats, list(names)


def _inputs(rec: dict, names: list[str], jpeg: bool = False) -> dict:
    """The raw signals of a record as inference inputs."""
    out = {}
    if rec["eeg"] is not None:
        out["eeg"] = EEGInput(unflatten(rec["eeg"], rec["eeg_shape"]), rec["eeg_sfreq"], names)
    if rec["audio"] is not None:
        out["speech"] = SpeechInput(np.asarray(rec["audio"], np.float32), rec["audio_rate"])
    if rec["video"] is not None:
        frames = list(rec["video"]) if jpeg else decode_jpeg(rec["video"])
        out["video"] = VideoInput(frames, rec["video_fps"])
    return out


def _expected(table, meta) -> dict[str, torch.Tensor]:
    """What the training workers see for these feature rows."""
    batch = {}
    for name in table.column_names:
        values = np.empty(table.num_rows, dtype=object)
        values[:] = table[name].to_pylist()
        batch[name] = values
    return batch_to_tensors(batch, meta)


def _assert_same_features(got, exp, rows=slice(None), keys=FEATURES):
    for key in keys:
        if not exp[f"{MODALITY_OF[key]}_present"].any():
            mask = f"{MODALITY_OF[key]}_present"      # absent: left out, or masked rows
            assert key not in got or not got[mask][rows].any()
            continue
        torch.testing.assert_close(got[key][rows], exp[key], **TOL)


def test_prepare_reproduces_training_features(predictor, corpus, eav_features):
    raw, feats, names = corpus
    meta = feature_metadata(eav_features / "feat")
    for key in ("full0", "listen"):
        exp = _expected(feats[key], meta)
        got = predictor.prepare(**_inputs(raw[key], names))
        _assert_same_features(got, exp)
        assert ("logmel" in got) == (key == "full0")      # a modality no sample has is left out
        for m in ("eeg", "speech", "video"):
            assert torch.equal(got.get(f"{m}_present", torch.tensor([False])),
                               exp[f"{m}_present"])
        assert got["sample_index"].tolist() == [0]
    # JPEG frames as stored by ingest give the very same video tensor
    jpeg = predictor.prepare(video=_inputs(raw["full0"], names, jpeg=True)["video"])["video"]
    frames = predictor.prepare(video=_inputs(raw["full0"], names)["video"])["video"]
    assert frames.shape == (1, 4, 3, 32, 32)
    torch.testing.assert_close(jpeg, frames, rtol=0, atol=0)
    # several samples, one lacking speech: one row each, masks per row
    a, b = _inputs(raw["full0"], names), _inputs(raw["listen"], names)
    both = predictor.prepare(eeg=[a["eeg"], b["eeg"]], speech=[a["speech"], None],
                             video=[a["video"], b["video"]])
    assert both["speech_present"].tolist() == [True, False]
    _assert_same_features({k: v[1:] for k, v in both.items()}, _expected(feats["listen"], meta))


def test_band_features_follow_the_contract_order(predictor, corpus, eav_features):
    raw, feats, names = corpus
    exp = _expected(feats["full0"], feature_metadata(eav_features / "feat"))
    got = predictor.prepare(eeg=_inputs(raw["full0"], names)["eeg"])
    _assert_same_features(got, exp, keys=BANDS)


def test_long_input_is_cut_into_segments_and_averaged(predictor, corpus, eav_features):
    raw, feats, names = corpus
    seg0, seg1 = _inputs(raw["full0"], names), _inputs(raw["full1"], names)
    long = {"eeg": EEGInput(np.concatenate([seg0["eeg"].data, seg1["eeg"].data], 1),
                            seg0["eeg"].sfreq, names),
            "speech": SpeechInput(np.concatenate([seg0["speech"].samples,
                                                  seg1["speech"].samples]),
                                  seg0["speech"].sample_rate),
            "video": VideoInput(np.concatenate([seg0["video"].frames, seg1["video"].frames]),
                                seg0["video"].fps)}
    got = predictor.prepare(**long)
    assert got["sample_index"].tolist() == [0, 0]
    meta = feature_metadata(eav_features / "feat")
    for row, key in enumerate(("full0", "full1")):      # = ingest's segments, preprocessed
        _assert_same_features(got, _expected(feats[key], meta), rows=slice(row, row + 1))
    whole = predictor.predict(**long)
    parts = predictor.predict_batch([seg0, seg1])
    assert whole.n_segments == 2 and [p.n_segments for p in parts] == [1, 1]
    for name, p in whole.probabilities.items():
        assert p == pytest.approx(np.mean([q.probabilities[name] for q in parts]), abs=1e-5)
    alone = predictor.predict(**seg1)                   # batching does not change a result
    assert alone.probabilities == pytest.approx(parts[1].probabilities, abs=1e-5)


def test_prediction_invariant_to_eeg_channel_order_given_names(predictor, corpus):
    raw, _, names = corpus
    eeg = _inputs(raw["full0"], names)["eeg"]
    base = predictor.predict(eeg=eeg).probabilities
    perm = np.random.default_rng(0).permutation(len(names))
    shuffled = EEGInput(eeg.data[perm], eeg.sfreq, [names[i] for i in perm])
    assert predictor.predict(eeg=shuffled).probabilities == pytest.approx(base, abs=1e-6)
    # extra channels are dropped, names match case-insensitively
    extra = EEGInput(np.vstack([eeg.data, eeg.data[:2] * 3.0]), eeg.sfreq,
                     [n.upper() for n in names] + ["X1", "X2"])
    assert predictor.predict(eeg=extra).probabilities == pytest.approx(base, abs=1e-6)
    # the same permutation of the data alone (names kept) is another input
    wrong = EEGInput(eeg.data[perm], eeg.sfreq, names)
    diff = max(abs(predictor.predict(eeg=wrong).probabilities[k] - base[k]) for k in base)
    assert diff > 1e-4


def test_any_modality_subset_predicts(predictor, corpus):
    raw, _, names = corpus
    inputs = _inputs(raw["full0"], names)
    labels = predictor.label_names
    for r in (1, 2, 3):
        for subset in itertools.combinations(("eeg", "speech", "video"), r):
            pred = predictor.predict(**{m: inputs[m] for m in subset})
            probs = np.array([pred.probabilities[n] for n in labels])
            assert np.all(probs >= 0) and probs.sum() == pytest.approx(1.0, abs=1e-5)
            assert pred.label == labels[int(np.argmax(probs))]
            assert pred.modalities == list(subset) and set(pred.per_modality) == set(subset)
            mass = pred.attention_mass
            assert sum(mass.values()) == pytest.approx(1.0, abs=1e-5)
            assert all((mass[m] > 0) == (m in subset) for m in mass)
            assert -1.0 <= pred.valence <= 1.0 and -1.0 <= pred.arousal <= 1.0
            if r == 1:          # one modality: its own prediction is the fused one
                alone = pred.per_modality[subset[0]].probabilities
                assert alone == pytest.approx(pred.probabilities, abs=1e-5)
            json.dumps(pred.to_dict())
    # valence/arousal are the expected circumplex position of the class probabilities
    from emoray.labels import EAV_VA
    pred = predictor.predict(**inputs)
    assert pred.valence == pytest.approx(
        sum(p * EAV_VA[n][0] for n, p in pred.probabilities.items()), abs=1e-6)


def test_bad_inputs_name_the_field(predictor, corpus):
    raw, _, names = corpus
    inputs = _inputs(raw["full0"], names)
    eeg, speech = inputs["eeg"], inputs["speech"]
    nan = eeg.data.copy()
    nan[3, 10] = np.nan
    cases = [
        (dict(eeg=EEGInput(nan, eeg.sfreq, names)), r"\[eeg\.data\]: 1 NaN/inf"),
        (dict(eeg=EEGInput(eeg.data[1:], eeg.sfreq, names[1:])),
         rf"\[eeg\.ch_names\]: channels \['{names[0]}'\] missing"),
        (dict(eeg=EEGInput(eeg.data, eeg.sfreq, names[:-1])), r"\[eeg\.ch_names\]: \d+ names"),
        (dict(eeg=EEGInput(eeg.data[0], eeg.sfreq, names)), r"\[eeg\.data\]: expected a real"),
        (dict(eeg=EEGInput(eeg.data, 60.0, names)), r"\[eeg\.sfreq\]: sampling rate 60"),
        (dict(speech=SpeechInput(speech.samples[: speech.sample_rate // 2],
                                 speech.sample_rate)), r"\[speech\.samples\]: 0\.5 s long"),
        (dict(speech=SpeechInput(speech.samples, 0)), r"\[speech\.sample_rate\]"),
        (dict(video=VideoInput(inputs["video"].frames.astype(np.float32), 5.0)),
         r"\[video\.frames\]: expected .* uint8"),
        (dict(video=VideoInput([b"not a jpeg"], 5.0)), r"\[video\.frames\]"),
        (dict(), r"\[input\]: no modality given"),
    ]
    for kwargs, pattern in cases:
        with pytest.raises(DataError, match=pattern):
            predictor.predict(**kwargs)
    with pytest.raises(ConfigError, match="equal-length lists"):
        predictor.prepare(eeg=[eeg, eeg], speech=[speech])
    with pytest.raises(ConfigError, match=r"input\[1\]: unknown modality 'audio'"):
        predictor.predict_batch([{"eeg": eeg}, {"audio": speech}])


def test_bundle_errors(bundle, tmp_path):
    with pytest.raises(ConfigError, match="not a model bundle"):
        Predictor.from_bundle(tmp_path)
    other = tmp_path / "other"
    shutil.copytree(bundle, other)
    meta = json.loads((other / "bundle.json").read_text())
    meta["stage"] = "mystery"
    meta.pop("servable", None)       # as a bundle written before bundles said so
    (other / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="stage 'mystery' has no predictor"):
        Predictor.from_bundle(other)
