"""What a submitted job uploads, checked before it is uploaded.

A job's runtime environment carries two packages: the *working directory* (the repo root,
for ``jobs/`` and ``configs/``) and the ``emoray`` package itself as a ``py_modules`` entry,
so the cluster runs the code the user has, not whatever its image holds. Ray zips both on
the client and posts them to the dashboard, which refuses a body over 100 MiB; Ray honours
``.gitignore`` and ``.rayignore`` and the runtime environment's ``excludes``.

:func:`plan_upload` lists exactly the files Ray would pack (it walks the tree with Ray's own
matcher, so ``.gitignore``/``.rayignore`` rules agree), checks the size against the limit
(Ray zips without compression, so the size is known exactly) before anything is
sent, and answers whether a path the job names (its ``--config``) is in
the uploaded tree.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from emoray.errors import ConfigError

#: Ray's packaging logs every ignore file it reads at INFO: quiet here
_QUIET = logging.getLogger("emoray.cluster.upload")
_QUIET.setLevel(logging.WARNING)

#: the dashboard's request body cap (``ray_constants.DASHBOARD_CLIENT_MAX_SIZE``, 100 MiB)
UPLOAD_LIMIT = 100 * 1024 ** 2

#: never uploaded from the working directory (gitwildmatch, anchored at its root): run
#: outputs, the package source (it travels as ``py_modules``), the tests, caches. Ray adds
#: its own (``.git``, ``.venv``, ``venv``, ``__pycache__``) and honours ``.gitignore`` (which
#: keeps ``/data/`` and ``/runs/`` out). Ray applies ONE excludes list to the working
#: directory and to every py_module, each relative to its own root: so no pattern here may
#: match inside the package (``/data`` would drop ``emoray/data/``; a test checks).
DEFAULT_EXCLUDES = ("/runs", "/benchmarks/results", "/platform", "/tests", "/k8s", "*.pyc",
                    "*.egg-info", "*.parquet", ".pytest_cache")


@dataclass
class Upload:
    """The files one runtime-environment package would hold."""

    root: Path
    files: dict[str, int] = field(default_factory=dict)   # POSIX relative path -> bytes

    @property
    def size(self) -> int:
        return sum(self.files.values())

    def largest(self, n: int = 5) -> list[tuple[str, int]]:
        """The ``n`` top-level entries (files or folders) holding the most bytes."""
        per: dict[str, int] = {}
        for rel, size in self.files.items():
            top = rel.split("/", 1)[0] + ("/" if "/" in rel else "")
            per[top] = per.get(top, 0) + size
        return sorted(per.items(), key=lambda kv: -kv[1])[:n]


def _include_gitignore() -> bool:
    # Ray's switch (ray_constants.RAY_RUNTIME_ENV_IGNORE_GITIGNORE): "1" ignores .gitignore
    return os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "0") != "1"


def ray_default_excludes() -> list[str]:
    """What Ray always leaves out of a working directory (``.git``, ``.venv`` ...)."""
    from ray._private.ray_constants import get_runtime_env_default_excludes

    return get_runtime_env_default_excludes()


def list_package(root: str | Path, excludes: list[str] | tuple[str, ...] = ()) -> Upload:
    """The files Ray packs for ``root`` with ``excludes`` (and the ignore files in the tree;
    a working directory also gets :func:`ray_default_excludes`, pass them in).

    Walks the tree with Ray's own traversal and matchers (``ray._private.runtime_env.
    packaging``, pinned with Ray 2.60), so what is listed is what is uploaded.
    """
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    root = Path(root).resolve()
    if not root.is_dir():
        raise ConfigError(f"upload: {root} is not a folder")
    upload = Upload(root)

    def add(path: Path) -> None:
        if path.is_file():
            upload.files[path.relative_to(root).as_posix()] = path.stat().st_size

    _dir_travel(root, [_get_excludes(root, list(excludes))], add,
                include_gitignore=_include_gitignore(), logger=_QUIET)
    return upload


def _mib(n: int) -> str:
    return f"{n / 1024 ** 2:.1f} MiB"


def zip_bytes(upload: Upload) -> int:
    """Bytes of the zip Ray builds for ``upload``: Ray stores files uncompressed
    (``ZipFile`` defaults to ZIP_STORED), so it is the files plus the zip's headers (a
    local header and a central-directory entry per file, each holding the name)."""
    return upload.size + sum(76 + 2 * len(rel.encode()) for rel in upload.files) + 22


def check_size(upload: Upload, what: str, limit: int = UPLOAD_LIMIT) -> int:
    """The bytes ``upload`` will send; :class:`ConfigError` naming the largest entries if
    that exceeds ``limit``."""
    size = zip_bytes(upload)
    if size < limit:
        return size
    biggest = ", ".join(f"{name} ({_mib(n)})" for name, n in upload.largest())
    raise ConfigError(
        f"{what}: {upload.root} would upload {_mib(size)} ({len(upload.files)} files, stored "
        f"uncompressed), over Ray's job upload limit of {_mib(limit)}. Largest entries: "
        f"{biggest}. Keep data and run outputs on storage the cluster reaches and out of the "
        "upload: list them in .rayignore (or .gitignore) or pass --exclude PATTERN.")


def in_upload(upload: Upload, path: str | Path) -> bool:
    """Whether ``path`` (relative to the upload root, or absolute inside it) is uploaded."""
    p = Path(path)
    if p.is_absolute():
        try:
            p = p.resolve().relative_to(upload.root)
        except ValueError:
            return False
    return Path(os.path.normpath(p)).as_posix() in upload.files
