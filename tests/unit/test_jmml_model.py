"""JMML model parts: logistic regression against scipy, standardiser, joint labels, the
inference paths, the intra objective's gradients, pairing and the logistic probes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from emoray.errors import ConfigError
from emoray.models.jmml_model import (JMMLModel, LogisticHead, Standardizer, fit_logistic,
                                      joint_label)
from emoray.config import IntraStageConfig
from emoray.train.stages.jmml_intra import IntraObjective
from emoray.train.stages.jmml_common import probe
from emoray.train.stages.jmml_inter import _pairs, choose_pairing

CONFIG = dict(features={"speech": "audio_stats", "eeg": "eeg_de"},
              in_features={"speech": 12, "eeg": 10}, presets={"speech": "tiny", "eeg": "tiny"},
              targets=["valence", "arousal"])


def test_fit_logistic_matches_scipy_on_the_same_objective():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 4))
    y = (x[:, 0] + 0.5 * x[:, 1] + 0.3 * rng.normal(size=120) > 0.4).astype(int)
    l2 = 0.05
    counts = np.bincount(y, minlength=2)
    sw = (len(y) / (2 * counts))[y]

    def objective(theta):
        w, b = theta[:8].reshape(2, 4), theta[8:]
        z = x @ w.T + b
        z = z - z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        return -(sw * logp[np.arange(len(y)), y]).sum() / sw.sum() + l2 * (w ** 2).sum()

    ref = minimize(objective, np.zeros(10), method="BFGS", options={"gtol": 1e-10})
    w, b = fit_logistic(torch.from_numpy(x), torch.from_numpy(y), 2, l2=l2)
    ours = objective(np.concatenate([w.numpy().ravel(), b.numpy()]))
    assert ours == pytest.approx(ref.fun, abs=1e-7)
    # the softmax is invariant to a shift of both rows' bias: compare the differences
    np.testing.assert_allclose((w[1] - w[0]).numpy(), ref.x[4:8] - ref.x[:4], atol=1e-4)
    with pytest.raises(ConfigError, match="fit_logistic"):
        fit_logistic(torch.zeros(0, 3), torch.zeros(0), 2)


def test_balanced_weights_help_the_minority_class():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(np.concatenate([rng.normal(0, 1, (180, 2)),
                                         rng.normal(1.2, 1, (20, 2))]))
    y = torch.cat([torch.zeros(180), torch.ones(20)]).long()
    recall = {}
    for balanced in (False, True):
        head = LogisticHead(2).fit(x, y, balanced=balanced)
        pred = head(x.float()).argmax(1)
        recall[balanced] = float((pred[y == 1] == 1).float().mean())
    assert recall[True] > recall[False] + 0.2


def test_standardizer_from_sums_equals_numpy():
    x = torch.randn(50, 6, dtype=torch.float64) * 3 + 2
    norm = Standardizer(6)
    norm.set_from_sums(Standardizer.sums(x[:20]) + Standardizer.sums(x[20:]))  # two "ranks"
    np.testing.assert_allclose(norm.mean.numpy(), x.mean(0).numpy(), rtol=1e-5)
    np.testing.assert_allclose(norm.std.numpy(), x.std(0, unbiased=False).numpy(), rtol=1e-5)
    out = norm(x)
    assert out.dtype == torch.float32 and abs(float(out.mean())) < 1e-5


def test_joint_label_combines_targets_and_marks_missing():
    y = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1], [-1, 1]])
    assert joint_label(y).tolist() == [0, 1, 2, 3, -1]


def _full_model(classifiers=("speech_only", "eeg_only", "combined")) -> JMMLModel:
    torch.manual_seed(0)
    return JMMLModel(**CONFIG, cae={"k": 3, "hidden": 8, "dropout": 0.0},
                     classifiers=list(classifiers)).eval()


def test_predict_picks_the_path_from_what_is_present():
    model = _full_model()
    speech = torch.randn(4, 12)
    only_speech = model.predict({"audio_stats": speech})          # no EEG key at all
    assert only_speech["path"] == ["speech_only"] * 4
    for p in only_speech["probs"].values():
        assert p.shape == (4, 2) and torch.allclose(p.sum(1), torch.ones(4))
    batch = {"audio_stats": speech, "eeg_de": torch.randn(4, 2, 5),
             "speech_present": torch.tensor([True, True, False, False]),
             "eeg_present": torch.tensor([True, False, True, False])}
    out = model.predict(batch)
    assert out["path"] == ["combined", "speech_only", "eeg_only", "none"]
    assert torch.isnan(out["probs"]["valence"][3]).all()
    # the speech-only answer does not depend on the (absent) EEG input
    again = model.predict({**batch, "eeg_de": torch.randn(4, 2, 5)})
    assert torch.allclose(out["probs"]["arousal"][1], again["probs"]["arousal"][1])
    assert not torch.allclose(out["probs"]["arousal"][0], again["probs"]["arousal"][0])


def test_without_a_combined_classifier_both_present_averages_the_paths():
    model = _full_model(("speech_only", "eeg_only"))
    batch = {"audio_stats": torch.randn(3, 12), "eeg_de": torch.randn(3, 10)}
    out = model.predict(batch)
    mean = 0.5 * (out["paths"]["speech_only"]["valence"] + out["paths"]["eeg_only"]["valence"])
    assert out["path"] == ["combined"] * 3
    assert torch.allclose(out["probs"]["valence"], mean)
    rebuilt = JMMLModel.from_config(model.config())
    rebuilt.load_state_dict(model.state_dict())
    assert torch.allclose(rebuilt.eval().predict(batch)["probs"]["valence"],
                          out["probs"]["valence"])


def test_intra_objective_trains_both_encoders_and_tolerates_a_missing_modality():
    torch.manual_seed(0)
    model = JMMLModel(**CONFIG)
    obj = IntraObjective(model, IntraStageConfig())
    y = torch.tensor([[0, 1], [1, 1], [0, 0], [1, 0], [1, 1], [0, 1]])
    t = {"audio_stats": torch.randn(6, 12), "eeg_de": torch.randn(6, 10),
         "speech_present": torch.ones(6, dtype=torch.bool),
         "eeg_present": torch.tensor([True] * 3 + [False] * 3), "y": y, "joint": joint_label(y)}
    loss, parts = obj(t)
    loss.backward()
    assert torch.isfinite(loss) and parts.shape == (2,) and (parts > 0).all()
    for m in ("speech", "eeg"):
        grads = [p.grad for p in model.encoders[m].parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.zero_grad()
    t["eeg_present"] = torch.zeros(6, dtype=torch.bool)              # no EEG in the batch
    loss, parts = obj(t)
    loss.backward()
    assert parts[1] == 0 and torch.isfinite(loss)
    assert all(p.grad is None or not p.grad.any() for p in model.encoders["eeg"].parameters())


def _table(has_s, has_e, y):
    n = len(y)
    return {"has_speech": torch.tensor(has_s), "has_eeg": torch.tensor(has_e),
            "y": torch.tensor(y), "ids": [str(i) for i in range(n)]}


def test_pairing_natural_for_parallel_and_by_label_otherwise():
    y = [[0, 0], [1, 0], [0, 1], [1, 1]] * 5
    parallel = _table([True] * 20, [True] * 20, y)
    assert choose_pairing("auto", parallel) == "natural"
    s, e = _pairs(parallel, "natural", np.random.default_rng(0))
    assert (s == e).all() and len(s) == 20
    split = _table([i % 2 == 0 for i in range(20)], [i % 2 == 1 for i in range(20)],
                   [[i // 2 % 2, i // 4 % 2] for i in range(20)])
    assert choose_pairing("auto", split) == "label"
    joint = joint_label(split["y"]).numpy()
    draws = []
    for epoch in range(2):
        s, e = _pairs(split, "label", np.random.default_rng([0, epoch]))
        assert split["has_speech"][s].all() and split["has_eeg"][e].all()
        assert (joint[s] == joint[e]).all()                        # same joint label
        draws.append(e)
    assert not np.array_equal(draws[0], draws[1])                  # drawn afresh per epoch


def test_probe_scores_each_representation_and_target():
    rng = np.random.default_rng(0)
    n = 80
    y = rng.integers(0, 2, size=(n, 2))
    informative = torch.from_numpy(y[:, :1] * 2.0 + rng.normal(0, 0.3, (n, 1))).float()
    noise = torch.from_numpy(rng.normal(size=(n, 3))).float()
    table = _table([True] * n, [True] * n, y.tolist())
    tr = {k: (v[:60] if not isinstance(v, list) else v[:60]) for k, v in table.items()}
    va = {k: (v[60:] if not isinstance(v, list) else v[60:]) for k, v in table.items()}
    reps = {"jec_speech": torch.cat([informative, noise], 1), "raw_speech": noise}
    metrics, heads = probe({k: v[:60] for k, v in reps.items()}, tr,
                           {k: v[60:] for k, v in reps.items()}, va, ["valence", "arousal"],
                           l2=1e-3)
    assert metrics["val_f1_jec_speech_valence"] > 0.9                 # target 0 is encoded
    assert metrics["val_f1_raw_speech_valence"] < 0.8
    assert metrics["val_n_jec_speech_arousal"] == 20
    assert set(heads) == {f"{r}__{t}" for r in reps for t in ("valence", "arousal")}
    assert F.softmax(heads["jec_speech__valence"](reps["jec_speech"][:2]), 1).shape == (2, 2)
