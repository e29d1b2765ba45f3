"""``emoray inspect``: counts, rates and shapes of a shard folder, and a PNG overview."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from emoray.data.shards import read_metadata, shard_files, unflatten

_MODALITY_COLUMNS = {"ingest": {"eeg": "eeg", "audio": "audio", "video": "video"},
                     "preprocess": {"eeg": "eeg", "audio": "logmel", "video": "video"}}


def summarize(folder: str | Path) -> dict[str, Any]:
    """Counts per subject/class/modality, sample rates and shapes of a shard folder."""
    files = shard_files(folder)
    meta = read_metadata(files[0])
    stage = meta.get("stage", "ingest")
    columns = _MODALITY_COLUMNS.get(stage, _MODALITY_COLUMNS["ingest"])
    if stage == "preprocess" and meta.get("video_storage") == "float32":
        columns = dict(columns, video="video_f32")
    subjects, classes, modalities, trials = Counter(), Counter(), Counter(), set()
    binaries = {"valence_high": Counter(), "arousal_high": Counter()}
    lengths: dict[str, Counter] = {m: Counter() for m in columns}
    rates: dict[str, Counter] = {"eeg_sfreq": Counter(), "audio_rate": Counter(),
                                 "video_fps": Counter()}
    n = 0
    for file in files:
        pf = pq.ParquetFile(file)
        names = set(pf.schema_arrow.names)
        light = ["subject", "session", "trial", "label_name", "valence_high", "arousal_high"]
        light += [c for c in rates if c in names]
        table = pf.read(columns=light)
        n += table.num_rows
        subjects.update(table["subject"].to_pylist())
        classes.update(x for x in table["label_name"].to_pylist() if x is not None)
        for key in binaries:
            binaries[key].update(x for x in table[key].to_pylist() if x is not None)
        trials.update(zip(table["subject"].to_pylist(), table["session"].to_pylist(),
                          table["trial"].to_pylist()))
        for col in rates:
            if col in names:
                rates[col].update(x for x in table[col].to_pylist() if x is not None)
        for modality, col in columns.items():
            arr = pf.read(columns=[col])[col]
            present = pc.invert(pc.is_null(arr))
            modalities[modality] += int(pc.sum(present).as_py() or 0)
            lengths[modality].update(x for x in pc.list_value_length(arr).to_pylist()
                                     if x is not None)
    return {"folder": str(folder), "stage": stage, "records": n, "trials": len(trials),
            "shards": len(files), "dataset": meta.get("dataset", {}).get("name"),
            "label_names": meta.get("label_names"), "subjects": dict(sorted(subjects.items())),
            "classes": dict(classes), "binaries": {k: dict(v) for k, v in binaries.items()},
            "modalities": dict(modalities),
            "rates": {k: sorted(v) for k, v in rates.items() if v},
            "shapes": _shapes(meta, stage, lengths),
            "eeg_channels": meta.get("dataset", {}).get("eeg_channels"),
            "segment_seconds": meta.get("segment_seconds")}


def _shapes(meta: dict, stage: str, lengths: dict[str, Counter]) -> dict[str, Any]:
    if stage == "preprocess":
        return meta.get("feature_shapes", {})
    n_ch = len(meta.get("dataset", {}).get("eeg_channels") or []) or 1
    out = {}
    if lengths["eeg"]:
        out["eeg"] = [[n_ch, v // n_ch] for v in sorted(lengths["eeg"])]
    if lengths["audio"]:
        out["audio"] = [[v] for v in sorted(lengths["audio"])]
    if lengths["video"]:
        out["video (jpeg frames)"] = [[v] for v in sorted(lengths["video"])]
    return out


def format_summary(s: dict[str, Any]) -> str:
    lines = [f"{s['folder']}: {s['stage']} shards of dataset {s['dataset']!r}: {s['records']} "
             f"records from {s['trials']} trials in {s['shards']} shards "
             f"({s['segment_seconds']} s segments)"]
    lines.append("  per modality: " + ", ".join(f"{k} {v}" for k, v in s["modalities"].items()))
    if s["classes"]:
        order = s["label_names"] or sorted(s["classes"])
        lines.append("  per class:    " + ", ".join(f"{c} {s['classes'].get(c, 0)}" for c in order))
    for key, counts in s["binaries"].items():
        if counts:
            lines.append(f"  {key}: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    lines.append("  per subject:  " + ", ".join(f"{k} {v}" for k, v in s["subjects"].items()))
    for key, values in s["rates"].items():
        lines.append(f"  {key}: {', '.join(f'{v:g}' for v in values)}")
    for key, shape in s["shapes"].items():
        lines.append(f"  shape {key}: {shape}")
    if s["eeg_channels"]:
        lines.append(f"  EEG channels ({len(s['eeg_channels'])}): {' '.join(s['eeg_channels'])}")
    return "\n".join(lines)


def overview_png(folder: str | Path, png: str | Path | None = None) -> Path:
    """Class balance plus one example per modality (EEG traces, spectrogram, frames)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = shard_files(folder)
    meta = read_metadata(files[0])
    summary = summarize(folder)
    png = Path(png) if png else Path(folder) / "overview.png"
    example = _first_examples(files, summary["stage"], meta)
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    ax = axes[0, 0]
    order = summary["label_names"] or sorted(summary["classes"])
    counts = ({c: summary["classes"].get(c, 0) for c in order} if summary["classes"] else
              {f"{k}={v}": c for k, d in summary["binaries"].items() for v, c in d.items()})
    ax.bar(list(counts), list(counts.values()), color="tab:blue")
    ax.set_title(f"records per class ({summary['records']} records)")
    ax.tick_params(axis="x", rotation=30)
    _plot_eeg(axes[0, 1], example.get("eeg"), meta, summary["stage"])
    _plot_audio(axes[1, 0], example.get("audio"), summary["stage"], meta)
    _plot_video(axes[1, 1], example.get("video"))
    fig.suptitle(f"{summary['dataset']} ({summary['stage']}): {Path(folder).name}")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=80)
    plt.close(fig)
    return png


def _first_examples(files, stage: str, meta: dict) -> dict[str, Any]:
    from emoray.io.video import decode_jpeg

    found: dict[str, Any] = {}
    for file in files:
        table = pq.read_table(file)
        for row in table.to_pylist():
            if "eeg" not in found and row.get("eeg") is not None:
                shape = row.get("eeg_shape") or meta["feature_shapes"]["eeg"]
                found["eeg"] = (unflatten(row["eeg"], shape), row.get("eeg_sfreq"))
            audio_key = "audio" if stage == "ingest" else "logmel"
            if "audio" not in found and row.get(audio_key) is not None:
                found["audio"] = (np.asarray(row[audio_key], np.float32), row.get("audio_rate"))
            if "video" not in found and (row.get("video") is not None
                                         or row.get("video_f32") is not None):
                found["video"] = _frames(row, stage, meta, decode_jpeg)
        if len(found) == 3:
            break
    return found


def _frames(row: dict, stage: str, meta: dict, decode_jpeg) -> np.ndarray:
    if stage == "ingest":
        return decode_jpeg(row["video"][:4])                              # (4, H, W, 3)
    shape = meta["feature_shapes"]["video"]                              # (N, 3, S, S)
    if row.get("video") is not None:
        frames = unflatten(row["video"], shape, np.uint8)
        return frames[:4].transpose(0, 2, 3, 1)
    c = meta["contract"]["video"]
    frames = unflatten(row["video_f32"], shape)[:4].transpose(0, 2, 3, 1)
    return np.clip(frames * np.asarray(c["std"]) + np.asarray(c["mean"]), 0, 1)


def _plot_eeg(ax, example, meta: dict, stage: str) -> None:
    if example is None:
        ax.set_title("no EEG")
        return
    data, sfreq = example
    sfreq = sfreq or meta.get("contract", {}).get("eeg", {}).get("sfreq", 1.0)
    names = meta["dataset"].get("eeg_channels") or [str(i) for i in range(len(data))]
    k = min(8, data.shape[0])
    t = np.arange(data.shape[1]) / sfreq
    scale = np.median(np.abs(data[:k])) * 8 + 1e-12
    for i in range(k):
        ax.plot(t, data[i] / scale - i, lw=0.6)
    ax.set_yticks(-np.arange(k), names[:k])
    ax.set_xlabel("s")
    ax.set_title(f"EEG ({'volts' if stage == 'ingest' else 'normalised'}), first {k} channels")


def _plot_audio(ax, example, stage: str, meta: dict) -> None:
    if example is None:
        ax.set_title("no speech")
        return
    values, rate = example
    if stage == "ingest":
        ax.specgram(values, Fs=rate, NFFT=1024, noverlap=512, cmap="magma")
        ax.set_ylim(0, min(8000, rate / 2))
        ax.set_ylabel("Hz")
        ax.set_title(f"speech spectrogram ({rate} Hz)")
    else:
        n_mels = meta["contract"]["audio"]["n_mels"]
        ax.imshow(values.reshape(n_mels, -1), origin="lower", aspect="auto", cmap="magma")
        ax.set_title("log-mel (normalised)")


def _plot_video(ax, frames) -> None:
    ax.axis("off")
    if frames is None:
        ax.set_title("no video")
        return
    ax.imshow(np.concatenate(list(frames), axis=1))
    ax.set_title(f"first {len(frames)} frames")
