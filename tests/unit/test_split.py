"""The within-subject split on handmade id shards (no Ray): by trial, per subject x class."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from emoray.train.split import within_subject_split


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
