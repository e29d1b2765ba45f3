"""Channel sets at ingest: keep recordings whose EEG channels differ, picked to one set.

Real lab data mixes caps: a 64-channel session beside a 32-channel one, a file with an
extra EOG or a dead electrode left out. By default ingest uses the dataset's declared
channels (a manifest's first file decides) and rejects a file that lacks one. With
``ingest.channels`` the set is chosen up front, from every EEG file's header (no samples
are read), and each file is picked to it:

- a list of names: exactly those, in that order (a file missing one is still rejected,
  naming the channel);
- ``intersection``: the channels every EEG file has, in the first file's order;
- an MNE montage name (``standard_1020``, ``standard_1005``, ``biosemi64`` ...): the
  montage's channels that every file has, in the montage's order.

The ingest report's ``channels`` entry says which set was picked and which channels were
dropped from which files.

Examples
--------
>>> resolve_set(["Fz", "Cz"], {"a.edf": ["Fz", "Cz", "Pz"], "b.edf": ["Cz", "Fz"]})
['Fz', 'Cz']
>>> resolve_set("intersection", {"a.edf": ["Fz", "Cz", "Pz"], "b.edf": ["Pz", "Cz"]})
['Cz', 'Pz']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emoray.errors import ConfigError, DataError

INTERSECTION = "intersection"


def _montage_names(name: str) -> list[str]:
    import warnings

    import mne

    try:
        with warnings.catch_warnings():  # MNE 1.13 renames standard_1020 (same names)
            warnings.simplefilter("ignore", FutureWarning)
            return list(mne.channels.make_standard_montage(name).ch_names)
    except ValueError:
        builtin = mne.channels.get_builtin_montages()
        raise ConfigError(f"ingest.channels: {name!r} is neither {INTERSECTION!r} nor an MNE "
                          f"montage; montages: standard_1020, standard_1005, "
                          f"{', '.join(builtin)} (or give a list of channel names)") from None


def resolve_set(spec: str | list[str], files: dict[str, list[str]]) -> list[str]:
    """The channel set ``spec`` means for EEG files with these (normalised) channels.

    Raises :class:`~emoray.errors.ConfigError` when the set comes out empty or a list
    names a channel twice.
    """
    from emoray.io.eeg import normalize_channel_name

    if isinstance(spec, (list, tuple)):
        picked = [normalize_channel_name(c) for c in spec]
        twice = sorted({c for c in picked if picked.count(c) > 1})
        if not picked or twice:
            raise ConfigError(f"ingest.channels={list(spec)}: expected a non-empty list of "
                              f"distinct channel names" + (f"; twice: {twice}" if twice else ""))
        return picked
    if not files:
        raise ConfigError(f"ingest.channels={spec!r}: no EEG file header could be read")
    lists = list(files.values())
    common = set(lists[0]).intersection(*map(set, lists[1:]))
    if spec == INTERSECTION:
        picked = [c for c in lists[0] if c in common]
    else:
        by_lower = {c.lower(): c for c in common}
        picked = [by_lower[m.lower()] for m in _montage_names(spec) if m.lower() in by_lower]
    if not picked:
        raise ConfigError(f"ingest.channels={spec!r}: no channel is common to all "
                          f"{len(files)} EEG files" + ("" if spec == INTERSECTION else
                                                       f" and in the {spec} montage"))
    return picked


def eeg_files(specs) -> list[str]:
    """The EEG file (a format MNE reads) of every trial spec that names one (each once,
    in order)."""
    from emoray.io.eeg import SUPPORTED_EEG_EXTENSIONS

    seen: dict[str, None] = {}
    for s in specs:
        ref = s.refs.get("eeg")
        path = str(ref.get("path") or "") if isinstance(ref, dict) else ""
        if path.lower().endswith(SUPPORTED_EEG_EXTENSIONS):
            seen.setdefault(path, None)
    return list(seen)


def _bad_channels(specs) -> dict[str, set[str]]:
    """Channels an adapter marks bad per EEG file (a BIDS channels.tsv's ``status``):
    not counted as the file's channels, so ``intersection`` leaves them out."""
    from emoray.io.eeg import normalize_channel_name

    return {str(s.refs["eeg"]["path"]): {normalize_channel_name(b) for b in
                                         s.refs["eeg"]["bads"]}
            for s in specs if isinstance(s.refs.get("eeg"), dict) and s.refs["eeg"].get("bads")}


def read_channels(paths: list[str]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """``({file: normalised channels}, {file: why its header could not be read})``."""
    from emoray.io.eeg import eeg_header

    found, failed = {}, {}
    for path in paths:
        try:
            found[path] = list(eeg_header(path)[0])
        except (DataError, OSError, ValueError) as err:
            failed[path] = str(err)
    return found, failed


def plan_channels(spec: str | list[str], specs, declared: list[str] | None
                  ) -> dict[str, Any]:
    """Choose the channel set for these trial specs; return the report's ``channels``
    entry: ``{"spec", "picked", "files", "dropped": {file: [names]}, "missing":
    {file: [names]}, "unreadable": {file: reason}}``. Without readable EEG files of their
    own (an adapter of fixed-layout archives) every trial has the ``declared`` channels."""
    files, failed = read_channels(eeg_files(specs))
    files = {f: [c for c in chans if c not in bads] for f, chans in files.items()
             for bads in [_bad_channels(specs).get(f, set())]}
    if not files and not failed and declared:
        files = {"(every trial)": list(declared)}
    picked = resolve_set(spec, files)
    wanted = set(picked)
    return {"spec": spec if isinstance(spec, str) else list(spec), "picked": picked,
            "files": len(files),
            "dropped": {f: [c for c in chans if c not in wanted]
                        for f, chans in files.items() if set(chans) - wanted},
            "missing": {f: [c for c in picked if c not in chans]
                        for f, chans in files.items() if wanted - set(chans)},
            "unreadable": failed}


def format_channels(entry: dict[str, Any], max_groups: int = 8, max_files: int = 4) -> list[str]:
    """Report lines: the set, then files grouped by the channels dropped from them."""
    spec = entry["spec"] if isinstance(entry["spec"], str) else "a list"
    lines = [f"  channels ({spec}): {len(entry['picked'])} picked from {entry['files']} EEG "
             f"files: {', '.join(entry['picked'])}"]
    groups: dict[tuple[str, ...], list[str]] = {}
    for f, names in entry["dropped"].items():
        groups.setdefault(tuple(names), []).append(Path(f).name)
    for names, files in sorted(groups.items(), key=lambda g: -len(g[1]))[:max_groups]:
        more = f" and {len(files) - max_files} more" if len(files) > max_files else ""
        lines.append(f"  - dropped {', '.join(names)} from {len(files)} file(s): "
                     f"{', '.join(files[:max_files])}{more}")
    if len(groups) > max_groups:
        lines.append(f"  ... {len(groups) - max_groups} more groups in the ingest report")
    for f, names in entry["missing"].items():
        lines.append(f"  - {Path(f).name} lacks {', '.join(names)}: rejected")
    return lines
