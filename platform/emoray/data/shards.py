"""The Parquet shard format: record schema, dataset metadata, reading and writing.

A record is one segment of one trial. Signals are stored flattened with their shape
(``eeg`` + ``eeg_shape`` = (C, T)); a modality the trial lacks is null, never zeros.
Video frames are stored as JPEG bytes (one blob per frame). Dataset metadata (channel
names, sample rates, label names, source, emoray version, and for feature shards the
preprocessing contract) is JSON under the key ``emoray`` in the Parquet schema metadata,
and also written as ``dataset.json`` beside the shards.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from emoray.errors import DataError

META_KEY = b"emoray"
SHARD_DIR = "shards"

ID_FIELDS: list[pa.Field] = [
    pa.field("record_id", pa.string(), nullable=False),
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("subject", pa.string(), nullable=False),
    pa.field("session", pa.string(), nullable=False),
    pa.field("trial", pa.string(), nullable=False),
    pa.field("segment", pa.int32(), nullable=False),
    pa.field("start_seconds", pa.float32(), nullable=False),
    pa.field("valid_seconds", pa.float32(), nullable=False),
]
LABEL_FIELDS: list[pa.Field] = [
    pa.field("label", pa.int16()),
    pa.field("label_name", pa.string()),
    pa.field("valence", pa.float32()),
    pa.field("arousal", pa.float32()),
    pa.field("valence_high", pa.int8()),
    pa.field("arousal_high", pa.int8()),
    pa.field("extra", pa.string()),         # JSON: task, acted flag, raw ratings ...
]
RECORD_SIGNAL_FIELDS: list[pa.Field] = [
    pa.field("eeg", pa.list_(pa.float32())),          # (C, T) flattened, volts
    pa.field("eeg_shape", pa.list_(pa.int32())),
    pa.field("eeg_sfreq", pa.float32()),
    pa.field("audio", pa.list_(pa.float32())),        # (T,) mono
    pa.field("audio_rate", pa.int32()),
    pa.field("video", pa.list_(pa.binary())),         # JPEG per frame
    pa.field("video_fps", pa.float32()),
]
FEATURE_FIELDS: list[pa.Field] = [
    pa.field("eeg", pa.list_(pa.float32())),          # (C, T') filtered, resampled, normalised
    pa.field("eeg_de", pa.list_(pa.float32())),       # (C, n_bands)
    pa.field("eeg_bp", pa.list_(pa.float32())),       # (C, n_bands)
    pa.field("logmel", pa.list_(pa.float32())),       # (n_mels, frames)
    pa.field("audio_stats", pa.list_(pa.float32())),  # (F,)
    pa.field("video", pa.list_(pa.uint8())),          # (n_frames, 3, S, S) uint8 or float32
    pa.field("video_f32", pa.list_(pa.float32())),
]

RECORD_SCHEMA = pa.schema(ID_FIELDS + LABEL_FIELDS + RECORD_SIGNAL_FIELDS)
FEATURE_SCHEMA = pa.schema(ID_FIELDS + LABEL_FIELDS + FEATURE_FIELDS)


def with_metadata(schema: pa.Schema, meta: dict[str, Any]) -> pa.Schema:
    # no sort_keys: the key order of the contract's eeg.bands is the band-feature order
    return schema.with_metadata({META_KEY: json.dumps(meta).encode()})


def write_shard(path: str | Path, rows: list[dict[str, Any]], schema: pa.Schema) -> int:
    """Write ``rows`` (dicts keyed by field name) atomically; return the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {f.name: [row.get(f.name) for row in rows] for f in schema}
    table = pa.Table.from_pydict(columns, schema=schema)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)
    return table.num_rows


def shard_files(folder: str | Path) -> list[Path]:
    """The shard files of an ingest/preprocess output folder (or a folder of shards)."""
    folder = Path(folder)
    if not folder.exists():
        raise DataError(str(folder), "no such folder; expected an ingest or preprocess output "
                        "folder holding shards/part-*.parquet", kind="layout")
    base = folder / SHARD_DIR if (folder / SHARD_DIR).is_dir() else folder
    files = sorted(base.glob("part-*.parquet"))
    if not files:
        raise DataError(str(folder), "holds no shards (expected shards/part-*.parquet; did "
                        "ingest finish?)", kind="layout")
    return files


def read_metadata(folder_or_file: str | Path) -> dict[str, Any]:
    """The ``emoray`` schema metadata of a shard file or of the first shard of a folder."""
    target = Path(folder_or_file)
    file = target if target.is_file() else shard_files(target)[0]
    try:
        meta = pq.read_schema(file).metadata or {}
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(str(file), f"not a readable Parquet file ({exc})") from None
    if META_KEY not in meta:
        raise DataError(str(file), "Parquet file has no emoray metadata; was it written by "
                        "emoray ingest/preprocess?", kind="layout")
    return json.loads(meta[META_KEY])


def iter_rows(files: list[Path], columns: list[str] | None = None,
              batch_size: int = 64) -> Iterator[dict[str, Any]]:
    """Rows of the shards as dicts (for inspection and small local loops)."""
    for file in files:
        pf = pq.ParquetFile(file)
        for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
            yield from batch.to_pylist()


def unflatten(values: list[float] | np.ndarray | None, shape: list[int] | tuple,
              dtype: Any = np.float32) -> np.ndarray | None:
    """A flattened signal back to its array shape (None stays None)."""
    if values is None:
        return None
    return np.asarray(values, dtype=dtype).reshape(tuple(shape))


def keep_ids(ds, ids: set[str]):
    """Rows of the Ray Dataset ``ds`` whose ``record_id`` is in ``ids`` (vectorised, on the
    Ray Data side). The filter lives here, in a module without torch, because each Ray Data
    task process imports the module of the function it runs."""
    return ds.map_batches(_filter_ids, fn_kwargs={"ids": sorted(ids)},
                          batch_format="pyarrow", zero_copy_batch=True)


def _filter_ids(batch: pa.Table, ids: list[str]) -> pa.Table:
    import pyarrow.compute as pc

    return batch.filter(pc.is_in(batch["record_id"], value_set=pa.array(ids, pa.string())))
