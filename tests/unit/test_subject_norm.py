"""Per-subject input statistics: what they standardise, what they keep, how they travel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emoray.data.subject_norm import POOLED, SubjectStats
from emoray.errors import ConfigError, DataError


def _eeg(offsets: list[float], gains: list[float], n: int = 40, seed: int = 0):
    """``n`` rows per subject of (2 channels, 50 samples) with subject offsets and gains."""
    g = torch.Generator().manual_seed(seed)
    xs, subjects = [], []
    for i, (o, k) in enumerate(zip(offsets, gains)):
        xs.append(torch.randn(n, 2, 50, generator=g) * k + o)
        subjects += [f"s{i}"] * n
    x = torch.cat(xs)
    return {"eeg": x, "eeg_present": torch.ones(len(x), dtype=torch.bool)}, subjects


def test_each_subject_is_standardised_with_its_own_statistics():
    t, subjects = _eeg([5.0, -3.0], [2.0, 0.5])
    stats = SubjectStats(["eeg"])
    stats.update(t, subjects)
    out = stats.apply({k: v.clone() for k, v in t.items()}, subjects)["eeg"]
    for s in ("s0", "s1"):
        rows = out[[x == s for x in subjects]]
        assert torch.allclose(rows.mean((0, 2)), torch.zeros(2), atol=1e-4)
        assert torch.allclose(rows.std((0, 2)), torch.ones(2), atol=0.02)
    assert stats.subjects == ["s0", "s1"]


def test_an_unknown_subject_gets_the_pooled_statistics_and_absent_rows_stay_zero():
    t, subjects = _eeg([5.0, -3.0], [2.0, 0.5])
    stats = SubjectStats(["eeg"])
    stats.update(t, subjects)
    probe = {"eeg": t["eeg"][:3].clone(), "eeg_present": torch.tensor([True, False, True])}
    out = stats.apply(probe, ["nobody", None, "nobody"])["eeg"]
    mean, std = stats.moments("eeg", POOLED)
    expected = (t["eeg"][[0, 2]] - torch.from_numpy(mean)) / torch.from_numpy(std)
    assert torch.allclose(out[[0, 2]], expected, atol=1e-5)
    assert torch.all(out[1] == 0)


def test_band_power_is_standardised_in_log10_per_channel_and_band():
    g = torch.Generator().manual_seed(1)
    power = 10 ** (torch.randn(30, 3, 5, generator=g) * 0.3 + 2.0)      # ~100 uV^2
    t = {"eeg_bp": power, "eeg_present": torch.ones(30, dtype=torch.bool)}
    stats = SubjectStats(["eeg_bp"])
    stats.update(t, ["a"] * 30)
    mean, _ = stats.moments("eeg_bp", "a")
    assert mean.shape == (3, 5) and np.allclose(mean, np.log10(power.numpy()).mean(0), atol=1e-4)
    out = stats.apply({k: v.clone() for k, v in t.items()}, ["a"] * 30)["eeg_bp"]
    assert torch.allclose(out.mean(0), torch.zeros(3, 5), atol=1e-4)


def test_merging_two_halves_equals_one_pass_and_bytes_round_trip(tmp_path):
    t, subjects = _eeg([1.0, 2.0], [1.0, 3.0])
    whole = SubjectStats(["eeg"])
    whole.update(t, subjects)
    a, b = SubjectStats(["eeg"]), SubjectStats(["eeg"])
    half = len(subjects) // 2 + 7
    a.update({k: v[:half] for k, v in t.items()}, subjects[:half])
    b.update({k: v[half:] for k, v in t.items()}, subjects[half:])
    merged = a.merge(b)
    for s in ("s0", "s1", POOLED):
        for x, y in zip(whole.moments("eeg", s), merged.moments("eeg", s)):
            assert np.allclose(x, y, atol=1e-5)
    back = SubjectStats.load(whole.save(tmp_path / "stats.npz"))
    for s in ("s0", "s1", POOLED):
        for x, y in zip(whole.moments("eeg", s), back.moments("eeg", s)):
            assert np.array_equal(x, y)


def test_a_flat_calibration_cannot_blow_inputs_up():
    t, subjects = _eeg([0.0], [1.0])
    stats = SubjectStats(["eeg"])
    stats.update(t, subjects)
    flat = {"eeg": torch.full((4, 2, 50), 0.5), "eeg_present": torch.ones(4, dtype=torch.bool)}
    calibration = SubjectStats(["eeg"])
    calibration.update(flat, ["new"] * 4)
    adopted = stats.adopt("new", calibration)
    out = adopted.apply({"eeg": t["eeg"][:4].clone(), "eeg_present": flat["eeg_present"]},
                        ["new"] * 4)["eeg"]
    assert torch.isfinite(out).all() and out.abs().max() < 100      # std floored at 0.1 x pooled
    # adopting a subject leaves the pooled entry (the uncalibrated path) as it was
    for x, y in zip(stats.moments("eeg"), adopted.moments("eeg")):
        assert np.array_equal(x, y)


def test_bad_columns_and_bad_files_get_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown column 'pixels'"):
        SubjectStats(["pixels"])
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(DataError, match="bad.npz"):
        SubjectStats.load(tmp_path / "bad.npz")
    with pytest.raises(DataError, match="no statistics of column 'logmel'"):
        SubjectStats(["logmel"]).moments("logmel")


@pytest.mark.parametrize("who", ["s0", "s1", "nobody", None])
def test_moments_applied_away_from_the_statistics_equal_apply(who):
    """What a serving deployment does with the moments the router sends: the same numbers
    as ``apply`` on rows of that subject (the subject's own, else the pooled ones), power
    columns in log10, absent rows 0."""
    import pickle

    from emoray.data.subject_norm import standardize

    t, subjects = _eeg([5.0, -3.0], [2.0, 0.5])
    t["eeg_bp"] = t["eeg"].square().mean(-1, keepdim=True) + 1.0        # a power column
    stats = SubjectStats(["eeg", "eeg_bp"])
    stats.update(t, subjects)
    rows = {"eeg": t["eeg"][:4].clone(), "eeg_bp": t["eeg_bp"][:4].clone(),
            "eeg_present": torch.tensor([True, True, False, True])}
    want = stats.apply({k: v.clone() for k, v in rows.items()}, [who] * 4)
    moments = pickle.loads(pickle.dumps(stats.moments_for(who, ["eeg", "eeg_bp", "logmel"])))
    assert set(moments) == {"eeg", "eeg_bp"}
    got = standardize({k: v.clone() for k, v in rows.items()}, moments)
    for column in ("eeg", "eeg_bp"):
        assert torch.equal(got[column], want[column]), column
    assert not torch.equal(got["eeg"], rows["eeg"]) and (got["eeg"][2] == 0).all()
