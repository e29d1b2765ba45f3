"""Model behaviour on the synthetic corpus: the difficulty defaults do what they promise.

Through the real data path (files -> ingest -> preprocess features), a linear classifier
per modality, within-subject cross-validation: EEG is the most reliable modality, every
modality alone is well above chance (0.20 for 5 classes), and a late fusion of the three
beats each one alone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from emoray.data.shards import shard_files

pytestmark = pytest.mark.integration


def _features(folder) -> pd.DataFrame:
    """The model-behaviour corpus's feature shards (3 subjects x 40 trials) as one frame."""
    return pd.concat([pq.read_table(f).to_pandas() for f in shard_files(folder)],
                     ignore_index=True)


def _scores(x: np.ndarray, y: np.ndarray, subjects: np.ndarray, folds: int = 4) -> np.ndarray:
    """Out-of-fold class scores of a ridge classifier, standardised within each subject."""
    x = x.astype(np.float64).copy()
    for s in np.unique(subjects):                        # per-subject normalisation
        m = subjects == s
        x[m] = (x[m] - x[m].mean(0)) / (x[m].std(0) + 1e-8)
    targets = np.eye(5)[y]
    scores = np.zeros((len(y), 5))
    fold = np.arange(len(y)) % folds
    for k in range(folds):
        train, test = fold != k, fold == k
        a = x[train]                                     # dual ridge: (n, n), cheap for d >> n
        alpha = np.linalg.solve(a @ a.T + 10.0 * np.eye(len(a)), targets[train])
        scores[test] = (x[test] @ a.T) @ alpha
    return scores


def test_eeg_most_reliable_each_above_chance_fusion_best(model_features):
    df = _features(model_features).sort_values("record_id").reset_index(drop=True)
    y = df["label"].to_numpy(int)
    subjects = df["subject"].to_numpy()
    video = np.stack(df["video"].map(lambda v: np.asarray(v, np.float32)))
    feats = {"eeg": np.stack(df["eeg_bp"].map(np.asarray)),
             "speech": np.stack(df["audio_stats"].map(np.asarray)),
             "video": video}
    scores = {m: _scores(x, y, subjects) for m, x in feats.items()}
    acc = {m: float((s.argmax(1) == y).mean()) for m, s in scores.items()}
    fused = sum(s / s.std() for s in scores.values())
    acc["fused"] = float((fused.argmax(1) == y).mean())
    print("accuracy (chance 0.20):", {k: round(v, 3) for k, v in acc.items()})
    assert acc["eeg"] > acc["speech"] and acc["eeg"] > acc["video"]
    for m in ("eeg", "speech", "video"):
        assert acc[m] >= 0.35, f"{m} is not well above chance: {acc}"
    assert acc["fused"] > max(acc["speech"], acc["video"])
    assert acc["fused"] >= acc["eeg"] - 0.02
