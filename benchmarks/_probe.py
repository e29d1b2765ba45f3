"""The linear probe of ``benchmarks/accuracy.py``: logistic regression on fixed hand
features of the same feature shards and the same split as the deep models.

Features per modality (what the emotion literature's shallow baselines use):

* EEG: log10 band power per channel and band (``eeg_bp``, ``C x n_bands``);
* speech: the speech statistics vector (``audio_stats``: log-mel means and stds, prosody);
* video: the clip's mean frame, area-downsampled to 8 x 8 per colour channel.

Normalisation: every feature is z-scored per subject with that subject's own statistics
over all its records, labels unused (what a calibration recording gives a deployed
model, and what the deep path may use too). Each modality's classifier is scikit-learn's
``LogisticRegression``; the fused prediction averages the class probabilities of the
modalities a record has (late fusion). Nothing is tuned on the validation records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from emoray.data.features import feature_metadata
from emoray.data.shards import shard_files

MODALITIES = ("eeg", "speech", "video")
_COLUMN = {"eeg": "eeg_bp", "speech": "audio_stats", "video": "video"}
VIDEO_SIDE = 8


def _video_feature(flat: list[int], shape: tuple[int, ...]) -> np.ndarray:
    frames = np.asarray(flat, dtype=np.float32).reshape(shape)          # (N, 3, S, S)
    mean = frames.mean(0) / 255.0                                       # (3, S, S)
    s = mean.shape[-1] // VIDEO_SIDE * VIDEO_SIDE
    pooled = mean[:, :s, :s].reshape(3, VIDEO_SIDE, s // VIDEO_SIDE, VIDEO_SIDE,
                                     s // VIDEO_SIDE).mean((2, 4))      # (3, 8, 8)
    return pooled.ravel()


def load_table(features: str | Path) -> dict[str, Any]:
    """Ids, labels and the probe's raw features of every labelled record."""
    meta = feature_metadata(features)
    shapes = {k: tuple(v) for k, v in meta["feature_shapes"].items()}
    files = shard_files(features)
    columns = ["record_id", "subject", "label"] + list(_COLUMN.values())
    table = pa.concat_tables([pq.read_table(f, columns=columns) for f in files])
    rows = [r for r in table.to_pylist() if r["label"] is not None and r["label"] >= 0]
    out: dict[str, Any] = {"ids": [r["record_id"] for r in rows],
                           "subject": np.array([r["subject"] for r in rows]),
                           "label": np.array([int(r["label"]) for r in rows]),
                           "names": list(meta.get("label_names") or [])}
    for m, column in _COLUMN.items():
        dim = None
        values: list[np.ndarray | None] = []
        for r in rows:
            v = r[column]
            if v is None:
                values.append(None)
                continue
            if m == "video":
                x = _video_feature(v, shapes["video"])
            elif m == "eeg":
                x = np.log10(np.maximum(np.asarray(v, dtype=np.float64), 1e-30))
            else:
                x = np.asarray(v, dtype=np.float64)
            dim = x.size
            values.append(x)
        present = np.array([v is not None for v in values])
        matrix = np.zeros((len(rows), dim or 1))
        for i, v in enumerate(values):
            if v is not None:
                matrix[i] = v
        out[m] = (matrix, present)
    return out


def subject_zscore(x: np.ndarray, present: np.ndarray, subjects: np.ndarray) -> np.ndarray:
    """Each subject's rows z-scored with that subject's mean and std (present rows)."""
    out = np.zeros_like(x)
    for s in np.unique(subjects):
        rows = (subjects == s) & present
        if not rows.any():
            continue
        mu, sd = x[rows].mean(0), x[rows].std(0)
        out[rows] = (x[rows] - mu) / np.where(sd > 1e-12, sd, 1.0)
    return out


def run_probe(data: dict[str, Any], train_ids: set[str], val_ids: set[str],
              c: float = 1.0) -> dict[str, Any]:
    """Accuracy of each modality's probe and of their late fusion on ``val_ids``."""
    from sklearn.linear_model import LogisticRegression

    ids = np.array(data["ids"])
    train = np.isin(ids, list(train_ids))
    val = np.isin(ids, list(val_ids))
    y = data["label"]
    n_classes = int(y.max()) + 1
    probs = np.zeros((len(ids), n_classes))
    votes = np.zeros(len(ids))
    result: dict[str, Any] = {}
    for m in MODALITIES:
        x, present = data[m]
        if not present.any():
            continue
        z = subject_zscore(x, present, data["subject"])
        fit_rows, score_rows = train & present, val & present
        if fit_rows.sum() < 2 or len(np.unique(y[fit_rows])) < 2 or not score_rows.any():
            continue
        clf = LogisticRegression(C=c, max_iter=3000).fit(z[fit_rows], y[fit_rows])
        p = np.zeros((int(score_rows.sum()), n_classes))
        p[:, clf.classes_] = clf.predict_proba(z[score_rows])
        result[m] = {"acc": float((p.argmax(1) == y[score_rows]).mean()),
                     "n": int(score_rows.sum())}
        probs[score_rows] += p
        votes[score_rows] += 1
    fused = val & (votes > 0)
    result["fused"] = {"acc": float((probs[fused].argmax(1) == y[fused]).mean()),
                       "n": int(fused.sum())}
    return result
