"""Plots of a finished stage: learning curves and the validation confusion matrix.

The per-epoch history comes from the checkpoint itself: the worker loop keeps every
epoch's metrics in ``train_state.pt`` (``{"optimizer", "epoch", "history"}``), so the
curves need no Ray and survive a resumed run. The confusion matrix reloads the bundle and
predicts the validation split (the same within-subject split as training) in the driver,
reading the feature shards with pyarrow, one shard at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from emoray.data.features import batch_to_tensors, feature_metadata
from emoray.data.shards import shard_files
from emoray.data.subject_norm import normalize
from emoray.bundle import TRAIN_STATE_FILE, load_bundle

#: The confusion matrix is skipped above this many validation rows (it runs in the driver).
MAX_CONFUSION_ROWS = 20_000


def read_history(checkpoint: str | Path) -> list[dict[str, Any]]:
    """Per-epoch metrics (``epoch``, ``train_loss``, ``val_acc``, ``val_f1`` ...) of the
    run that wrote ``checkpoint``, oldest first; empty if it has no ``train_state.pt``."""
    path = Path(checkpoint) / TRAIN_STATE_FILE
    if not path.is_file():
        return []
    state = torch.load(path, map_location="cpu", weights_only=False)
    return list(state.get("history") or [])


def plot_history(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Two panels: train loss per epoch; val accuracy, macro-F1 and per-modality accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [int(h["epoch"]) + 1 for h in history]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h.get("train_loss", np.nan) for h in history], marker="o", label="train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("training loss")
    for key in ("val_acc", "val_f1"):
        ax_val.plot(epochs, [h.get(key, np.nan) for h in history], marker="o", label=key)
    for key in sorted({k for h in history for k, v in h.items()
                       if k.startswith(("val_acc_", "val_f1_")) and isinstance(v, float)
                       and not k.endswith(("_valence", "_arousal"))}):
        ax_val.plot(epochs, [h.get(key, np.nan) for h in history], linestyle="--",
                    label=key)
    ax_val.set_ylim(0, 1)
    ax_val.set_xlabel("epoch")
    ax_val.set_title("validation")
    for ax in (ax_loss, ax_val):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def val_batches(features: str | Path, columns: list[str], split=None, batch_size: int = 32,
                max_rows: int | None = MAX_CONFUSION_ROWS
                ) -> Iterator[dict[str, np.ndarray]] | None:
    """Numpy batches of ``columns`` of the split's validation rows, read in the driver one
    shard at a time; None if there are more than ``max_rows``."""
    from emoray.train.split import split_records

    files = shard_files(features)
    _, val_ids = split_records(files, split, str(features))
    if max_rows is not None and len(val_ids) > max_rows:
        return None
    ids = pa.array(sorted(val_ids), pa.string())

    def gen():
        for f in files:
            table = pq.read_table(f, columns=["record_id"] + columns)
            table = table.filter(pc.is_in(table["record_id"], value_set=ids))
            for start in range(0, table.num_rows, batch_size):
                yield _numpy_batch(table.slice(start, batch_size))
    return gen()


def val_confusion(checkpoint: str | Path, features: str | Path, split=None,
                  batch_size: int = 32) -> dict[str, tuple[np.ndarray, list[str]]] | None:
    """Confusion matrices ``(true, pred)`` of a bundle on the validation split with their
    label names: ``{"label": ...}`` for fusion, ``{<target>: ...}`` of the speech-only path
    for a JMML classifier; None for other stages or a split larger than
    :data:`MAX_CONFUSION_ROWS`."""
    from emoray.bundle import read_bundle_meta

    meta = feature_metadata(features)
    stage = read_bundle_meta(checkpoint)["stage"]
    if stage not in ("fusion", "classifier"):
        return None
    model, bundle = load_bundle(checkpoint, feature_meta=meta)
    if stage == "fusion":
        from emoray.train.stages.fusion import model_columns

        wanted = ["subject", "label"] + model_columns(meta, model)
        names = {"label": list(bundle["label_names"])}
    else:
        wanted = [f"{t}_high" for t in model.targets] + [model.features["speech"]]
        names = {t: [f"{t} low", f"{t} high"] for t in model.targets}
    batches = val_batches(features, wanted, split, batch_size)
    if batches is None:
        return None
    conf = {k: np.zeros((len(v), len(v)), dtype=np.int64) for k, v in names.items()}
    for batch in batches:
        t = normalize(batch_to_tensors(batch, meta), model, batch.get("subject"))
        with torch.no_grad():
            if stage == "fusion":
                keep = t["label"] >= 0
                if keep.any():
                    t = {k: v[keep] for k, v in t.items()}
                    pred = model(t).logits.argmax(1)                       # (B,)
                    np.add.at(conf["label"], (t["label"].numpy(), pred.numpy()), 1)
                continue
            probs = model.predict(t)["probs"]                            # speech-only path
            for name in model.targets:
                y = t[f"{name}_high"]
                keep = (y >= 0) & t["speech_present"]
                pred = probs[name].argmax(1)
                np.add.at(conf[name], (y[keep].numpy(), pred[keep].numpy()), 1)
    return {k: (conf[k], names[k]) for k in conf}


def _numpy_batch(table: pa.Table) -> dict[str, np.ndarray]:
    """A pyarrow slice as the numpy batch :func:`batch_to_tensors` reads (object arrays of
    flat lists for the feature columns)."""
    batch = {}
    for name in table.column_names:
        values = table[name].to_pylist()
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        batch[name] = arr
    return batch


def plot_confusion(conf: np.ndarray, names: list[str], path: str | Path,
                   title: str = "") -> Path:
    """Row-normalised confusion matrix with the raw counts written in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = conf.sum(1, keepdims=True)
    norm = conf / np.maximum(rows, 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(names), 0.8 + 0.7 * len(names)))
    ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, str(conf[i, j]), ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "validation confusion")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def write_curves(checkpoint: str | Path, out_dir: str | Path, *,
                 features: str | Path | None = None, stage: str = "fusion", split=None,
                 echo: Callable[[str], None] = print) -> list[Path]:
    """Write ``<stage>_curves.png`` (and ``<stage>_confusion.png`` when ``features`` is
    given) into ``out_dir``; return the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    history = read_history(checkpoint)
    if history:
        written.append(plot_history(history, out_dir / f"{stage}_curves.png",
                                    title=f"{stage}: {len(history)} epochs"))
    else:
        echo(f"stage {stage}: no metrics history in {checkpoint}; no learning curves")
    if features is not None:
        found = val_confusion(checkpoint, features, split)
        if found is None and stage in ("fusion", "classifier"):
            echo(f"stage {stage}: validation split larger than {MAX_CONFUSION_ROWS} rows; "
                 "confusion matrix skipped")
        for key, (conf, names) in (found or {}).items():
            suffix = "" if key == "label" else f"_{key}"
            what = "" if key == "label" else f" {key}, speech only"
            written.append(plot_confusion(
                conf, names, out_dir / f"{stage}_confusion{suffix}.png",
                title=f"{stage}{what}: validation ({conf.sum()} rows)"))
    return written
