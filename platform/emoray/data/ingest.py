"""Ingest on Ray Data: a dataset tree -> Parquet shards of segmented records.

The driver lists trials (cheap), groups them into shards, and runs one Ray Data task per
shard: each task rebuilds the adapter, reads and segments its trials, writes its shard
file directly and returns a small summary (records written, trials rejected with reasons).
So no signal data passes through the driver, the shard names are deterministic
(``part-00000.parquet`` ...), and one bad trial never sinks its shard.

Outputs in ``OUTPUT/``: ``shards/part-*.parquet``, ``dataset.json``, ``ingest_report.json``,
``config.yaml``. Re-running on the same folder skips when sources and config are
unchanged, and otherwise replaces the previous shards as a whole (no duplicates).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from emoray import __version__
from emoray.config import IngestConfig
from emoray.data.segment import SegmentSettings, conform, segment_trial
from emoray.data.shards import RECORD_SCHEMA, SHARD_DIR, with_metadata, write_shard
from emoray.datasets.base import DatasetAdapter, Rejection, get_adapter
from emoray.errors import ConfigError, DataError
from emoray.types import TrialSpec

REPORT_NAME = "ingest_report.json"


def build_adapter(cfg: IngestConfig) -> DatasetAdapter:
    if not cfg.source:
        raise ConfigError("ingest.source is not set: pass the dataset root (emoray ingest SOURCE)")
    if not Path(cfg.source).exists():
        raise ConfigError(f"ingest.source {cfg.source} does not exist")
    adapter = get_adapter(cfg.layout, cfg.source, cfg.options)
    adapter.video_sample_fps = cfg.video_fps
    adapter.video_max_size = cfg.video_max_size
    return adapter


def _settings(cfg: IngestConfig) -> SegmentSettings:
    return SegmentSettings(segment_seconds=cfg.segment_seconds, short_trials=cfg.short_trials,
                           min_trial_seconds=cfg.min_trial_seconds,
                           resample_mismatched=cfg.resample_mismatched,
                           jpeg_quality=cfg.jpeg_quality)


def process_group(item: dict[str, Any]) -> dict[str, Any]:
    """One shard's work: read, conform and segment its trials, write the shard file.

    ``item["task"]`` is a JSON string (so Arrow does not merge the trials' differently
    keyed dicts on the way to the Ray task) holding ``shard`` (index), ``path`` (output
    file), ``cfg`` (IngestConfig), ``info`` (DatasetInfo), ``meta`` (schema metadata) and
    ``specs`` (TrialSpec dicts). Returns a summary dict of plain values.
    """
    import torch

    torch.set_num_threads(1)
    from emoray.datasets.base import DatasetInfo

    task = json.loads(item["task"])
    cfg = IngestConfig.model_validate(task["cfg"])
    info = DatasetInfo(**task["info"])
    settings = _settings(cfg)
    adapter = build_adapter(cfg)
    rows: list[dict] = []
    rejected: list[dict] = []
    ingested = 0
    for spec_dict in task["specs"]:
        spec = TrialSpec(**spec_dict)
        try:
            trial = conform(adapter.load_trial(spec), info, settings)
            rows.extend(segment_trial(trial, info, settings))
            ingested += 1
        except DataError as err:
            rejected.append(Rejection.from_error(spec.trial_id, spec.files, err).to_dict())
        except Exception as exc:  # a reader bug must not sink the shard: report it
            last = traceback.extract_tb(exc.__traceback__)[-1]
            rejected.append(Rejection(spec.trial_id, spec.files, "unreadable",
                                      f"unexpected {type(exc).__name__}: {exc} "
                                      f"(at {Path(last.filename).name}:{last.lineno})").to_dict())
    n_records = 0
    if rows:
        schema = with_metadata(RECORD_SCHEMA, task["meta"])
        n_records = write_shard(task["path"], rows, schema)
    modalities = Counter(m for r in rows for m in ("eeg", "audio", "video") if r.get(m) is not None)
    return {"shard": task["shard"], "path": task["path"] if rows else None,
            "records": n_records, "ingested": ingested, "rejected": json.dumps(rejected),
            "modalities": json.dumps(dict(modalities))}


def _fingerprint(cfg: IngestConfig, specs: list[TrialSpec], rejections: list[Rejection]) -> str:
    h = hashlib.sha256()
    h.update(__version__.encode())
    h.update(cfg.model_dump_json(exclude={"force", "output"}).encode())
    files = sorted({f for s in specs for f in s.files} | {f for r in rejections for f in r.files})
    for f in files:
        try:
            st = os.stat(f)
            h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
        except OSError:
            h.update(f"{f}:missing".encode())
    return h.hexdigest()[:20]


def plan(cfg: IngestConfig) -> tuple[DatasetAdapter, Any, list[TrialSpec], list[Rejection]]:
    """List the dataset (driver side, cheap)."""
    adapter = build_adapter(cfg)
    info = adapter.info()
    specs, rejections = adapter.list_trials()
    specs = sorted(specs, key=lambda s: (s.subject, s.session, s.trial))
    return adapter, info, specs, rejections


def make_tasks(cfg: IngestConfig, info: Any, specs: list[TrialSpec], staging: Path,
               meta: dict[str, Any]) -> list[dict[str, Any]]:
    per = cfg.trials_per_shard
    tasks = []
    for i in range(0, len(specs), per):
        shard = i // per
        task = {"shard": shard, "path": str(staging / f"part-{shard:05d}.parquet"),
                "cfg": cfg.model_dump(mode="json"), "info": info.to_dict(), "meta": meta,
                "specs": [dataclasses.asdict(s) for s in specs[i:i + per]]}
        tasks.append({"shard": shard, "task": json.dumps(task, default=str)})
    return tasks


def run_tasks_ray(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run the shard tasks as a Ray Data pipeline (one task per shard)."""
    from emoray.runtime import map_tasks

    return map_tasks(tasks, process_group, desc="ingest", unit="shard")


def run_tasks_local(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same work as a plain sequential loop (the benchmark's baseline)."""
    return [process_group(t) for t in tasks]


def run_ingest(cfg: IngestConfig, *, runner=run_tasks_ray, echo=print) -> dict[str, Any]:
    """Ingest ``cfg.source`` into ``cfg.output``; return (and write) the ingest report."""
    if not cfg.output:
        raise ConfigError("ingest.output is not set: pass --out FOLDER")
    out = Path(cfg.output)
    t0 = time.perf_counter()
    adapter, info, specs, rejections = plan(cfg)
    found = len(specs) + len(rejections)
    fingerprint = _fingerprint(cfg, specs, rejections)
    previous = _read_report(out)
    if previous and previous.get("fingerprint") == fingerprint and not cfg.force:
        echo(f"ingest: {out} is up to date ({previous['ingested']} trials, "
             f"{previous['records']} records from the same sources and config): skipped; "
             "use --force to redo it")
        return dict(previous, action="skipped")
    channels = None
    if cfg.channels is not None and "eeg" in info.modalities:
        from emoray.data.channels import plan_channels

        channels = plan_channels(cfg.channels, specs, info.eeg_channels)
        info.eeg_channels = channels["picked"]            # conform() picks every trial
        if cfg.layout == "manifest":                     # the adapter reads to this set
            cfg = cfg.model_copy(update={"options": {**cfg.options,
                                                     "eeg_channels": channels["picked"]}})
    meta = {"stage": "ingest", "dataset": info.to_dict(), "source": str(Path(cfg.source).resolve()),
            "layout": cfg.layout, "segment_seconds": cfg.segment_seconds,
            "video_storage": "jpeg", "emoray_version": __version__,
            "eeg_unit": "V", "label_names": info.label_names}
    staging = out / f".staging-{os.getpid()}-{int(time.time())}"
    staging.mkdir(parents=True, exist_ok=True)
    tasks = make_tasks(cfg, info, specs, staging, meta)
    echo(f"ingest: {found} trials found in {cfg.source} ({cfg.layout}); "
         f"{len(rejections)} rejected while listing; reading {len(specs)} in {len(tasks)} shards")
    results = runner(tasks)
    for res in results:
        rejections.extend(Rejection(**r) for r in json.loads(res["rejected"]))
    action = _swap_in(staging, out / SHARD_DIR, echo)
    report = _report(cfg, info, found, results, rejections, fingerprint, action,
                     time.perf_counter() - t0)
    if channels is not None:
        report["channels"] = channels
    (out / REPORT_NAME).write_text(json.dumps(report, indent=2))
    (out / "dataset.json").write_text(json.dumps(meta, indent=2))
    (out / "config.yaml").write_text(yaml.safe_dump({"ingest": cfg.model_dump(mode="json")},
                                                    sort_keys=False))
    return report


def _read_report(out: Path) -> dict | None:
    try:
        report = json.loads((out / REPORT_NAME).read_text())
    except (OSError, ValueError):
        return None
    return report if (out / SHARD_DIR).is_dir() else None


def _swap_in(staging: Path, shards: Path, echo) -> str:
    """Replace the old shards folder by the new one; say what happened."""
    action = "created"
    if shards.exists():
        old = sorted(shards.glob("part-*.parquet"))
        echo(f"ingest: overwriting {len(old)} existing shard(s) in {shards}")
        trash = shards.with_name(f".old-{staging.name}")
        shards.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
        action = f"overwrote {len(old)} shards"
    staging.rename(shards)
    return action


def _report(cfg, info, found, results, rejections, fingerprint, action, seconds) -> dict:
    ingested = sum(r["ingested"] for r in results)
    records = sum(r["records"] for r in results)
    modality = Counter()
    for r in results:
        modality.update(json.loads(r["modalities"]))
    by_kind = Counter(r.kind for r in rejections)
    return {
        "source": str(cfg.source), "layout": cfg.layout, "output": str(cfg.output),
        "found": found, "ingested": ingested, "rejected": len(rejections),
        "reconciled": found == ingested + len(rejections),
        "records": records, "records_per_modality": dict(modality),
        "shards": sorted(Path(r["path"]).name for r in results if r["path"]),
        "rejected_by_kind": dict(by_kind),
        "rejections": [r.to_dict() for r in rejections],
        "dataset": info.to_dict(), "fingerprint": fingerprint, "action": action,
        "seconds": round(seconds, 2),
    }


def format_report(report: dict[str, Any], max_rejections: int = 20) -> str:
    """The printed ingest summary."""
    lines = [f"ingest {report.get('action', '')}: {report['found']} found = "
             f"{report['ingested']} ingested + {report['rejected']} rejected "
             f"({'reconciled' if report['reconciled'] else 'DOES NOT RECONCILE'}); "
             f"{report['records']} records in {len(report['shards'])} shards "
             f"({report['seconds']} s)"]
    if report["records_per_modality"]:
        mods = ", ".join(f"{k} {v}" for k, v in sorted(report["records_per_modality"].items()))
        lines.append(f"  records per modality: {mods}")
    if report["rejections"]:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(report["rejected_by_kind"].items()))
        lines.append(f"  rejected by kind: {kinds}")
        for r in report["rejections"][:max_rejections]:
            files = ", ".join(r["files"]) or r["trial_id"]
            lines.append(f"  - {r['trial_id']}: [{r['kind']}] {files}: {r['reason']}")
        if len(report["rejections"]) > max_rejections:
            lines.append(f"  ... {len(report['rejections']) - max_rejections} more in "
                         f"{REPORT_NAME}")
    if report.get("channels"):
        from emoray.data.channels import format_channels

        lines.extend(format_channels(report["channels"]))
    for note in report["dataset"].get("notes", []):
        lines.append(f"  note: {note}")
    return "\n".join(lines)
