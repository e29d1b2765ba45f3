"""Errors that name the file, the field and what was expected.

Every failure a user can cause (bad file, bad config value, bad label) is raised as an
:class:`EmorayError` subclass; the CLI prints its message and exits with status 2 instead of
showing a traceback.
"""

from __future__ import annotations


class EmorayError(Exception):
    """Base class for user-facing errors (printed without a traceback)."""


class ConfigError(EmorayError):
    """A config file or ``--set`` override is invalid."""


class DataError(EmorayError):
    """A data file or record is unusable.

    Parameters
    ----------
    path : str | None
        The file (or dataset path) that is bad.
    reason : str
        What is wrong and what was expected, e.g. ``"sample rate 250 Hz, expected 500 Hz"``.
    kind : str
        A short machine-readable category used to count rejections in ingest reports:
        one of ``unreadable``, ``unknown_format``, ``sample_rate``, ``missing_channel``,
        ``label``, ``truncated``, ``invalid_value``, ``layout``.
    field : str | None
        The record field concerned (``eeg``, ``audio``, ``video``, ``label`` ...).
    """

    KINDS = ("unreadable", "unknown_format", "sample_rate", "missing_channel", "label",
             "truncated", "invalid_value", "layout")

    def __init__(self, path: str | None, reason: str, *, kind: str = "unreadable",
                 field: str | None = None):
        if kind not in self.KINDS:
            raise ValueError(f"unknown DataError kind {kind!r}")
        self.path = None if path is None else str(path)
        self.reason = reason
        self.kind = kind
        self.field = field
        where = self.path or "<no file>"
        what = f" [{field}]" if field else ""
        super().__init__(f"{where}{what}: {reason}")


class ClusterError(EmorayError):
    """A Ray cluster cannot be reached, refuses the credentials, or rejects a job."""
