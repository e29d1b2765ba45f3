"""The accuracy benchmark's incongruence check (``benchmarks/accuracy.py``): a fused
model's expressed-vs-EEG divergence per validation trial against the synthetic corpus's
ground-truth ``acted`` flag."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def incongruence_auc(bundle: str, features: Path, val_ids: set[str],
                     corpus: Path) -> dict[str, Any]:
    """ROC AUC of ``bundle``'s incongruence score on the validation trials against the
    ground truth ``acted`` flag. Each trial is one input made of its validation segments,
    as a client sending the whole trial gets it: per-modality probabilities averaged over
    the segments, then the expressed (speech + face) vs EEG divergence."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from sklearn.metrics import roc_auc_score

    from emoray.bundle import load_bundle
    from emoray.data.features import batch_to_tensors, feature_metadata
    from emoray.data.shards import shard_files
    from emoray.data.subject_norm import normalize
    from emoray.predict.heads import model_parts
    from emoray.train.stages.fusion import model_columns
    from emoray.synth.corpus import read_ground_truth

    model, meta = load_bundle(bundle)
    parts = model_parts(model, meta)
    fmeta = feature_metadata(features)
    cols = ["record_id", "subject", "label", *model_columns(fmeta, model)]
    trial_of: list[str] = []
    encoded: dict[str, list] = {}
    present: dict[str, list] = {}
    for f in shard_files(features):
        t = pq.read_table(f, columns=cols)
        keep = np.isin(np.array(t["record_id"].to_pylist()), list(val_ids))
        t = t.filter(pa.array(keep))
        if not t.num_rows:
            continue
        batch = {c: np.array(t[c].to_pylist() + [None], dtype=object)[:-1] for c in cols}
        tensors = normalize(batch_to_tensors(batch, fmeta), model, batch["subject"])
        for m in parts.modalities:
            if f"{m}_present" in tensors:
                present.setdefault(m, []).append(tensors[f"{m}_present"].numpy())
                encoded.setdefault(m, []).append(parts.encode(m, tensors))
        trial_of += [rid.rsplit("/", 1)[0] for rid in batch["record_id"]]
    trials = sorted(set(trial_of))
    owner = np.array([trials.index(r) for r in trial_of])
    answers = parts.combine({m: torch.cat(v) for m, v in encoded.items()},
                            {m: np.concatenate(v) for m, v in present.items()},
                            owner, len(trials))
    scores = {t: a.incongruence.score for t, a in zip(trials, answers)
              if a.incongruence is not None}
    gt = read_ground_truth(corpus)
    acted = {str(r): str(a).lower() == "true" for r, a in zip(gt["record_id"], gt["acted"])}
    scored = [t for t in scores if t in acted]
    y = [acted[t] for t in scored]
    out = {"n_trials": len(scored), "n_acted": int(sum(y))}
    out["auc"] = (float(roc_auc_score(y, [scores[t] for t in scored]))
                  if 0 < sum(y) < len(y) else None)
    return out
