"""MATLAB ``.mat`` access shared by the EAV, SEED and DREAMER adapters."""

from __future__ import annotations

from emoray.errors import DataError


def loadmat(path: str, names: list[str] | None = None) -> dict:
    """``scipy.io.loadmat`` (v5 files) with errors that name the file.

    A v7.3 (HDF5) file raises ``unknown_format``; anything scipy cannot parse (it raises
    many exception types for corrupt files) raises ``unreadable``.
    """
    import scipy.io

    try:
        return scipy.io.loadmat(path, variable_names=names)
    except NotImplementedError as exc:       # MATLAB v7.3 = HDF5
        raise DataError(path, "MATLAB v7.3 (HDF5) file; expected a v5 .mat (save -v7)",
                        kind="unknown_format") from exc
    except Exception as exc:
        raise DataError(path, f"cannot read MATLAB file: {exc!r}", kind="unreadable") from exc


def variables(path: str, field: str | None = None) -> dict[str, tuple[int, ...]]:
    """Variable name -> shape from a ``.mat`` file's headers, without reading the data."""
    import scipy.io

    try:
        return {name: tuple(shape) for name, shape, _ in scipy.io.whosmat(path)}
    except Exception as exc:   # scipy raises many types for corrupt files
        raise DataError(path, f"cannot read MATLAB file: {exc!r}", kind="unreadable",
                        field=field) from exc
