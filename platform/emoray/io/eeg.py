"""EEG file reading and writing through MNE, with 10-20 channel-name normalisation.

Every supported format (EDF, BDF, GDF, FIF, BrainVision, EEGLAB, CNT) is read with the
matching ``mne.io.read_raw_*`` function; only EEG-type channels are kept and their names are
normalised onto the spelling of MNE's 10-20 montage (``FP1-REF`` -> ``Fp1``, ``T3`` -> ``T7``).
Data come back in volts as ``float32`` arrays of shape ``(C, T)``.

Failures never leak MNE tracebacks: they are raised as :class:`~emoray.errors.DataError`
naming the file, with ``kind`` set to ``unreadable``, ``unknown_format``, ``invalid_value``,
``truncated`` or ``missing_channel``.
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from emoray.errors import DataError
from emoray.types import EEG

SUPPORTED_EEG_EXTENSIONS: tuple[str, ...] = (
    ".edf", ".bdf", ".gdf", ".fif", ".fif.gz", ".vhdr", ".set", ".cnt")

# Extension -> (mne.io reader name, human-readable format name).
_READERS: dict[str, tuple[str, str]] = {
    ".edf": ("read_raw_edf", "EDF"),
    ".bdf": ("read_raw_bdf", "BDF"),
    ".gdf": ("read_raw_gdf", "GDF"),
    ".fif": ("read_raw_fif", "FIF"),
    ".fif.gz": ("read_raw_fif", "FIF"),
    ".vhdr": ("read_raw_brainvision", "BrainVision"),
    ".set": ("read_raw_eeglab", "EEGLAB"),
    ".cnt": ("read_raw_cnt", "Neuroscan CNT"),
}

# Extension -> mne.export format name (FIF is written by Raw.save instead).
_EXPORT_FORMATS: dict[str, str] = {
    ".edf": "edf", ".bdf": "bdf", ".vhdr": "brainvision", ".set": "eeglab"}

_REF_SUFFIX = re.compile(r"-(REF|A1|A2|M1|M2|LE|AVG)$", re.IGNORECASE)
_EEG_PREFIX = re.compile(r"^EEG\s+", re.IGNORECASE)
# Old 10-20 temporal/parietal names -> the 10-10 names used by the montage.
_OLD_NAMES: dict[str, str] = {"T3": "T7", "T4": "T8", "T5": "P7", "T6": "P8"}


@functools.lru_cache(maxsize=1)
def standard_montage():
    """MNE's 10-20 montage (``colin27_1020``, formerly named ``standard_1020``).

    Returns
    -------
    mne.channels.DigMontage
        The montage whose channel spelling :func:`normalize_channel_name` follows.
    """
    import mne

    name = ("colin27_1020" if "colin27_1020" in mne.channels.get_builtin_montages()
            else "standard_1020")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mne.channels.make_standard_montage(name)


@functools.lru_cache(maxsize=1)
def _montage_spelling() -> dict[str, str]:
    return {name.upper(): name for name in standard_montage().ch_names}


def normalize_channel_name(name: str) -> str:
    """Normalise an EEG channel name onto the 10-20 montage spelling.

    Strips an ``"EEG "`` prefix and a reference suffix (``-REF``, ``-A1``, ``-M2``, ``-LE``,
    ``-AVG`` ...), maps old names (``T3``/``T4``/``T5``/``T6`` -> ``T7``/``T8``/``P7``/``P8``)
    and fixes the case (``FP1`` -> ``Fp1``, ``POZ`` -> ``POz``).

    Parameters
    ----------
    name : str
        A channel name as stored in a file.

    Returns
    -------
    str
        The montage spelling, or the stripped name when it is not a montage channel.

    Examples
    --------
    >>> normalize_channel_name("EEG FP1-REF")
    'Fp1'
    >>> normalize_channel_name("t3")
    'T7'
    """
    text = _EEG_PREFIX.sub("", str(name).strip()).strip()
    stripped = _REF_SUFFIX.sub("", text).strip()
    if stripped:
        text = stripped
    upper = text.upper()
    if upper in _OLD_NAMES:
        return _OLD_NAMES[upper]
    return _montage_spelling().get(upper, text)


def _extension(path: str | os.PathLike) -> str:
    lower = str(path).lower()
    if lower.endswith(".fif.gz"):
        return ".fif.gz"
    return Path(lower).suffix


def _check_path(path: str | os.PathLike) -> tuple[str, str, str]:
    """Validate ``path`` and return (extension, reader name, format name)."""
    ext = _extension(path)
    if ext not in _READERS:
        raise DataError(str(path), f"unknown EEG file extension {ext or '(none)'!r}; "
                        f"expected one of {list(SUPPORTED_EEG_EXTENSIONS)}",
                        kind="unknown_format", field="eeg")
    if not os.path.isfile(path):
        raise DataError(str(path), "file not found", kind="unreadable", field="eeg")
    reader, fmt = _READERS[ext]
    return ext, reader, fmt


def _short_reason(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _open_raw(path: str | os.PathLike, *, preload: bool) -> Any:
    """Open ``path`` with the MNE reader for its extension; errors become DataError."""
    import mne

    _, reader, fmt = _check_path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return getattr(mne.io, reader)(str(path), preload=preload, verbose="error")
    except DataError:
        raise
    except Exception as exc:  # MNE raises many types (ValueError, OSError, struct.error ...)
        raise DataError(str(path), f"cannot read as {fmt}: {_short_reason(exc)}",
                        kind="unreadable", field="eeg") from None


def _eeg_picks(raw: Any) -> np.ndarray:
    """Indices of EEG-type channels; all channels when there are none."""
    import mne

    picks = mne.pick_types(raw.info, eeg=True, meg=False, stim=False, eog=False,
                           exclude=[])
    if len(picks) == 0:
        picks = np.arange(len(raw.ch_names))
    return picks


def _normalised_names(names: list[str]) -> list[str]:
    """Normalise names; a name that would duplicate an earlier one keeps its original."""
    out: list[str] = []
    for name in names:
        norm = normalize_channel_name(name)
        out.append(norm if norm not in out else str(name))
    return out


def open_raw(path: str | os.PathLike) -> Any:
    """Open a recording with MNE without loading its samples (annotations, stim channels,
    header); errors are :class:`~emoray.errors.DataError` naming the file."""
    return _open_raw(path, preload=False)


def read_eeg(path: str | os.PathLike, *, start: int = 0, stop: int | None = None) -> EEG:
    """Read an EEG recording, keeping EEG channels with normalised names.

    Parameters
    ----------
    path : str | os.PathLike
        A file with one of :data:`SUPPORTED_EEG_EXTENSIONS` (``.vhdr`` for BrainVision,
        ``.set`` for EEGLAB).
    start, stop : int
        Read only samples ``[start, stop)`` (a trial's window of a long recording; MNE
        reads just that part from disk). Default: the whole recording.

    Returns
    -------
    EEG
        ``data`` ``(C, T)`` float32 in volts, ``sfreq``, ``ch_names``, ``source=str(path)``.

    Raises
    ------
    DataError
        Missing or unparsable file (``unreadable``), unknown extension
        (``unknown_format``), NaN/inf samples (``invalid_value``), no samples
        (``truncated``).
    """
    whole = start == 0 and stop is None
    raw = _open_raw(path, preload=whole)
    picks = _eeg_picks(raw)
    try:
        data = raw.get_data(picks=picks, start=start, stop=stop).astype(np.float32)  # (C, T) V
    except Exception as exc:
        raise DataError(str(path), f"cannot read samples: {_short_reason(exc)}",
                        kind="unreadable", field="eeg") from None
    if data.ndim != 2 or data.shape[1] == 0:
        raise DataError(str(path), "recording has zero samples; expected at least one",
                        kind="truncated", field="eeg")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise DataError(str(path), f"{bad} sample(s) are NaN or infinite; expected finite "
                        "values", kind="invalid_value", field="eeg")
    names = _normalised_names([raw.ch_names[i] for i in picks])
    return EEG(data=data, sfreq=float(raw.info["sfreq"]), ch_names=names, source=str(path))


def eeg_header(path: str | os.PathLike) -> tuple[list[str], float, int]:
    """Channel names, sampling rate and length of a recording, without loading samples.

    Parameters
    ----------
    path : str | os.PathLike
        An EEG file (see :func:`read_eeg`).

    Returns
    -------
    tuple[list[str], float, int]
        Normalised EEG channel names, ``sfreq`` in Hz and ``n_times``.
    """
    raw = _open_raw(path, preload=False)
    picks = _eeg_picks(raw)
    names = _normalised_names([raw.ch_names[i] for i in picks])
    n_times = int(raw.n_times)
    if n_times == 0:
        raise DataError(str(path), "recording has zero samples; expected at least one",
                        kind="truncated", field="eeg")
    return names, float(raw.info["sfreq"]), n_times


def pick_channels(eeg: EEG, channels: list[str]) -> EEG:
    """Select and reorder channels by (normalised) name.

    Parameters
    ----------
    eeg : EEG
        The recording.
    channels : list[str]
        The wanted channels, in the wanted order; extra channels in ``eeg`` are dropped.

    Returns
    -------
    EEG
        A new EEG whose ``ch_names`` are the normalised ``channels``.

    Raises
    ------
    DataError
        ``kind="missing_channel"``, ``field="eeg"`` naming the missing channels.
    """
    have = {normalize_channel_name(name): i for i, name in enumerate(eeg.ch_names)}
    for i, name in enumerate(eeg.ch_names):   # exact names win over normalised ones
        have.setdefault(name, i)
    wanted = [normalize_channel_name(name) for name in channels]
    missing = [name for name in wanted if name not in have]
    if missing:
        raise DataError(eeg.source, f"missing channel(s) {missing}; expected channels "
                        f"{wanted}, file has {list(eeg.ch_names)}",
                        kind="missing_channel", field="eeg")
    index = [have[name] for name in wanted]
    data = np.ascontiguousarray(eeg.data[index])  # (C', T)
    return EEG(data=data, sfreq=eeg.sfreq, ch_names=wanted, source=eeg.source)


def write_eeg(path: str | os.PathLike, eeg: EEG) -> None:
    """Write ``eeg`` in the format given by the extension of ``path``.

    ``.fif``/``.fif.gz`` use ``Raw.save``; ``.edf``/``.bdf`` (edfio), ``.vhdr`` (pybv) and
    ``.set`` (eeglabio) use :func:`mne.export.export_raw`. The 10-20 montage is attached
    when any channel name is a montage channel.

    Parameters
    ----------
    path : str | os.PathLike
        Output file; existing files are overwritten.
    eeg : EEG
        ``data`` ``(C, T)`` in volts.
    """
    import mne

    ext = _extension(path)
    writable = (".fif", ".fif.gz", *_EXPORT_FORMATS)
    if ext not in writable:
        raise DataError(str(path), f"cannot write EEG as {ext or '(none)'!r}; expected one "
                        f"of {list(writable)}", kind="unknown_format", field="eeg")
    data = np.asarray(eeg.data, dtype=np.float64)  # (C, T)
    if data.ndim != 2 or data.shape[0] != len(eeg.ch_names):
        raise DataError(str(path), f"data shape {data.shape} does not match "
                        f"{len(eeg.ch_names)} channel names; expected (C, T)",
                        kind="invalid_value", field="eeg")
    if not np.isfinite(data).all():
        raise DataError(str(path), "data contain NaN or infinite values; expected finite",
                        kind="invalid_value", field="eeg")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            info = mne.create_info(list(eeg.ch_names), float(eeg.sfreq), ch_types="eeg",
                                   verbose="error")
            raw = mne.io.RawArray(data, info, verbose="error")
            montage = standard_montage()
            if set(eeg.ch_names) & set(montage.ch_names):
                raw.set_montage(montage, on_missing="ignore", verbose="error")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            if ext in (".fif", ".fif.gz"):
                raw.save(str(path), overwrite=True, verbose="error")
            else:
                mne.export.export_raw(str(path), raw, fmt=_EXPORT_FORMATS[ext],
                                      overwrite=True, verbose="error")
    except Exception as exc:
        raise DataError(str(path), f"cannot write EEG: {_short_reason(exc)}",
                        kind="unreadable", field="eeg") from None


def resample_eeg(data: np.ndarray, sfreq_from: float, sfreq_to: float) -> np.ndarray:
    """Resample ``(C, T)`` EEG along time with :func:`mne.filter.resample` (FFT method).

    Parameters
    ----------
    data : np.ndarray
        ``(C, T)`` (or ``(T,)``) signal.
    sfreq_from, sfreq_to : float
        Source and target sampling rates in Hz.

    Returns
    -------
    np.ndarray
        ``(C, round(T * sfreq_to / sfreq_from))``, same float dtype as the input
        (float64 for integer input).
    """
    import mne

    if sfreq_from <= 0 or sfreq_to <= 0:
        raise ValueError(f"sampling rates must be positive, got {sfreq_from} -> {sfreq_to}")
    arr = np.asarray(data)
    dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float64
    if float(sfreq_from) == float(sfreq_to):
        return arr.astype(dtype, copy=True)
    out = mne.filter.resample(arr.astype(np.float64), up=float(sfreq_to),
                              down=float(sfreq_from), axis=-1, verbose="error")
    return out.astype(dtype)  # (C, T')
