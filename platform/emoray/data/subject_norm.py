"""Per-subject normalisation of model inputs: what a calibration recording gives a model.

Subject offsets dwarf emotion effects in every modality (EEG log band power differs by
about 0.6 between people, the class signature is about 0.25; voices differ in level, pitch
and timbre; faces in shape, skin and background). Per-segment normalisation removes the
offsets *and* the signal (band power, energy, spectral tilt). This module removes the
offsets only: every input column is standardised with statistics of the *subject* — the
mean and spread of that subject's own recordings, labels unused — which a deployed model
gets from a short calibration recording of the person (``POST /v1/subjects/{id}/calibration``).

What is standardised, per feature column (the tensors :func:`batch_to_tensors` makes):

========== ======================= ============================================
column     statistics kept          effect
========== ======================= ============================================
eeg        per channel              channel offset and gain (band power kept)
eeg_bp     per channel and band     log10 power, minus the subject's mean
eeg_de     per channel and band     differential entropy, minus the subject's mean
logmel     per mel bin              the subject's voice timbre and level
audio_stats per statistic           the subject's pitch, level, rate
video      mean frame; std per RGB  face shape, skin, background: expression kept
========== ======================= ============================================

A :class:`SubjectStats` holds the running sums of each subject (mergeable, so a stream or
several shards can be summed), plus the pooled sums of all subjects: the
*subject-independent* fallback for a subject never calibrated. Written by hand: no field
library offers subject-wise standardisation of mixed tensors that can be saved and applied
at serving time (MNE's scalers and scikit-learn's ``StandardScaler`` are per-feature and
global).

Examples
--------
>>> import torch
>>> stats = SubjectStats(["eeg"])
>>> x = {"eeg": torch.randn(4, 2, 10) * 3 + 1, "eeg_present": torch.ones(4, dtype=bool)}
>>> stats.update(x, ["s1"] * 4)
>>> y = stats.apply(dict(x), ["s1"] * 4)
>>> bool(abs(float(y["eeg"].mean())) < 1e-4)
True
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emoray.errors import ConfigError, DataError

#: column -> (axes of one sample reduced for the mean, axes reduced for the std, log10 first)
REDUCE: dict[str, tuple[tuple[int, ...], tuple[int, ...], bool]] = {
    "eeg": ((1,), (1,), False),                  # (C, T): per channel
    "eeg_bp": ((), (), True),                    # (C, n_bands)
    "eeg_de": ((), (), False),                   # (C, n_bands)
    "logmel": ((1,), (1,), False),               # (M, F): per mel bin
    "audio_stats": ((), (), False),              # (S,)
    "video": ((0,), (0, 2, 3), False),           # (N, 3, S, S): mean frame; std per RGB
}
MODALITY = {"eeg": "eeg", "eeg_bp": "eeg", "eeg_de": "eeg", "logmel": "speech",
            "audio_stats": "speech", "video": "video"}
#: the pooled statistics of all subjects (the subject-independent path)
POOLED = "*"
_EPS = 1e-6
#: a subject's std is at least this fraction of the pooled std, so that a short
#: calibration (or a flat channel) cannot blow a feature up
_STD_FLOOR = 0.1


def _sums(x: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, float]:
    """Sum, sum of squares and count of ``x`` ``(B, *shape)`` over the batch and ``axes``."""
    full = (0, *(a + 1 for a in axes))
    count = float(np.prod([x.shape[a] for a in full]))
    return (x.sum(full, dtype=np.float64), np.square(x, dtype=np.float64).sum(full),
            count)


def _std(acc: list[Any]) -> np.ndarray:
    """The std over the std axes from their sums: sqrt(E[x^2] - E[x]^2)."""
    m = acc[2] / acc[4]
    return np.sqrt(np.maximum(acc[3] / acc[4] - m ** 2, 0.0))


def _reduced(column: str, x: np.ndarray) -> np.ndarray:
    """What is standardised of ``column``: log10 power for the power columns, else ``x``."""
    return np.log10(np.maximum(x, 1e-30)) if REDUCE[column][2] else x


class SubjectStats:
    """Running per-subject statistics of some feature columns, and their application.

    Parameters
    ----------
    columns : sequence of str
        Feature columns to standardise (keys of :data:`REDUCE`).
    """

    def __init__(self, columns: Sequence[str]):
        unknown = sorted(set(columns) - set(REDUCE))
        if unknown:
            raise ConfigError(f"subject_norm.columns: unknown column {unknown[0]!r}; "
                              f"expected some of {sorted(REDUCE)}")
        self.columns = list(columns)
        # subject -> column -> [mean sums, mean count, sq sums (std axes), std count]
        self._acc: dict[str, dict[str, list[Any]]] = {}

    # -- accumulating ----------------------------------------------------------------------
    def update(self, tensors: dict[str, torch.Tensor], subjects: Sequence[str]) -> None:
        """Add a batch (as :func:`batch_to_tensors` makes it) of rows of ``subjects``."""
        subjects = np.asarray([str(s) for s in subjects])
        for column in self.columns:
            if column not in tensors:
                continue
            present = tensors.get(f"{MODALITY[column]}_present")
            keep = (np.ones(len(subjects), bool) if present is None
                    else present.cpu().numpy().astype(bool))
            x = self._prepare(column, tensors[column].detach().float().cpu().numpy())
            for s in np.unique(subjects[keep]):
                rows = x[keep & (subjects == s)]
                for who in (s, POOLED):
                    self._add(who, column, rows)

    def _prepare(self, column: str, x: np.ndarray) -> np.ndarray:
        return _reduced(column, x)

    def _add(self, who: str, column: str, rows: np.ndarray) -> None:
        mean_axes, std_axes, _ = REDUCE[column]
        s, _, n = _sums(rows, mean_axes)
        s2, q2, n2 = _sums(rows, std_axes)
        acc = self._acc.setdefault(who, {}).get(column)
        if acc is None:
            self._acc[who][column] = [s, n, s2, q2, n2]
        else:
            for i, v in enumerate((s, n, s2, q2, n2)):
                acc[i] = acc[i] + v

    def merge(self, other: "SubjectStats") -> "SubjectStats":
        """Add ``other``'s sums into this one (same columns); returns ``self``."""
        for who, cols in other._acc.items():
            for column, acc in cols.items():
                mine = self._acc.setdefault(who, {}).get(column)
                self._acc[who][column] = (list(acc) if mine is None
                                          else [a + b for a, b in zip(mine, acc)])
        return self

    # -- reading ---------------------------------------------------------------------------
    @property
    def subjects(self) -> list[str]:
        """The subjects with statistics (not the pooled entry)."""
        return sorted(s for s in self._acc if s != POOLED)

    def columns_of(self, subject: str) -> list[str]:
        """The columns with statistics for ``subject``."""
        return [c for c in self.columns if c in self._acc.get(str(subject), {})]

    def has(self, subject: str) -> bool:
        return str(subject) in self._acc

    def moments(self, column: str, subject: str = POOLED) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, std)`` of ``column`` for ``subject`` (broadcastable to one sample).

        The std is at least :data:`_STD_FLOOR` times the pooled std."""
        acc = self._acc.get(str(subject), {}).get(column) or self._acc.get(POOLED, {}).get(
            column)
        if acc is None:
            raise DataError(None, f"no statistics of column {column!r}", kind="layout",
                            field=column)
        mean_axes, std_axes, _ = REDUCE[column]
        mean = acc[0] / acc[1]
        std = _std(acc)
        pooled = self._acc.get(POOLED, {}).get(column)
        if pooled is not None:
            std = np.maximum(std, _STD_FLOOR * _std(pooled))
        std = std + _EPS
        return (np.expand_dims(mean, mean_axes).astype(np.float32),
                np.expand_dims(std, std_axes).astype(np.float32))

    def moments_for(self, subject: str | None,
                    columns: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The ``(mean, std)`` of each of ``columns`` this object standardises, for
        ``subject`` (the pooled ones for a subject without statistics or ``None``): what
        :func:`standardize` applies to one subject's rows away from this object (a serving
        deployment gets them with the request)."""
        who = str(subject) if subject is not None and self.has(str(subject)) else POOLED
        return {c: self.moments(c, who) for c in self.columns if c in columns}

    def apply(self, tensors: dict[str, torch.Tensor],
              subjects: Sequence[str | None]) -> dict[str, torch.Tensor]:
        """Standardise ``tensors``' columns in place with each row's subject's statistics
        (the pooled ones for a subject without statistics or ``None``); absent rows stay 0."""
        keys = [str(s) if s is not None and self.has(str(s)) else POOLED for s in subjects]
        for column in self.columns:
            if column not in tensors:
                continue
            x = tensors[column]
            out = torch.from_numpy(self._prepare(column, x.detach().float().cpu().numpy()))
            for who in sorted(set(keys)):
                rows = torch.tensor([k == who for k in keys])
                mean, std = self.moments(column, who)
                out[rows] = (out[rows] - torch.from_numpy(mean)) / torch.from_numpy(std)
            present = tensors.get(f"{MODALITY[column]}_present")
            if present is not None:
                out[~present.cpu()] = 0.0
            tensors[column] = out.to(x.device)
        return tensors

    # -- saving ----------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The sums as an ``.npz`` (see :meth:`from_bytes`)."""
        arrays: dict[str, np.ndarray] = {}
        index = {"columns": self.columns, "entries": []}
        for i, (who, cols) in enumerate(sorted(self._acc.items())):
            for column, acc in cols.items():
                index["entries"].append([i, who, column])
                for j, v in enumerate(acc):
                    arrays[f"e{i}_{column}_{j}"] = np.asarray(v)
        arrays["index"] = np.frombuffer(json.dumps(index).encode(), dtype=np.uint8)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "subject statistics") -> "SubjectStats":
        try:
            with np.load(io.BytesIO(data)) as z:
                index = json.loads(bytes(z["index"]).decode())
                stats = cls(index["columns"])
                for i, who, column in index["entries"]:
                    acc = [z[f"e{i}_{column}_{j}"] for j in range(5)]
                    acc[1], acc[4] = float(acc[1]), float(acc[4])
                    stats._acc.setdefault(who, {})[column] = acc
        except (OSError, ValueError, KeyError) as err:
            raise DataError(source, f"not a subject-statistics file ({err})",
                            kind="invalid_value") from None
        return stats

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_bytes(self.to_bytes())
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SubjectStats":
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            raise DataError(str(path), f"cannot read subject statistics: {err}",
                            kind="layout") from None
        return cls.from_bytes(data, str(path))

    def adopt(self, subject: str, other: "SubjectStats") -> "SubjectStats":
        """A copy whose entry for ``subject`` is ``other``'s (e.g. a calibration recording's);
        the pooled entry, and so the std floor, stay this one's."""
        if not other.has(subject):
            raise DataError(None, f"no statistics of subject {subject!r} to adopt",
                            kind="layout", field="subject")
        out = SubjectStats(self.columns)
        out._acc = {**self._acc, str(subject): other._acc[str(subject)]}
        return out



#: the file of a model bundle that holds its subject statistics
STATS_FILE = "subject_stats.npz"


def standardize(tensors: dict[str, torch.Tensor],
                moments: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Standardise ``tensors``' columns in place with one subject's ``moments``
    (:meth:`SubjectStats.moments_for`), as :meth:`SubjectStats.apply` does for rows of that
    subject; absent rows stay 0."""
    for column, (mean, std) in moments.items():
        if column not in tensors:
            continue
        x = tensors[column]
        out = torch.from_numpy(_reduced(column, x.detach().float().cpu().numpy()))
        out = (out - torch.from_numpy(mean)) / torch.from_numpy(std)
        present = tensors.get(f"{MODALITY[column]}_present")
        if present is not None:
            out[~present.cpu()] = 0.0
        tensors[column] = out.to(x.device)
    return tensors


def stats_of_features(folder: str | Path, columns: Sequence[str],
                      record_ids: set[str] | None = None) -> SubjectStats:
    """The :class:`SubjectStats` of ``columns`` over the rows of a preprocess output (only
    those whose ``record_id`` is in ``record_ids``, e.g. a train split), one shard at a time."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from emoray.data.features import batch_to_tensors, feature_metadata
    from emoray.data.shards import shard_files

    meta = feature_metadata(folder)
    stored = {c: ("video_f32" if c == "video" and meta.get("video_storage") == "float32"
                  else c) for c in columns}
    stats = SubjectStats(columns)
    for f in shard_files(folder):
        table = pq.read_table(f, columns=["record_id", "subject", *stored.values()])
        if record_ids is not None:
            table = table.filter(pc.is_in(table["record_id"],
                                          value_set=pa.array(sorted(record_ids), pa.string())))
        for part in table.to_batches(max_chunksize=256):
            batch = {c: np.array(part.column(c).to_pylist() + [None], dtype=object)[:-1]
                     for c in part.schema.names}
            stats.update(batch_to_tensors(batch, meta), batch["subject"])
    if not stats.has(POOLED):
        raise DataError(str(folder), f"no rows with {list(columns)} to compute subject "
                        f"statistics from", kind="layout")
    return stats


def normalize(tensors: dict[str, torch.Tensor], model: Any,
              subjects: Sequence[str | None] | None) -> dict[str, torch.Tensor]:
    """Apply ``model.subject_stats`` (if the model has any) to ``tensors`` in place, each
    row with its subject's statistics (``subjects`` None: the pooled ones)."""
    stats = getattr(model, "subject_stats", None)
    if stats is None:
        return tensors
    if subjects is None:
        n = next(iter(tensors.values())).shape[0] if tensors else 0
        subjects = [None] * n
    return stats.apply(tensors, list(subjects))
