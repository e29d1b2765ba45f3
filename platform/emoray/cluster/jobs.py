"""Ray Jobs from the client side: connect, submit an emoray job, follow it, manage jobs.

A job is one of the ``jobs/`` entrypoints (``python jobs/train.py ARGS`` ...) run on a
cluster through the Ray Jobs API (``JobSubmissionClient``, the dashboard's port 8265). Its
runtime environment uploads the working directory (the repo: ``jobs/``, ``configs/``) and the
``emoray`` package (``py_modules``), both checked by :mod:`emoray.cluster.upload` first
(:mod:`emoray.cli.submission` assembles a job from the command line).

Every way of getting this wrong fails before or at submission with a
:class:`~emoray.errors.ClusterError` or :class:`~emoray.errors.ConfigError`, never a hang:
an unreachable address (a bounded TCP connect first), a missing or wrong token, a
``--config`` that is not in the uploaded tree, an upload over the dashboard's limit.

Token auth: the token is read from ``--token-file``, else ``RAY_AUTH_TOKEN``, else the file
named by ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token`` (Ray's own order). It is sent
only to a cluster that asks for one (the first request goes without), so a local token is
never handed to a cluster that does not use auth.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from emoray.errors import ClusterError, ConfigError
from emoray.runtime import CONNECT_TIMEOUT_S, connect_fails

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
REQUEST_TIMEOUT_S = 15.0


# -- connecting ----------------------------------------------------------------------------

def job_address(address: str | None) -> str:
    """The dashboard URL: ``address``, else ``RAY_API_SERVER_ADDRESS`` or an http(s)
    ``RAY_ADDRESS`` (Ray's own variables), else :data:`DEFAULT_ADDRESS`."""
    if not address:
        env = os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS", "")
        address = env if env.startswith(("http://", "https://")) else DEFAULT_ADDRESS
    if "://" not in address:
        address = "http://" + address
    url = urlparse(address)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(f"--address: {address!r} is not a dashboard URL; expected "
                          "http://HOST:8265")
    return address.rstrip("/")


def find_token(token_file: str | Path | None = None) -> tuple[str | None, str]:
    """The Ray auth token and where it came from, or ``(None, "")``."""
    def read(path: Path, what: str) -> str:
        try:
            token = path.expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{what}: cannot read the token file {path}: "
                              f"{exc.strerror or exc}") from None
        if not token:
            raise ConfigError(f"{what}: the token file {path} is empty")
        return token

    if token_file:
        return read(Path(token_file), "--token-file"), f"--token-file {token_file}"
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        path = Path(os.environ["RAY_AUTH_TOKEN_PATH"])
        return read(path, "RAY_AUTH_TOKEN_PATH"), str(path)
    default = Path.home() / ".ray" / "auth_token"
    if default.is_file():
        return read(default, "~/.ray/auth_token"), str(default)
    return None, ""


def _reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    url = urlparse(address)
    port = url.port or (443 if url.scheme == "https" else 80)
    why = connect_fails(url.hostname, port, timeout)
    if why is None:
        return
    raise ClusterError(f"cannot reach the Ray dashboard at {address} ({why} after at most "
                       f"{timeout:.0f} s): is the cluster up, is this its dashboard port "
                       "(8265 by default), and is it forwarded to this machine?")


def _needs_token(address: str) -> bool:
    import requests

    try:
        r = requests.get(address + "/api/jobs/", timeout=REQUEST_TIMEOUT_S)
    except requests.Timeout:
        raise ClusterError(f"{address} accepted the connection but did not answer within "
                           f"{REQUEST_TIMEOUT_S:.0f} s: is this the Ray dashboard's port "
                           "(8265 by default)?") from None
    except requests.RequestException as exc:
        raise ClusterError(f"the Ray dashboard at {address} did not answer: {exc}") from None
    if r.status_code == 404:
        raise ClusterError(f"{address} answered but is not a Ray dashboard with the Jobs API "
                           "(HTTP 404 on /api/jobs/): check the address and port (8265 by "
                           "default)")
    return r.status_code == 401


def connect(address: str | None = None, token_file: str | Path | None = None):
    """A ``JobSubmissionClient`` for the cluster at ``address`` (see :func:`job_address`),
    with the token when the cluster wants one.

    Raises
    ------
    ClusterError
        Unreachable, not a Ray dashboard, token needed but none found, or token refused.
    """
    from ray.job_submission import JobSubmissionClient

    address = job_address(address)
    _reachable(address)
    headers: dict[str, str] = {}
    if token_file or _needs_token(address):
        token, source = find_token(token_file)
        if token is None:
            raise ClusterError(
                f"the Ray cluster at {address} requires a token (token auth is on) and none "
                "was found: pass --token-file FILE, or set RAY_AUTH_TOKEN / "
                "RAY_AUTH_TOKEN_PATH, or put it in ~/.ray/auth_token (`ray get-auth-token` "
                "on the head prints it)")
        headers["Authorization"] = f"Bearer {token}"
    else:
        source = ""
    try:
        client = JobSubmissionClient(address, headers=headers)
        client.list_jobs()          # the version check does not need auth; this does
    except Exception as exc:        # noqa: BLE001 - Ray raises several unrelated types
        raise _cluster_error(exc, address, source) from None
    return client


def _cluster_error(exc: Exception, address: str, source: str) -> ClusterError:
    text = str(exc)
    if type(exc).__name__ == "AuthenticationError" or "Authentication" in text:
        return ClusterError(f"the Ray cluster at {address} refused the token from {source} "
                            "(403: wrong token for this cluster); check it with "
                            "`ray get-auth-token` on the head")
    if isinstance(exc, ConnectionError):
        return ClusterError(f"cannot talk to the Ray dashboard at {address}: {text}")
    return ClusterError(f"the Ray dashboard at {address} answered with an error: "
                        f"{text.strip()[:500]}")


# -- submitting ----------------------------------------------------------------------------

@dataclass
class JobSpec:
    """One emoray job, ready to submit (:func:`emoray.cli.submission.prepare` checks and
    assembles one from ``emoray submit``'s arguments)."""

    kind: str
    args: list[str]
    working_dir: Path
    entrypoint: str
    runtime_env: dict[str, Any]
    submission_id: str
    upload_bytes: int
    notes: list[str] = field(default_factory=list)


def submit(client, spec: JobSpec) -> str:
    """Submit ``spec``; returns its submission id."""
    from emoray import __version__

    try:
        return client.submit_job(entrypoint=spec.entrypoint, runtime_env=spec.runtime_env,
                                 submission_id=spec.submission_id,
                                 metadata={"emoray_kind": spec.kind,
                                           "emoray_version": __version__})
    except Exception as exc:        # noqa: BLE001 - Ray raises RuntimeError, ValueError ...
        raise ClusterError(f"submitting {spec.submission_id}: {str(exc).strip()[:800]}") \
            from None


# -- following and managing ----------------------------------------------------------------

def follow(client, job_id: str, echo: Callable[[str], None] = print,
           poll_s: float = 1.0) -> str:
    """Stream a job's log lines to ``echo`` until it ends; returns its final status."""
    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            for line in chunk.splitlines():
                echo(line)

    try:
        asyncio.run(tail())
    except Exception as exc:        # noqa: BLE001 - a dropped log stream is not the job's end
        echo(f"(log stream ended early: {exc}; waiting for the job's status)")
    while True:
        status = str(client.get_job_status(job_id).value)
        if status in TERMINAL:
            return status
        time.sleep(poll_s)


def info(client, job_id: str):
    """The job's ``JobDetails``; :class:`ClusterError` naming it if there is no such job."""
    try:
        return client.get_job_info(job_id)
    except RuntimeError as exc:
        raise ClusterError(f"job {job_id}: no such job on {client.get_address()} "
                           f"({str(exc).strip()[:200]})") from None


def log_tail(client, job_id: str, lines: int = 40) -> str:
    """The last ``lines`` lines of a job's log."""
    text = client.get_job_logs(job_id)
    return "\n".join(text.rstrip().splitlines()[-lines:])


def describe(job) -> str:
    """One line for a job: id, status, kind, age, message."""
    start = (job.start_time or 0) / 1000
    took = ((job.end_time or time.time() * 1000) / 1000 - start) if start else 0.0
    kind = (job.metadata or {}).get("emoray_kind", "-")
    ident = job.submission_id or job.job_id or "-"
    message = (job.message or "").strip().splitlines()
    return (f"{ident:<40} {str(job.status.value if hasattr(job.status, 'value') else job.status):<10}"
            f" {kind:<10} {took:8.1f} s  {message[0][:80] if message else ''}")
