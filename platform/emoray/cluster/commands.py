"""``emoray submit`` and ``emoray jobs``: the command-line side of :mod:`emoray.cluster.jobs`.

``emoray submit [OPTIONS] KIND ARGS...`` submits ``jobs/KIND.py ARGS...`` (KIND: train,
tune, ingest, preprocess, evaluate; ARGS exactly those of ``emoray KIND``), streams its log
and exits with the job's outcome: 0 when it SUCCEEDED, 1 when it FAILED or was STOPPED
(with the log's last lines and Ray's message), 2 for a mistake caught before submission.
``--no-wait`` prints the submission id and returns at once.
"""

from __future__ import annotations

import argparse

from emoray.errors import ConfigError

_TOKEN_HELP = ("file holding the cluster's Ray auth token (default: RAY_AUTH_TOKEN, "
               "RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token; sent only if the cluster asks)")


def _connection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="the cluster's dashboard URL (default: "
                   "RAY_API_SERVER_ADDRESS, else http://127.0.0.1:8265)")
    p.add_argument("--token-file", metavar="FILE", help=_TOKEN_HELP)


def add_parsers(sub) -> None:
    """Add ``submit`` and ``jobs`` to the ``emoray`` subcommand parsers."""
    from emoray.cluster.jobs import ENTRYPOINTS

    p = sub.add_parser(
        "submit", help="run train/tune/ingest/preprocess/evaluate as a Ray Job on a cluster "
        "(uploads the repo and the emoray package, streams the log)",
        usage="emoray submit [--address URL] [options] KIND [ARGS of `emoray KIND` ...]")
    _connection(p)
    p.add_argument("--working-dir", metavar="REPO", help="folder uploaded as the job's "
                   "working directory (default: the emoray checkout holding jobs/)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="also leave out of the upload (gitignore syntax; repeatable)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment variable for the job (repeatable)")
    p.add_argument("--no-package", action="store_true", help="do not upload the emoray "
                   "package: use the one installed on the cluster's image")
    p.add_argument("--submission-id", help="job id (default emoray-KIND-TIME-RANDOM)")
    p.add_argument("--no-wait", action="store_true", help="print the id and return; follow "
                   "with `emoray jobs logs ID --follow`")
    p.add_argument("kind", choices=sorted(ENTRYPOINTS), metavar="KIND",
                   help="one of: " + ", ".join(sorted(ENTRYPOINTS)))
    p.add_argument("job_args", nargs=argparse.REMAINDER, metavar="ARGS",
                   help="arguments of `emoray KIND`, passed on unchanged")

    p = sub.add_parser("jobs", help="list, inspect, follow or stop Ray Jobs on a cluster")
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = acts.add_parser("list", help="every job with its status")
    _connection(q)
    for name, text in (("status", "a job's status and message"),
                       ("logs", "a job's log"), ("stop", "stop a running job")):
        q = acts.add_parser(name, help=text)
        q.add_argument("job_id", metavar="ID", help="submission id")
        _connection(q)
        if name == "logs":
            q.add_argument("--follow", action="store_true", help="stream until the job ends")
            q.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
        if name == "stop":
            q.add_argument("--wait", action="store_true", help="wait until it has stopped")


def _env_pairs(pairs: list[str]) -> dict[str, str]:
    env = {}
    for text in pairs:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--env {text!r}: expected KEY=VALUE")
        env[key.strip()] = value
    return env


def _outcome(client, job_id: str, status: str) -> int:
    from emoray.cluster.jobs import info, log_tail

    if status == "SUCCEEDED":
        print(f"job {job_id}: SUCCEEDED")
        return 0
    message = (info(client, job_id).message or "").strip()
    print(f"job {job_id}: {status}" + (f": {message}" if message else ""))
    tail = log_tail(client, job_id)
    if tail:
        print(f"--- last lines of the job's log ---\n{tail}")
    return 1


def run_submit(args: argparse.Namespace) -> int:
    from emoray.cluster.jobs import connect, follow, prepare, submit

    job_args = list(args.job_args)
    if job_args[:1] == ["--"]:
        job_args = job_args[1:]
    spec = prepare(args.kind, job_args, working_dir=args.working_dir, excludes=args.exclude,
                   env=_env_pairs(args.env), upload_package=not args.no_package,
                   submission_id=args.submission_id)
    for note in spec.notes:
        print(f"note: {note}")
    client = connect(args.address, args.token_file)
    job_id = submit(client, spec)
    print(f"submitted {job_id} to {client.get_address()}: {spec.entrypoint} "
          f"(uploads {spec.upload_bytes / 1024 ** 2:.1f} MiB from {spec.working_dir})",
          flush=True)
    if args.no_wait:
        print(f"follow it with: emoray jobs logs {job_id} --follow --address "
              f"{client.get_address()}")
        return 0
    status = follow(client, job_id, echo=lambda line: print(line, flush=True))
    return _outcome(client, job_id, status)


def run_jobs(args: argparse.Namespace) -> int:
    from emoray.cluster.jobs import connect, describe, follow, info, log_tail

    client = connect(args.address, args.token_file)
    if args.action == "list":
        jobs = sorted(client.list_jobs(), key=lambda j: j.start_time or 0)
        for job in jobs:
            print(describe(job))
        print(f"{len(jobs)} job(s) on {client.get_address()}")
        return 0
    job = info(client, args.job_id)
    if args.action == "status":
        print(describe(job))
        return 0
    if args.action == "logs":
        if args.follow:
            return _outcome(client, args.job_id, follow(client, args.job_id))
        print(log_tail(client, args.job_id, args.tail) if args.tail
              else client.get_job_logs(args.job_id), end="")
        return 0
    stopped = client.stop_job(args.job_id)
    print(f"job {args.job_id}: " + ("stop requested" if stopped else
                                    f"not running ({job.status.value})"))
    if stopped and args.wait:
        from emoray.cluster.jobs import TERMINAL
        import time
        while str(client.get_job_status(args.job_id).value) not in TERMINAL:
            time.sleep(0.5)
        print(f"job {args.job_id}: {client.get_job_status(args.job_id).value}")
    return 0
