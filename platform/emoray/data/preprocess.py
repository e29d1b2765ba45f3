"""Preprocessing on Ray Data: record shards -> feature shards, per the contract.

Per record: EEG through MNE filters (notch, band-pass, blink regression, resample,
normalise) plus band features; speech resampled to 16 kHz and turned into a log-mel with
torchaudio plus prosody statistics; video frames decoded, cropped, resized with
torchvision. The parameters are one :class:`~emoray.config.contract.PreprocessContract`,
stored in the feature shards' metadata and in ``contract.json``; serving calls
:func:`preprocess_record` with the contract from a checkpoint to repeat the transform.

The pipeline is a Ray Data ``map_batches`` over the shard files (one shard per call): the
task streams its shard in row batches, writes the matching feature shard, and returns
counts and per-record rejections, so one bad record is reported and the rest go through.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

import numpy as np

from emoray import __version__
from emoray.config import PreprocessConfig
from emoray.config.contract import PreprocessContract
from emoray.data.shards import (FEATURE_SCHEMA, SHARD_DIR, read_metadata, shard_files,
                                unflatten, with_metadata, write_shard)
from emoray.errors import ConfigError, DataError

REPORT_NAME = "preprocess_report.json"
_CARRIED = ("record_id", "dataset", "subject", "session", "trial", "segment", "start_seconds",
            "valid_seconds", "label", "label_name", "valence", "arousal", "valence_high",
            "arousal_high", "extra")


def preprocess_record(record: dict[str, Any], contract: PreprocessContract,
                      ch_names: list[str] | None = None,
                      video_storage: str = "float32") -> dict[str, Any]:
    """Features of one record (a row of the record schema); absent modalities stay None."""
    from emoray.data.transforms import (preprocess_speech, preprocess_eeg,
                                        preprocess_video_jpeg)

    out: dict[str, Any] = {k: record.get(k) for k in _CARRIED}
    if record.get("eeg") is not None:
        data = unflatten(record["eeg"], record["eeg_shape"])                       # (C, T)
        names = ch_names or contract.eeg.channels or [f"ch{i}" for i in range(data.shape[0])]
        feats = preprocess_eeg(data, float(record["eeg_sfreq"]), names, contract.eeg,
                               source=record.get("record_id"))
        out.update({k: np.asarray(v, np.float32).ravel() for k, v in feats.items()})
    if record.get("audio") is not None:
        samples = np.asarray(record["audio"], np.float32)                        # (T,)
        feats = preprocess_speech(samples, int(record["audio_rate"]), contract.audio,
                                 source=record.get("record_id"))
        out.update({k: np.asarray(v, np.float32).ravel() for k, v in feats.items()})
    if record.get("video") is not None:
        frames = preprocess_video_jpeg(record["video"], contract.video,
                                       normalize=video_storage == "float32")["video"]  # (N, 3, S, S)
        key = "video_f32" if video_storage == "float32" else "video"
        out[key] = np.asarray(frames).ravel()
    return out


def process_shard(task: dict[str, Any]) -> dict[str, Any]:
    """Preprocess one record shard into one feature shard; return counts and rejections."""
    import pyarrow.parquet as pq
    import torch

    torch.set_num_threads(1)
    contract = PreprocessContract.from_json(task["contract"])
    meta = json.loads(task["meta"])
    ch_names = meta["dataset"].get("eeg_channels")
    rows, rejected = [], []
    n_in = 0
    pf = pq.ParquetFile(task["input"])
    for batch in pf.iter_batches(batch_size=int(task["batch_size"])):
        for record in batch.to_pylist():
            n_in += 1
            try:
                rows.append(preprocess_record(record, contract, ch_names, task["video_storage"]))
            except DataError as err:
                rejected.append({"record_id": record["record_id"], "kind": err.kind,
                                 "field": err.field, "reason": err.reason})
            except Exception as exc:  # a transform bug must not sink the shard
                last = traceback.extract_tb(exc.__traceback__)[-1]
                rejected.append({"record_id": record["record_id"], "kind": "invalid_value",
                                 "field": None, "reason": f"unexpected {type(exc).__name__}: "
                                 f"{exc} (at {Path(last.filename).name}:{last.lineno})"})
    if rows:
        write_shard(task["output"], rows, with_metadata(FEATURE_SCHEMA, meta))
    return {"input": task["input"], "records_in": n_in, "records_out": len(rows),
            "rejected": json.dumps(rejected)}


def run_tasks_ray(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run the shard tasks as a Ray Data ``map_batches`` pipeline (one task per shard)."""
    from emoray.runtime import map_tasks

    return map_tasks(tasks, process_shard, desc="preprocess", unit="shard")


def run_tasks_local(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [process_shard(t) for t in tasks]


def resolve_contract(contract: PreprocessContract, ingest_meta: dict[str, Any]) -> PreprocessContract:
    """Fill the dataset-dependent contract fields (channel order, segment length)."""
    data = contract.model_dump()
    if not data["eeg"].get("channels"):
        data["eeg"]["channels"] = ingest_meta["dataset"].get("eeg_channels")
    data["segment_seconds"] = float(ingest_meta.get("segment_seconds", data["segment_seconds"]))
    return PreprocessContract.model_validate(data)


def run_preprocess(cfg: PreprocessConfig, *, runner=run_tasks_ray, echo=print) -> dict[str, Any]:
    """Preprocess ``cfg.input`` (an ingest output) into ``cfg.output``; return the report."""
    if not cfg.input or not cfg.output:
        raise ConfigError("preprocess.input and preprocess.output must be set "
                          "(emoray preprocess INPUT --out OUTPUT)")
    t0 = time.perf_counter()
    inputs = shard_files(cfg.input)
    ingest_meta = read_metadata(inputs[0])
    if ingest_meta.get("stage") != "ingest":
        raise DataError(str(inputs[0]), f"expected record shards from `emoray ingest`, found "
                        f"stage {ingest_meta.get('stage')!r}", kind="layout")
    contract = resolve_contract(cfg.contract, ingest_meta)
    out = Path(cfg.output)
    fingerprint = _fingerprint(cfg, contract, inputs)
    previous = _read_json(out / REPORT_NAME)
    if previous and previous.get("fingerprint") == fingerprint and not cfg.force \
            and (out / SHARD_DIR).is_dir():
        echo(f"preprocess: {out} is up to date ({previous['records_out']} records, same "
             "shards and contract): skipped; use --force to redo it")
        return dict(previous, action="skipped")
    n_chans = len(contract.eeg.channels or [])
    meta = dict(ingest_meta, stage="preprocess", contract=json.loads(contract.to_json()),
                video_storage=cfg.video_storage, emoray_version=__version__,
                feature_shapes={k: list(v) for k, v in contract.output_shapes(n_chans).items()})
    staging = out / f".staging-{os.getpid()}-{int(time.time())}"
    staging.mkdir(parents=True, exist_ok=True)
    tasks = [{"input": str(f), "output": str(staging / f.name), "contract": contract.to_json(),
              "meta": json.dumps(meta), "batch_size": cfg.batch_size,
              "video_storage": cfg.video_storage} for f in inputs]
    echo(f"preprocess: {len(inputs)} shards from {cfg.input} (contract {contract.fingerprint()})")
    results = runner(tasks)
    from emoray.data.ingest import _swap_in

    action = _swap_in(staging, out / SHARD_DIR, echo)
    rejections = [r for res in results for r in json.loads(res["rejected"])]
    report = {"input": str(cfg.input), "output": str(out), "action": action,
              "records_in": sum(r["records_in"] for r in results),
              "records_out": sum(r["records_out"] for r in results),
              "rejected": len(rejections), "rejected_by_kind": dict(Counter(r["kind"] for r in rejections)),
              "rejections": rejections, "contract": contract.fingerprint(),
              "fingerprint": fingerprint, "seconds": round(time.perf_counter() - t0, 2)}
    report["reconciled"] = report["records_in"] == report["records_out"] + report["rejected"]
    contract.save(out / "contract.json")
    (out / REPORT_NAME).write_text(json.dumps(report, indent=2))
    (out / "dataset.json").write_text(json.dumps(meta, indent=2))
    (out / "config.yaml").write_text(yaml.safe_dump(
        {"preprocess": cfg.model_dump(mode="json")}, sort_keys=False))
    return report


def _fingerprint(cfg: PreprocessConfig, contract: PreprocessContract, inputs: list[Path]) -> str:
    h = hashlib.sha256(f"{__version__}:{contract.to_json()}:{cfg.video_storage}".encode())
    for f in inputs:
        st = f.stat()
        h.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def format_report(report: dict[str, Any], max_rejections: int = 10) -> str:
    lines = [f"preprocess {report.get('action', '')}: {report['records_in']} records in = "
             f"{report['records_out']} out + {report['rejected']} rejected "
             f"({'reconciled' if report['reconciled'] else 'DOES NOT RECONCILE'}); "
             f"contract {report['contract']} ({report['seconds']} s)"]
    for r in report["rejections"][:max_rejections]:
        lines.append(f"  - {r['record_id']}: [{r['kind']}] {r['field'] or ''} {r['reason']}")
    return "\n".join(lines)
