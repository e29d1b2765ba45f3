"""``emoray submit`` and ``emoray jobs``: the command-line side of :mod:`emoray.cluster.jobs`
(their flags are in :mod:`emoray.cli.parser`).

``emoray submit [OPTIONS] KIND ARGS...`` submits ``jobs/KIND.py ARGS...`` (KIND: train,
tune, ingest, preprocess, evaluate; ARGS exactly those of ``emoray KIND``), streams its log
and exits with the job's outcome: 0 when it SUCCEEDED, 1 when it FAILED or was STOPPED
(with the log's last lines and Ray's message), 2 for a mistake caught before submission.
``--no-wait`` prints the submission id and returns at once.
"""

from __future__ import annotations

import argparse

from emoray.errors import ConfigError


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
    from emoray.cli.submission import prepare
    from emoray.cluster.jobs import connect, follow, submit

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
