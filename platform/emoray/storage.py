"""Paths that may be local folders or pyarrow filesystem URIs (``s3://``, ``gs://``, ...).

Campaign state and promoted bundles live under a storage path that every node of a cluster
reaches; on one machine that is a plain folder. These helpers treat both the same way
through :mod:`pyarrow.fs`.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from emoray.errors import ConfigError


def is_uri(path: str | Path) -> bool:
    """True for ``scheme://...`` (but not a Windows drive or a plain path)."""
    return "://" in str(path)


def join(base: str | Path, *parts: str) -> str:
    """``base/part/...`` for a folder or a URI (absolute for a folder)."""
    if is_uri(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return str(Path(base).resolve().joinpath(*parts))


def _fs(path: str):
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(path)
    except Exception as err:          # pyarrow raises several types for a bad URI
        raise ConfigError(f"storage {path!r}: not a reachable pyarrow filesystem URI "
                          f"({err})") from None


def write_text(path: str, text: str) -> None:
    """Write ``text`` to a local file or a URI (parents are created)."""
    if not is_uri(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(path).with_name(Path(path).name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        return
    fs, inner = _fs(path)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(inner) as out:
        out.write(text.encode("utf-8"))


def read_text(path: str) -> str | None:
    """The text of a local file or a URI; None when it does not exist."""
    if not is_uri(path):
        p = Path(path)
        return p.read_text(encoding="utf-8") if p.is_file() else None
    import pyarrow.fs as pafs

    fs, inner = _fs(path)
    if fs.get_file_info(inner).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(inner) as src:
        return src.read().decode("utf-8")


def put_dir(local: str | Path, dest: str) -> str:
    """Replace the folder ``dest`` (local or URI) by a copy of the local folder ``local``.

    A local destination is swapped in with one rename, so a reader never sees half a copy.
    """
    if not is_uri(dest):
        dest_path = Path(dest)
        tmp = dest_path.with_name(dest_path.name + ".tmp")
        old = dest_path.with_name(dest_path.name + ".old")
        for p in (tmp, old):
            shutil.rmtree(p, ignore_errors=True)
        shutil.copytree(local, tmp)
        if dest_path.exists():
            dest_path.rename(old)
        tmp.rename(dest_path)
        shutil.rmtree(old, ignore_errors=True)
        return str(dest_path)
    import pyarrow.fs as pafs

    fs, inner = _fs(dest)
    fs.delete_dir_contents(inner, missing_dir_ok=True)
    fs.create_dir(inner, recursive=True)
    pafs.copy_files(str(local), inner, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)
    return dest


def fetch_dir(src: str | Path, cache: str | Path | None = None) -> Path:
    """A local folder holding ``src``: ``src`` itself when local, else a downloaded copy
    (into ``cache`` or a new temporary folder)."""
    if not is_uri(src):
        path = Path(src)
        if not path.is_dir():
            raise ConfigError(f"{src}: not a folder")
        return path
    import pyarrow.fs as pafs

    fs, inner = _fs(str(src))
    if fs.get_file_info(inner).type != pafs.FileType.Directory:
        raise ConfigError(f"{src}: no such folder in storage")
    local = Path(cache) if cache else Path(tempfile.mkdtemp(prefix="emoray-fetch-"))
    local.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(inner, str(local), source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem())
    return local
