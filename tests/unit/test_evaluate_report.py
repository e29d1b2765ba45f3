"""Evaluation bookkeeping without training: subject folds, per-seed pooling of folds,
mean and spread over seeds, the ordering check and the Markdown report."""

from __future__ import annotations

import pytest

from emoray.errors import ConfigError
from emoray.train.evaluate import folds_of, format_report, summarize


def test_folds_deal_subjects_into_groups():
    subjects = ["S01", "S02", "S03", "S04", "S05"]
    assert folds_of(subjects, None) == [[s] for s in subjects]
    groups = folds_of(subjects, 2)
    assert groups == [["S01", "S02", "S03"], ["S04", "S05"]]
    with pytest.raises(ConfigError, match="--folds: expected 2..5"):
        folds_of(subjects, 6)
    with pytest.raises(ConfigError, match="--folds"):
        folds_of(["S01"], None)


def _unit(seed, fold, f1_speech, n, fused):
    clf = {}
    for rep, value in (("raw_speech", f1_speech - 0.1), ("jec_speech", f1_speech - 0.05),
                       ("speech_only", f1_speech)):
        clf[f"val_f1_{rep}_valence"] = value
        clf[f"val_n_{rep}_valence"] = n
    return {"seed": seed, "fold": fold, "metrics": {
        "classifier": clf,
        "fusion": {"val_acc": fused, "val_f1": fused, "val_n": n, "val_acc_eeg": 0.5,
                   "val_f1_eeg": 0.4, "val_n_eeg": n}}}


def test_folds_are_pooled_per_seed_then_spread_over_seeds():
    units = [_unit(0, 0, 0.6, 10, 0.7), _unit(0, 1, 0.9, 30, 0.9),
             _unit(1, 0, 0.7, 10, 0.6), _unit(1, 1, 0.7, 30, 0.6)]
    report = summarize(units, "loso", [0, 1], [["S01"], ["S02"]])
    jm = {(r["modality"], r["method"]): r for r in report["jmml"]["rows"]}
    seed0 = (0.6 * 10 + 0.9 * 30) / 40                      # weighted by scored records
    stat = jm[("speech", "JMML")]["valence"]
    assert stat["per_seed"]["0"] == pytest.approx(seed0)
    assert stat["mean"] == pytest.approx((seed0 + 0.7) / 2)
    assert stat["std"] == pytest.approx(abs(seed0 - 0.7) / 2 ** 0.5)   # sample std, n=2
    assert report["jmml"]["ordering"] == {"speech/valence": True}
    fused = report["fusion"][0]
    assert fused["model"] == "fused" and fused["acc"]["n_seeds"] == 2
    text = format_report(report)
    assert "| speech | JMML |" in text and "2 folds of held-out subjects" in text
    assert "| eeg | 50.0 ± 0.0 | 40.0 ± 0.0 |" in text
