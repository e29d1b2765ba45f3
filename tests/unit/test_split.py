"""The within-subject split on handmade id shards (no Ray): by trial, per subject x class."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from emoray.errors import DataError
from emoray.train.split import inner_split, within_subject_split


def _shard(path, rows):
    cols = ["record_id", "subject", "session", "trial", "segment", "label"]
    pq.write_table(pa.table({c: [r[i] for r in rows] for i, c in enumerate(cols)}), path)
    return path


def test_no_trial_is_on_both_sides(tmp_path):
    rows = [(f"s{s}-t{t}-{g}", f"s{s}", "1", str(t), g, t % 3)
            for s in (1, 2) for t in range(12) for g in range(4)]      # 4 segments a trial
    rows.append(("s1-unlabelled", "s1", "1", "99", 0, -1))
    files = [_shard(tmp_path / "a.parquet", rows[:50]), _shard(tmp_path / "b.parquet", rows[50:])]
    train, val = within_subject_split(files, 0.7)
    assert not train & val and "s1-unlabelled" not in train | val
    assert len(train | val) == len(rows) - 1
    for s in (1, 2):
        for t in range(12):
            ids = {f"s{s}-t{t}-{g}" for g in range(4)}
            assert ids <= train or ids <= val, f"subject {s} trial {t} split across sides"
    # per (subject, label) 4 trials: round(0.7 * 4) = 3 train, the last one validates
    val_trials = sorted({(i.split("-")[0], int(i.split("-")[1][1:])) for i in val})
    assert val_trials == [(f"s{s}", t) for s in (1, 2) for t in (9, 10, 11)]


def test_a_single_trial_group_trains(tmp_path):
    files = [_shard(tmp_path / "a.parquet", [("r0", "s1", "1", "1", 0, 2),
                                             ("r1", "s1", "1", "1", 1, 2)])]
    assert within_subject_split(files) == ({"r0", "r1"}, set())


def test_the_inner_split_holds_out_whole_train_trials_never_val_ones(tmp_path):
    rows = [(f"s{s}-t{t}-{g}", f"s{s}", "1", str(t), g, t % 2)
            for s in (1, 2) for t in range(16) for g in range(3)]
    rows.append(("s2-unlabelled", "s2", "1", "99", 0, -1))
    files = [_shard(tmp_path / "a.parquet", rows)]
    train, val = within_subject_split(files, 0.75)        # 8 trials a class: 6 train, 2 val
    fit, inner = inner_split(files, train | {"s2-unlabelled"}, 0.34, "shards")
    assert not fit & inner and not (fit | inner) & val
    assert fit | inner == train | {"s2-unlabelled"}        # nothing lost, unlabelled rows fit
    # per (subject, class) 6 train trials: round(0.66 * 6) = 4 fit, the last 2 are inner
    inner_trials = sorted({(i.split("-")[0], int(i.split("-")[1][1:])) for i in inner})
    assert inner_trials == [(f"s{s}", t) for s in (1, 2) for t in (8, 9, 10, 11)]
    for i in inner:                                        # whole trials: all 3 segments
        assert {i.rsplit("-", 1)[0] + f"-{g}" for g in range(3)} <= inner


def test_an_inner_split_with_nothing_to_hold_out_names_the_fix(tmp_path):
    rows = [(f"t{t}-{g}", "s1", "1", str(t), g, t % 2) for t in range(4) for g in range(2)]
    files = [_shard(tmp_path / "a.parquet", rows)]
    train, _ = within_subject_split(files, 0.5)            # one train trial per class
    with pytest.raises(DataError, match="inner_fraction"):
        inner_split(files, train, 0.15, "shards")
