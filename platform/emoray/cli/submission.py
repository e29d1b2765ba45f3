"""``emoray submit``: a job checked and assembled from the command line before anything is
sent: its entrypoint, its arguments parsed exactly as the job will parse them (the
``emoray`` grammar), its ``--config`` resolved as on the cluster, the upload's contents and
size (:mod:`emoray.cluster.upload`). The Jobs API side is :mod:`emoray.cluster.jobs`.
"""

from __future__ import annotations

import os
import secrets
import shlex
import time
from pathlib import Path
from typing import Any, Iterable

from emoray.cli.parser import JOB_KINDS, build_parser
from emoray.cluster.jobs import JobSpec
from emoray.cluster.upload import (DEFAULT_EXCLUDES, UPLOAD_LIMIT, check_size, in_upload,
                                   list_package, ray_default_excludes)
from emoray.errors import ConfigError

#: ``emoray submit KIND`` -> the entrypoint script, relative to the working directory
ENTRYPOINTS = {kind: f"jobs/{kind}.py" for kind in JOB_KINDS}


def find_working_dir(start: str | Path | None = None) -> Path:
    """The repo root holding ``jobs/``: ``start`` (default the current folder) or a parent
    of it, else the checkout the ``emoray`` package was installed from (editable)."""
    here = Path(start or Path.cwd()).resolve()
    candidates = [here, *here.parents]
    if start is None:
        candidates.append(Path(__file__).resolve().parents[3])
    for folder in candidates:
        if (folder / "jobs" / "train.py").is_file():
            return folder
    raise ConfigError(f"--working-dir: no jobs/ folder in {here} or above; run from an emoray "
                      "checkout or pass --working-dir REPO")


def _package_dir() -> Path:
    import emoray

    return Path(emoray.__file__).resolve().parent


def _check_job_args(kind: str, args: list[str], working_dir: Path, upload) -> list[str]:
    """Parse the job's arguments as the cluster will, and resolve its config here, so that
    mistakes surface before anything is uploaded. Returns notes for the user."""
    import contextlib
    import io

    from emoray.config import resolve

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            ns = build_parser().parse_args([kind, *args])
    except SystemExit:
        last = err.getvalue().strip().splitlines()[-1:] or ["invalid arguments"]
        raise ConfigError(f"the {kind} job's arguments: {last[0]}") from None
    notes: list[str] = []
    config = getattr(ns, "config", None)
    if config:
        local = Path(config)
        if local.is_absolute():
            if in_upload(upload, local):
                notes.append(f"--config {config} is uploaded; consider the relative path")
            else:
                notes.append(f"--config {config} is an absolute path outside the upload: "
                             "the cluster must have that file")
                return notes
            local = local.resolve().relative_to(working_dir)
        elif not in_upload(upload, local):
            where = ("is excluded from the upload (.gitignore, .rayignore or --exclude)"
                     if (working_dir / local).exists() else "does not exist")
            raise ConfigError(f"--config {config}: {where} in the uploaded tree "
                              f"{working_dir}; the job runs in that tree on the cluster")
        cwd = Path.cwd()
        try:
            os.chdir(working_dir)   # relative paths inside the config resolve as on the cluster
            if kind == "tune":
                from emoray.tune.campaign import resolve_campaign
                resolve_campaign(local, {}, ns.overrides)
            else:
                resolve(local, {}, ns.overrides)
        finally:
            os.chdir(cwd)
    return notes


def prepare(kind: str, args: list[str], *, working_dir: str | Path | None = None,
            excludes: Iterable[str] = (), env: dict[str, str] | None = None,
            upload_package: bool = True, submission_id: str | None = None,
            limit: int = UPLOAD_LIMIT) -> JobSpec:
    """Check and assemble a job; nothing is sent. See the module docstring for the checks."""
    if kind not in ENTRYPOINTS:
        raise ConfigError(f"job kind {kind!r}: expected one of {', '.join(ENTRYPOINTS)}")
    root = find_working_dir(working_dir) if working_dir is None else Path(working_dir).resolve()
    if working_dir is not None and not (root / ENTRYPOINTS[kind]).is_file():
        raise ConfigError(f"--working-dir {working_dir}: no {ENTRYPOINTS[kind]} in it")
    excludes = [*DEFAULT_EXCLUDES, *excludes]
    wd_excludes = ray_default_excludes() + excludes         # as Ray packs a working_dir
    upload = list_package(root, wd_excludes)
    if ENTRYPOINTS[kind] not in upload.files:
        raise ConfigError(f"{ENTRYPOINTS[kind]} is excluded from the upload of {root}")
    size = check_size(upload, "working_dir", limit)
    runtime_env: dict[str, Any] = {"working_dir": str(root), "excludes": excludes}
    if upload_package:
        pkg = _package_dir()
        package = list_package(pkg, excludes)       # Ray applies the same excludes here
        missing = sorted(rel for rel in (p.relative_to(pkg).as_posix() for p in
                                         pkg.rglob("*.py") if "__pycache__" not in p.parts)
                         if rel not in package.files)
        if missing:
            raise ConfigError(f"--exclude: the excludes apply to the emoray package too "
                              f"(py_modules) and would leave out {', '.join(missing[:5])}")
        size += check_size(package, "py_modules", limit)
        runtime_env["py_modules"] = [str(pkg)]
    if env:
        runtime_env["env_vars"] = dict(env)
    notes = _check_job_args(kind, list(args), root, upload)
    sid = submission_id or f"emoray-{kind}-{time.strftime('%Y%m%d-%H%M%S')}-" \
                           f"{secrets.token_hex(3)}"
    entry = shlex.join(["python", ENTRYPOINTS[kind], *args])
    return JobSpec(kind, list(args), root, entry, runtime_env, sid, size, notes)
