"""Events of a continuous recording: where trials start, how long they last, their labels.

A lab recording holds many trials; its events say where. emoray reads them from

- an **events file**, CSV or TSV (BIDS ``*_events.tsv`` is one): columns ``onset`` and
  ``duration`` in seconds from the recording's first sample, a label column (``label`` or
  ``trial_type``, or the one named by ``events.label_column``) and/or ``valence`` and
  ``arousal``; ``n/a`` and empty cells are missing values. Other columns are kept in the
  trial's ``extra``;
- the recording's own **annotations**, read by MNE: EDF+/BDF+ annotations, BrainVision
  markers (``Stimulus/S  1``, ``Comment/happy``), FIF annotations; valence/arousal from the
  annotations' ``extras`` when present;
- a **stim channel** (FIF's ``STI 014`` and the like) through :func:`mne.find_events`; an
  event's description is its integer code.

MNE does the reading of annotations and stim channels (``Raw.annotations``,
``Raw.time_as_index``, ``mne.find_events``). The events file is parsed here with the
standard ``csv`` module because no library of the stack reads a *generic* events table:
MNE reads only its own annotation CSV (``onset`` as a timestamp, ``description``) and
mne-bids reads ``events.tsv`` only into annotations, which keep ``trial_type`` but drop the
valence/arousal columns; BIDS files go through the same reader so both behave alike.

:class:`EventSettings` holds the ``events`` option that the ``manifest`` and ``bids``
layouts share (the mapping from descriptions to labels, the pre/post window, the baseline
interval, what to do with overlaps).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emoray.errors import ConfigError, DataError

SOURCES: tuple[str, ...] = ("file", "annotations", "stim")
_MISSING = ("", "n/a", "na", "nan")
_OPTION_KEYS = ("source", "map", "label_column", "pre", "post", "baseline", "stim_channel",
                "overlap")


@dataclass
class Event:
    """One event: ``onset``/``duration`` in seconds from the recording's first sample."""

    onset: float
    duration: float
    description: str            # label column value, annotation description or stim code
    where: str                  # "events.tsv:5", "annotation 3", "stim event 2"
    valence: float | None = None    # raw, on the dataset's va_scale
    arousal: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None    # a bad row of an events file: the event is rejected


def _number(value: Any, name: str, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value):
        raise ConfigError(f"ingest option events.{name}={value!r}: expected a number of "
                          "seconds" + (" or null" if allow_none else ""))
    return float(value)


@dataclass
class EventSettings:
    """The ``events`` adapter option (see docs/guide/ingest.md for examples).

    Parameters
    ----------
    source : str | None
        ``file``, ``annotations`` or ``stim``; None lets each manifest row say (its
        ``events`` cell). The ``bids`` layout always reads ``*_events.tsv``.
    map : dict | None
        Event description -> label: a class name or index, or a mapping with ``label``,
        ``valence``, ``arousal``. With a map, events whose description it lacks are not
        trials (they are counted in the run's notes); without one, every event is a trial
        and its description must be a class name.
    label_column : str | None
        The events-file column holding the label (default ``label``, else ``trial_type``).
    pre, post : float
        The trial window is ``[onset - pre, onset + post]``; ``post=None`` uses the event's
        duration.
    baseline : tuple[float, float] | None
        ``(start, end)`` seconds relative to the onset (DEAP: ``[-3, 0]``): its per-channel
        mean is subtracted from the trial (MNE's ``rescale(mode="mean")``).
    stim_channel : str | None
        Stim channel for ``source: stim`` (None: MNE's default search).
    overlap : str
        ``reject`` (default): a trial whose window overlaps an earlier kept one is rejected
        naming it; ``keep`` keeps both (the note says how many overlap).
    """

    source: str | None = None
    map: dict[str, Any] | None = None
    label_column: str | None = None
    pre: float = 0.0
    post: float | None = None
    baseline: tuple[float, float] | None = None
    stim_channel: str | None = None
    overlap: str = "reject"

    @classmethod
    def from_option(cls, option: Any) -> "EventSettings":
        """Validate the ``events`` option (a dict) into settings; ConfigError if bad."""
        if option is None:
            return cls()
        if not isinstance(option, dict):
            raise ConfigError(f"ingest option events={option!r}: expected a mapping with "
                              f"keys among {list(_OPTION_KEYS)}")
        unknown = sorted(set(option) - set(_OPTION_KEYS))
        if unknown:
            raise ConfigError(f"ingest option events has unknown key(s) {unknown}; "
                              f"expected keys among {list(_OPTION_KEYS)}")
        source = option.get("source")
        if source is not None and source not in SOURCES:
            raise ConfigError(f"ingest option events.source={source!r}: expected one of "
                              f"{list(SOURCES)}")
        mapping = option.get("map")
        if mapping is not None:
            if not isinstance(mapping, dict) or not mapping:
                raise ConfigError(f"ingest option events.map={mapping!r}: expected a "
                                  "non-empty mapping {description: label}")
            mapping = {_norm(str(k)): _check_target(k, v) for k, v in mapping.items()}
        pre = _number(option.get("pre", 0.0), "pre")
        post = _number(option.get("post"), "post", allow_none=True)
        if pre < 0 or (post is not None and post + pre <= 0):
            raise ConfigError(f"ingest options events.pre={pre:g}, events.post={post}: "
                              "expected pre >= 0 and a window pre + post > 0 s long")
        baseline = option.get("baseline")
        if baseline is not None:
            if not isinstance(baseline, (list, tuple)) or len(baseline) != 2:
                raise ConfigError(f"ingest option events.baseline={baseline!r}: expected "
                                  "[start, end] in seconds relative to the onset, e.g. [-3, 0]")
            baseline = (_number(baseline[0], "baseline[0]"), _number(baseline[1], "baseline[1]"))
            if not baseline[0] < baseline[1]:
                raise ConfigError(f"ingest option events.baseline={list(baseline)}: "
                                  "expected start < end")
        overlap = option.get("overlap", "reject")
        if overlap not in ("reject", "keep"):
            raise ConfigError(f"ingest option events.overlap={overlap!r}: expected "
                              "'reject' or 'keep'")
        label_column, stim = option.get("label_column"), option.get("stim_channel")
        for name, value in (("label_column", label_column), ("stim_channel", stim)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"ingest option events.{name}={value!r}: expected a name")
        return cls(source, mapping, label_column and label_column.strip().lower(), pre, post,
                   baseline, stim, overlap)

    def target(self, description: str) -> dict[str, Any] | None:
        """What an event's description means: ``{"label"?, "valence"?, "arousal"?}``;
        None when a map is set and does not name it (the event is not a trial)."""
        if self.map is None:
            return {"label": description} if description not in _MISSING else {}
        for key in (_norm(description), _norm(description.split("/", 1)[-1])):
            if key in self.map:       # exact, then without a BrainVision "Type/" prefix
                return self.map[key]
        return None


def _norm(text: str) -> str:
    return " ".join(text.split())


def _check_target(key: Any, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        bad = sorted(set(value) - {"label", "valence", "arousal"})
        ratings = [value.get(k) for k in ("valence", "arousal") if k in value]
        if bad or not value or not all(isinstance(r, (int, float)) and not isinstance(
                r, bool) and math.isfinite(r) for r in ratings):
            raise ConfigError(f"ingest option events.map[{key!r}]={value!r}: expected a "
                              "label, or a mapping with keys label/valence/arousal "
                              "(ratings as numbers on va_scale)")
        return dict(value)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ConfigError(f"ingest option events.map[{key!r}]={value!r}: expected a class "
                          "name or index")
    return {"label": value}


# ---------------------------------------------------------------------- events files
def read_events_file(path: str | Path, label_column: str | None = None,
                     defaults: tuple[str, ...] = ("label", "trial_type")) -> list[Event]:
    """Read a CSV/TSV events table (tab-separated for ``.tsv`` or a tab in the header).

    The label is in ``label_column``, else in the first of ``defaults`` present (the
    ``bids`` layout prefers ``trial_type``).

    Raises
    ------
    DataError
        ``kind="layout"`` naming the file when it cannot be read or lacks ``onset`` or any
        label column; a bad cell raises naming the line and column.
    """
    where = str(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(where, f"cannot read events file: {exc}", kind="layout") from None
    delimiter = "\t" if where.lower().endswith(".tsv") or "\t" in text.split("\n", 1)[0] \
        else ","
    reader = csv.reader(text.splitlines(), delimiter=delimiter)
    header = [h.strip().lower() for h in next(reader, [])]
    if "onset" not in header:
        raise DataError(where, f"events file has no 'onset' column; expected columns onset, "
                        f"duration, label (or trial_type) and/or valence, arousal (found "
                        f"{header})", kind="layout", field="onset")
    column = label_column or next((c for c in defaults if c in header), None)
    if label_column and label_column not in header:
        raise DataError(where, f"events file has no column {label_column!r} "
                        f"(events.label_column); columns are {header}", kind="layout",
                        field=label_column)
    if column is None and not {"valence", "arousal"} & set(header):
        raise DataError(where, f"events file has no label column; expected 'label', "
                        f"'trial_type' (or events.label_column) or valence/arousal (found "
                        f"{header})", kind="layout", field="label")
    events = []
    for values in reader:
        if not any(v.strip() for v in values):
            continue
        line = reader.line_num
        cells = {h: v.strip() for h, v in zip(header, values)}
        description = cells.get(column, "") if column else ""
        at = f"{Path(where).name}:{line}"
        try:
            events.append(Event(
                onset=_cell_number(cells, "onset", required=True),
                duration=_cell_number(cells, "duration") or 0.0,
                description=description, where=at,
                valence=_cell_number(cells, "valence"),
                arousal=_cell_number(cells, "arousal"),
                extra={k: v for k, v in cells.items() if k and k not in
                       ("onset", "duration", column, "valence", "arousal")
                       and v.lower() not in _MISSING}))
        except ValueError as exc:       # one bad row rejects that event only
            events.append(Event(math.nan, 0.0, description, at, error=str(exc)))
    return events


def _cell_number(cells: dict[str, str], column: str, *,
                 required: bool = False) -> float | None:
    text = cells.get(column, "")
    if text.lower() in _MISSING:
        if required:
            raise ValueError(f"{column} is empty; expected a number of seconds")
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"{column} {text!r} is not a number")
    return value


# ---------------------------------------------------------------------- recordings
def recording_events(raw: Any, source: str, stim_channel: str | None = None) -> list[Event]:
    """Events from an MNE ``Raw`` (header only): its annotations or its stim channel.

    Onsets are seconds from the first sample, counted as ``mne.events_from_annotations``
    does (``Raw.time_as_index`` with the annotations' own origin), so FIF files whose first
    sample is not 0 (cropped recordings) line up with or without a measurement date.
    """
    import mne

    sfreq = float(raw.info["sfreq"])
    where = raw.filenames[0] if raw.filenames else None
    if source == "stim":
        try:
            found = mne.find_events(raw, stim_channel=stim_channel, shortest_event=1,
                                    verbose="error")
        except Exception as exc:
            stims = [raw.ch_names[i] for i in mne.pick_types(raw.info, stim=True)]
            channel = repr(stim_channel) if stim_channel else "MNE's default stim channel"
            raise DataError(where, f"cannot read stim events from {channel} "
                            f"({' '.join(str(exc).split())[:120]}); the file's stim channels "
                            f"are {stims}: set events.stim_channel", kind="layout",
                            field="events") from None
        return [Event((sample - raw.first_samp) / sfreq, 0.0, str(code), f"stim event {i + 1}")
                for i, (sample, _, code) in enumerate(found)]
    annotations = raw.annotations
    samples = raw.time_as_index(annotations.onset, use_rounding=True,
                                origin=annotations.orig_time)
    if annotations.orig_time is None:     # as mne.events_from_annotations counts them
        samples = samples - raw.first_samp
    extras = getattr(annotations, "extras", None) or [{}] * len(annotations)
    events = []
    for i, (sample, duration, description) in enumerate(
            zip(samples, annotations.duration, annotations.description)):
        extra = dict(extras[i] or {})
        events.append(Event(float(sample) / sfreq, float(duration), str(description),
                            f"annotation {i + 1}", _float(extra.pop("valence", None)),
                            _float(extra.pop("arousal", None)), extra))
    return events


def _float(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None
