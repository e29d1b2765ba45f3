"""Which records train and which validate, and the checks that read the feature shards.

The split is by records' ids, read from Parquet (no Ray): METHODS.md's within-subject
split or held-out subjects (:class:`~emoray.config.SplitConfig`). Checks that read the
shards (:func:`check_columns`) use Parquet metadata only, so bad input fails before any
worker starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import math
import re

import pyarrow as pa
import pyarrow.parquet as pq

from emoray.config import TRAIN_FRACTION, SplitConfig
from emoray.data.features import read_features
from emoray.data.shards import keep_ids
from emoray.errors import ConfigError, DataError

_ID_COLUMNS = ["record_id", "subject", "session", "trial", "segment", "label"]


def _id_table(files: list[Path]) -> pa.Table:
    return pa.concat_tables([pq.read_table(f, columns=_ID_COLUMNS) for f in files])


def within_subject_split(files: list[Path], fraction: float = TRAIN_FRACTION,
                         among: set[str] | None = None) -> tuple[set[str], set[str]]:
    """Record ids of the within-subject split, by trial (reads the id columns only).

    Per (subject, label), the trials sorted by (session, trial), digit runs as numbers: the
    first
    ``round(fraction * n_trials)`` (at least one) train, the rest validate, and every
    segment goes with its trial: segments of one trial are near-duplicates, so a trial is
    never on both sides. Unlabelled records (label null or < 0) are in neither. ``among``:
    split only these records (e.g. the train side again, for an inner split).
    """
    groups: dict[tuple[str, int], dict[tuple, list[str]]] = {}
    for r in _id_table(files).to_pylist():
        if r["label"] is None or r["label"] < 0:
            continue
        if among is not None and r["record_id"] not in among:
            continue
        trials = groups.setdefault((r["subject"], int(r["label"])), {})
        trials.setdefault((str(r["session"]), str(r["trial"])), []).append(r["record_id"])
    train, val = set(), set()
    for trials in groups.values():
        keys = sorted(trials, key=lambda k: (_natural(k[0]), _natural(k[1])))
        n_train = min(len(keys), max(1, int(math.floor(fraction * len(keys) + 0.5))))
        for i, key in enumerate(keys):
            (train if i < n_train else val).update(trials[key])
    return train, val


def _natural(text: str) -> tuple:
    """Sort key that orders "t2" before "t10" (digit runs compare as numbers)."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text))


def subjects_of(files: list[Path]) -> list[str]:
    """The distinct subjects of the shards, sorted."""
    table = pa.concat_tables([pq.read_table(f, columns=["subject"]) for f in files])
    return sorted({s for s in table["subject"].to_pylist() if s is not None})


def split_records(files: list[Path], split: SplitConfig | None,
                  source: str) -> tuple[set[str], set[str]]:
    """Train and val record ids under ``split``; DataError if either side is empty.

    With ``protocol="subjects"`` every record of ``val_subjects`` validates (labelled or
    not: the stage decides what it can score) and every other record trains.
    """
    split = split or SplitConfig()
    if split.protocol == "within-subject":
        train, val = within_subject_split(files, split.fraction)
    else:
        known = subjects_of(files)
        unknown = [s for s in split.val_subjects if s not in known]
        if unknown or not split.val_subjects:
            raise ConfigError(f"train.split.val_subjects: expected a non-empty list of "
                              f"subjects of {source} ({known}), got {split.val_subjects}")
        held = set(split.val_subjects)
        train, val = set(), set()
        for r in _id_table(files).select(["record_id", "subject"]).to_pylist():
            (val if r["subject"] in held else train).add(r["record_id"])
    if not train or not val:
        raise DataError(source, f"the {split.protocol} split gives {len(train)} train and "
                        f"{len(val)} val records; need both non-empty", kind="label")
    return train, val


def unseen_subject_records(files: list[Path], train_ids: set[str],
                           val_ids: set[str]) -> set[str]:
    """The validation records of subjects that have no training record (leave-subjects-
    out): what a calibration recording of a new user would cover."""
    rows = _id_table(files).select(["record_id", "subject"]).to_pylist()
    seen = {r["subject"] for r in rows if r["record_id"] in train_ids}
    return {r["record_id"] for r in rows
            if r["record_id"] in val_ids and r["subject"] not in seen}


def inner_split(files: list[Path], train_ids: set[str], fraction: float,
                source: str) -> tuple[set[str], set[str]]:
    """``(fit, inner)``: the train records split again by trial, the last ``fraction`` of
    each subject x class's train trials held out (for choosing an epoch without looking
    at the validation split); DataError if no trial is left to hold out."""
    fit, inner = within_subject_split(files, 1.0 - fraction, among=train_ids)
    if not inner or not fit:
        raise DataError(source, f"select_epoch 'inner': holding out {fraction:.0%} of each "
                        f"subject x class's train trials leaves {len(fit)} fit and "
                        f"{len(inner)} inner records; need both non-empty (more trials per "
                        "class, a larger inner_fraction, or select_epoch 'last')",
                        kind="label")
    return fit | (train_ids - fit - inner), inner


def split_datasets(features: Path, columns: list[str], train_ids: set[str],
                   val_ids: set[str], materialize: bool,
                   inner_ids: set[str] | None = None) -> dict[str, Any]:
    """``{"train", "val"}`` Ray Datasets of ``columns`` (blocks stay in the object store),
    and ``"inner"`` when ``inner_ids`` are given."""
    ds = read_features(features, columns=columns)
    # the workers' per-epoch reads would print a progress bar each; the stage prints its own
    # progress line per epoch instead
    ds.context.enable_progress_bars = False
    # rows in file order, not in the order Ray Data's read tasks happen to finish: the
    # order decides which worker gets which rows and so the seeded run's batches (six
    # materialisations of one split on a busy machine gave six row orders)
    ds.context.execution_options.preserve_order = True
    datasets = {"train": keep_ids(ds, train_ids), "val": keep_ids(ds, val_ids)}
    if inner_ids:
        datasets["inner"] = keep_ids(ds, inner_ids)
    if materialize:
        datasets = {k: v.materialize() for k, v in datasets.items()}
    return datasets


def non_null_columns(files: list[Path], columns: list[str]) -> set[str]:
    """Which of ``columns`` hold a non-null value in some row (Parquet statistics only)."""
    found = {c: False for c in columns}
    for f in files:
        md = pq.ParquetFile(f).metadata
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            for j in range(rg.num_columns):
                col = rg.column(j)
                top = col.path_in_schema.split(".")[0]
                if top in found and not found[top]:
                    stats = col.statistics
                    nulls = stats.null_count if stats is not None and stats.has_null_count \
                        else 0
                    found[top] = col.num_values > nulls
    return {c for c, ok in found.items() if ok}


def check_columns(files: list[Path], needed: dict[str, str], stage: str) -> None:
    """Raise DataError naming each modality whose column is null in every shard row.

    ``needed`` maps modality -> feature column.
    """
    present = non_null_columns(files, list(needed.values()))
    missing = [m for m, c in needed.items() if c not in present]
    if missing:
        raise DataError(str(files[0].parent), f"the {stage} stage needs modalities "
                        f"{list(needed)}, but {missing} is absent from every shard (column "
                        f"{[needed[m] for m in missing]} is all null)", kind="layout",
                        field=missing[0])
