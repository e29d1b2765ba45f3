"""Feature shards -> tensors: what training (Ray Train workers) and evaluation read.

Feature columns are stored flattened (Parquet lists) with their shapes in the shard
metadata (``feature_shapes``). :func:`batch_to_tensors` turns a numpy batch (as Ray Data's
``iter_batches`` or ``get_dataset_shard(...).iter_batches`` yields it) into tensors of
those shapes, plus a boolean ``<modality>_present`` mask per modality: an absent modality
is null in the shards and becomes zeros *with a False mask* here, so models can mask it
(the fusion's key-padding mask) instead of mistaking zeros for a signal. Stored uint8
video frames are normalised with the contract's mean/std on the way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from emoray.data.shards import read_metadata, shard_files
from emoray.errors import DataError

#: Feature column -> the modality whose presence it signals.
MODALITY_OF = {"eeg": "eeg", "eeg_de": "eeg", "eeg_bp": "eeg", "logmel": "speech",
               "audio_stats": "speech", "video": "video", "video_f32": "video"}
LABEL_COLUMNS = ("label", "valence", "arousal", "valence_high", "arousal_high")


def feature_metadata(folder: str | Path) -> dict[str, Any]:
    """The metadata of a preprocess output (raises if ``folder`` holds record shards)."""
    meta = read_metadata(folder)
    if meta.get("stage") != "preprocess":
        raise DataError(str(folder), f"expected feature shards from `emoray preprocess`, "
                        f"found stage {meta.get('stage')!r}", kind="layout")
    return meta


def read_features(folder: str | Path, columns: list[str] | None = None):
    """The feature shards as a Ray Data dataset (lazy; read by the workers that use it)."""
    import ray.data

    feature_metadata(folder)
    # Ray Data's V1 reader (the embedded Ray's) samples the files first, with a progress bar
    # of its own per read: stages print their own progress lines instead
    ctx = ray.data.DataContext.get_current()
    bars, ctx.enable_progress_bars = ctx.enable_progress_bars, False
    try:
        return ray.data.read_parquet([str(f) for f in shard_files(folder)], columns=columns)
    finally:
        ctx.enable_progress_bars = bars


def _stack(values: np.ndarray, shape: tuple[int, ...], dtype: np.dtype,
           column: str) -> tuple[np.ndarray, np.ndarray]:
    """Object array of flat lists/None -> (B, *shape) array and (B,) presence mask."""
    out = np.zeros((len(values), *shape), dtype=dtype)
    present = np.zeros(len(values), dtype=bool)
    size = int(np.prod(shape))
    for i, v in enumerate(values):
        if v is None:
            continue
        flat = np.asarray(v, dtype=dtype)
        if flat.size != size:
            raise DataError(None, f"feature {column!r} of row {i} has {flat.size} values; "
                            f"expected {size} for shape {shape}", kind="invalid_value",
                            field=column)
        out[i] = flat.reshape(shape)
        present[i] = True
    return out, present


def batch_to_tensors(batch: dict[str, np.ndarray], meta: dict[str, Any],
                     device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Tensors of a numpy batch of feature rows.

    Returns feature tensors shaped as ``meta["feature_shapes"]`` (video as normalised
    float32 ``(B, N, 3, S, S)``), ``<modality>_present`` masks, and label tensors
    (``label`` int64 with -1 where missing; ``valence``/``arousal`` float32 with NaN;
    ``valence_high``/``arousal_high`` int64 with -1).
    """
    shapes = {k: tuple(v) for k, v in meta["feature_shapes"].items()}
    out: dict[str, torch.Tensor] = {}
    unused = "video" if meta.get("video_storage") == "float32" else "video_f32"
    for column, values in batch.items():
        if column not in MODALITY_OF or column == unused:
            continue
        key = "video" if column == "video_f32" else column
        dtype = np.uint8 if column == "video" else np.float32
        array, present = _stack(values, shapes[key], dtype, column)
        tensor = torch.from_numpy(array)
        if column == "video":                                   # (B, N, 3, S, S) uint8
            c = meta["contract"]["video"]
            mean = torch.tensor(c["mean"]).view(1, 1, 3, 1, 1)
            std = torch.tensor(c["std"]).view(1, 1, 3, 1, 1)
            tensor = (tensor.float() / 255.0 - mean) / std
            tensor[~torch.from_numpy(present)] = 0.0
        out[key] = tensor.to(device)
        mask = f"{MODALITY_OF[column]}_present"
        previous = out.get(mask)
        current = torch.from_numpy(present).to(device)
        out[mask] = current if previous is None else previous & current
    for column in LABEL_COLUMNS:
        if column in batch:
            out[column] = _label_tensor(batch[column], column).to(device)
    return out


def _label_tensor(values: np.ndarray, column: str) -> torch.Tensor:
    if column in ("valence", "arousal"):
        arr = np.array([np.nan if v is None else v for v in values], dtype=np.float32)
        return torch.from_numpy(arr)
    arr = np.array([-1 if v is None or (isinstance(v, float) and np.isnan(v)) else v
                    for v in values], dtype=np.int64)
    return torch.from_numpy(arr)
