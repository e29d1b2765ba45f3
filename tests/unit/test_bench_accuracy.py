"""The pieces of `emoray bench accuracy` that need no Ray: the probe's per-subject
normalisation and its fit on a split, and the intervals of the table."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks._probe import run_probe, subject_zscore
from benchmarks.accuracy import interval, run_benchmark


def _data(rng, n_per=40, offset=5.0):
    """Two subjects whose features differ by a large offset; the class signal is small."""
    subjects = np.repeat(["s1", "s2"], 2 * n_per)
    labels = np.tile(np.repeat([0, 1], n_per), 2)
    x = rng.standard_normal((len(labels), 6)) + 0.8 * labels[:, None]
    x += np.where(subjects == "s2", offset, 0.0)[:, None] * rng.uniform(0.5, 2.0, 6)
    present = np.ones(len(labels), dtype=bool)
    present[::7] = False                                   # some records lack the modality
    return {"ids": [f"r{i}" for i in range(len(labels))], "subject": subjects,
            "label": labels, "names": ["low", "high"],
            "eeg": (x, present), "speech": (np.zeros((len(labels), 1)), np.zeros(len(labels), bool)),
            "video": (x[:, :3] + rng.standard_normal((len(labels), 3)), np.ones(len(labels), bool))}


def test_subject_zscore_removes_each_subjects_offset():
    rng = np.random.default_rng(0)
    data = _data(rng)
    x, present = data["eeg"]
    z = subject_zscore(x, present, data["subject"])
    for s in ("s1", "s2"):
        rows = (data["subject"] == s) & present
        assert np.allclose(z[rows].mean(0), 0, atol=1e-9)
        assert np.allclose(z[rows].std(0), 1, atol=1e-9)
    assert not z[~present].any()


def test_probe_learns_and_fuses_on_the_given_split():
    rng = np.random.default_rng(1)
    data = _data(rng)
    ids = np.array(data["ids"])
    train = set(ids[rng.permutation(len(ids))[:100]])
    val = set(ids) - train
    out = run_probe(data, train, val)
    assert "speech" not in out                    # no record has it: no classifier
    assert out["eeg"]["acc"] > 0.75 and out["fused"]["acc"] > 0.75
    assert out["fused"]["n"] == len(val)          # every val record has some modality
    assert out["eeg"]["n"] == sum(1 for i in val if data["eeg"][1][int(i[1:])])


def test_interval_over_seeds_and_for_one_run():
    mean, std, lo, hi = interval([0.5, 0.6, 0.7], 100)
    assert mean == pytest.approx(0.6) and std == pytest.approx(0.1)
    assert lo == pytest.approx(0.6 - 4.303 * 0.1 / np.sqrt(3))
    mean, std, lo, hi = interval([0.5], 100)
    assert std == 0 and hi - lo == pytest.approx(2 * 1.96 * 0.05)


def test_encoder_headline_is_eegformer_over_the_best_braindecode_else_ast_over_the_mlp():
    from benchmarks._encoders import encoder_ratio

    speech = [{"modality": "speech", "encoder": "ast", "acc": [0.30, 0.40]},
              {"modality": "speech", "encoder": "speechstats", "acc": [0.50]}]
    eeg = [{"modality": "eeg", "encoder": "eegformer", "acc": [0.3, 0.5]},
           {"modality": "eeg", "encoder": "braindecode:EEGNetv4", "acc": [0.2]},
           {"modality": "eeg", "encoder": "braindecode:ShallowFBCSPNet", "acc": [0.5]},
           {"modality": "eeg", "encoder": "bandpower-mlp", "acc": [0.9]}]   # not a peer
    label, ratio = encoder_ratio(eeg + speech)
    assert label.startswith("EEGformer") and ratio == pytest.approx(0.4 / 0.5)
    label, ratio = encoder_ratio(speech)
    assert label.startswith("AST") and ratio == pytest.approx(0.35 / 0.5)
    assert encoder_ratio(eeg[:1] + speech[:1]) is None
    failed = [{**eeg[0], "acc": []}, eeg[1]]                  # EEGformer refused: no headline
    assert encoder_ratio(failed) is None


def test_every_compared_encoder_gets_a_valid_stage_from_the_shipped_recipe():
    from emoray.cli.quickstart import quickstart_config

    from benchmarks._encoders import ENCODERS, encoder_stage

    base = quickstart_config().train.stages["fusion"]
    assert base.feature_noise                   # the recipe's noise names columns ...
    for modality, archs in ENCODERS.items():
        for arch, column in archs:
            stage = encoder_stage(base, modality, arch, column, "tiny", epochs=2)
            # ... the comparison does not standardise: it trains each encoder without it
            assert stage.subject_norm == [column] and stage.feature_noise == {}
            assert (stage.modalities, stage.epochs, stage.mixup) == ([modality], 2, base.mixup)


def test_bench_parallel_is_refused_outside_accuracy_and_below_one_run(capsys):
    from emoray.cli.commands import run

    assert run(["bench", "serve", "--parallel", "2"]) == 2
    assert "--parallel applies to `bench accuracy`" in capsys.readouterr().err
    assert run(["bench", "accuracy", "--parallel", "0"]) == 2
    assert "expected a number of training runs >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="parallel: expected a number of runs >= 1"):
        run_benchmark(quick=True, parallel=0)
