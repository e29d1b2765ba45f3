"""What the layouts of users' own data share: their options (``manifest``, ``bids``) and
the manifest CSV writer (the ``manifest`` layout's fake-data twin, and users' tool)."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Sequence

from emoray.errors import ConfigError
from emoray.io.eeg import normalize_channel_name
from emoray.labels import EAV_CLASSES
from emoray.types import MODALITIES


def check_options(label_names, va_scale, eeg_channels, dataset, video_fps):
    """Validate the options shared by the manifest and bids layouts; return them
    normalised: (label names, va_scale, eeg_channels, dataset, video_fps)."""
    if label_names is not None:
        if isinstance(label_names, str) or not isinstance(label_names, Sequence) or \
                not label_names or not all(isinstance(n, str) and n.strip() for n in label_names):
            raise ConfigError(f"manifest option label_names={label_names!r}: expected a "
                              "non-empty list of class names")
        if len({n.strip().lower() for n in label_names}) != len(label_names):
            raise ConfigError(f"manifest option label_names={list(label_names)}: names "
                              "must be unique (case-insensitive)")
    try:
        low, high = (float(v) for v in va_scale)
    except (TypeError, ValueError):
        raise ConfigError(f"manifest option va_scale={va_scale!r}: expected two numbers "
                          "[low, high]") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ConfigError(f"manifest option va_scale={va_scale!r}: expected finite "
                          "low < high")
    if eeg_channels is not None:
        if isinstance(eeg_channels, str) or not isinstance(eeg_channels, Sequence) or \
                not eeg_channels or not all(isinstance(c, str) for c in eeg_channels):
            raise ConfigError(f"manifest option eeg_channels={eeg_channels!r}: expected a "
                              "non-empty list of channel names")
        eeg_channels = [normalize_channel_name(c) for c in eeg_channels]
        if len(set(eeg_channels)) != len(eeg_channels):
            raise ConfigError(f"manifest option eeg_channels={eeg_channels}: duplicate "
                              "channel names")
    if not isinstance(dataset, str) or not dataset.strip() or "/" in dataset:
        raise ConfigError(f"manifest option dataset={dataset!r}: expected a non-empty "
                          "name without '/'")
    if isinstance(video_fps, bool) or not isinstance(video_fps, (int, float)) or \
            not video_fps > 0:
        raise ConfigError(f"manifest option video_fps={video_fps!r}: expected a positive "
                          "number")
    names = tuple(n.strip() for n in label_names) if label_names is not None else EAV_CLASSES
    return names, (low, high), eeg_channels, dataset.strip(), float(video_fps)

COLUMNS: tuple[str, ...] = ("subject", "session", "trial", "label", "valence", "arousal",
                            *MODALITIES, "events")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


def _relative(path: Path, base: Path) -> str:
    """``path`` relative to ``base``: absolute and existing cwd-relative paths are
    converted; other relative paths are taken to be relative to ``base`` already."""
    if path.is_absolute() or (path.exists() and not (base / path).exists()):
        return Path(os.path.relpath(path.resolve(), base)).as_posix()
    return path.as_posix()


def write_manifest(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Write a manifest CSV readable by :class:`ManifestAdapter`.

    Parameters
    ----------
    path : str | os.PathLike
        The CSV file to write (parent folders are created).
    rows : list[dict]
        One dict per trial with ``subject`` and any of the columns in :data:`COLUMNS`;
        other keys become extra columns. Modality paths are written relative to the CSV's
        folder: absolute paths and relative paths that exist from the current directory
        are converted, other relative paths are kept (taken as relative to the CSV's
        folder already). ``None`` and NaN are written as empty cells.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    base = out.parent.resolve()
    keys = {k for row in rows for k in row}
    columns = ["subject", *[c for c in COLUMNS if c in keys and c != "subject"]]
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            cells = []
            for column in columns:
                value = row.get(column)
                if column in (*MODALITIES, "events") and value not in (None, "") \
                        and str(value).lower() not in ("annotations", "stim"):
                    value = _relative(Path(value), base)
                cells.append(_cell(value))
            writer.writerow(cells)
