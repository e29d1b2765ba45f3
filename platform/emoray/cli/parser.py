"""The ``emoray`` command line's grammar: every subcommand and its flags (no handlers).

Kept apart from the handlers (:mod:`emoray.cli.commands`) and importing nothing of emoray
but its version, so that :mod:`emoray.cluster.jobs` can check a job's arguments exactly
as the job's entrypoint will parse them, before anything is uploaded.
"""

from __future__ import annotations

import argparse

from emoray import __version__

#: what ``emoray submit KIND`` runs as a Ray Job (``jobs/KIND.py``)
JOB_KINDS = ("train", "tune", "ingest", "preprocess", "evaluate")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE.yaml", help="YAML config overlay (sections: "
                   "ray, synth, ingest, preprocess, train)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field by its dotted name, e.g. synth.subjects=6 "
                   "(repeatable)")
    p.add_argument("--address", dest="ray_address", help="Ray cluster address (default: start "
                   "an embedded local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs for the embedded local Ray")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="show Ray's own logs and every worker line (same as emoray -v)")


def _tracking(p: argparse.ArgumentParser, serve: bool = False) -> None:
    if serve:
        p.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking server or store "
                       "that a runs:/RUN_ID/bundle CHECKPOINT is read from (tracking.uri; "
                       "default: MLFLOW_TRACKING_URI)")
        return
    p.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking server "
                   "(http://HOST:5000) or sqlite:///PATH/mlflow.db (tracking.uri; default: "
                   "OUTPUT/mlflow.db beside the runs)")
    p.add_argument("--no-tracking", action="store_true", help="log no MLflow runs "
                   "(tracking.enabled=false)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emoray", description="emoray: multimodal emotion recognition (EEG, speech, "
        "video) on Ray.", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"emoray {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show Ray's own logs, "
                        "Ray Data's execution plans and every worker's output on the console "
                        "(by default they go to the run folder's logs/ray.log)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("quickstart", help="synth -> ingest -> preprocess on an embedded "
                       "local Ray, then print the shard summary")
    p.add_argument("--out", default="runs/quickstart", help="run folder (default %(default)s)")
    p.add_argument("--seeds", type=int, choices=[1, 2, 3], default=3, help="evaluation seeds "
                   "(default %(default)s; 1 is about a third of the evaluation step's time)")
    _common(p)

    p = sub.add_parser("synth", help="write a synthetic multimodal corpus with known ground "
                       "truth in real file formats")
    p.add_argument("out", help="output folder")
    p.add_argument("--layout", choices=["native", "eav", "deap", "iemocap"])
    p.add_argument("--mode", choices=["parallel", "nonparallel"])
    p.add_argument("--subjects", type=int)
    p.add_argument("--trials-per-class", type=int)
    p.add_argument("--seconds", type=float, help="trial length in seconds")
    p.add_argument("--seed", type=int)
    _common(p)

    p = sub.add_parser("ingest", help="read a dataset tree into Parquet record shards "
                       "(Ray Data)")
    p.add_argument("source", nargs="?", help="dataset root (or manifest CSV)")
    p.add_argument("--out", help="output folder (shards go to OUT/shards)")
    p.add_argument("--layout", help="manifest, bids, eav, deap, seed, dreamer or iemocap")
    p.add_argument("--segment-seconds", type=float)
    p.add_argument("--force", action="store_true", default=None, help="redo even if up to date")
    _common(p)

    p = sub.add_parser("preprocess", help="record shards -> feature shards per the "
                       "preprocessing contract (Ray Data)")
    p.add_argument("input", nargs="?", help="an ingest output folder")
    p.add_argument("--out", help="output folder")
    p.add_argument("--force", action="store_true", default=None, help="redo even if up to date")
    _common(p)

    p = sub.add_parser("inspect", help="print counts, rates and shapes of shards; write a "
                       "PNG overview")
    p.add_argument("shards", help="an ingest or preprocess output folder")
    p.add_argument("--png", help="overview image path (default SHARDS/overview.png)")
    p.add_argument("--no-png", action="store_true", help="skip the image")

    p = sub.add_parser("train", help="run a training plan's stages (Ray Train); a re-run "
                       "with the same name skips finished stages and resumes the rest")
    p.add_argument("features", nargs="?", help="a preprocess output folder (train.features)")
    p.add_argument("--name", help="run name; the run folder is train.output/NAME")
    p.add_argument("--out", help="storage root of runs (train.output)")
    _tracking(p)
    _common(p)

    p = sub.add_parser("evaluate", help="reports of a run (fused vs unimodal; the JMML "
                       "ablation) under a protocol, over seeds; or score one checkpoint")
    p.add_argument("target", help="a run folder (train.output/NAME) or a bundle folder")
    p.add_argument("--protocol", choices=["within-subject", "loso"], default="within-subject",
                   help="within-subject split, or leave subjects out (one fold per subject "
                   "unless --folds)")
    p.add_argument("--seeds", help="comma-separated seeds (default: the run's seed and the "
                   "next two)")
    p.add_argument("--folds", type=int, help="loso: number of held-out subject groups")
    p.add_argument("--features", help="feature folder (default: the run's train.features)")
    p.add_argument("--parallel", type=int, default=1, help="run this many (seed, fold) plans "
                   "at once (default %(default)s)")
    _tracking(p)
    _common(p)

    p = sub.add_parser(
        "tune", help="a hyperparameter-search campaign (Ray Tune + Optuna, ASHA) over a "
        "training plan's fields; `tune report NAME` tabulates and plots one",
        usage="emoray tune --config CAMPAIGN.yaml [FEATURES] | --resume NAME | report NAME")
    p.add_argument("args", nargs="*", metavar="FEATURES | report NAME",
                   help="a preprocess output folder (train.features), or `report NAME`")
    p.add_argument("--resume", metavar="NAME", help="continue the interrupted campaign NAME "
                   "(completed trials are kept; the interrupted one re-runs from its latest "
                   "checkpoint)")
    p.add_argument("--name", help="campaign name (tune.name)")
    p.add_argument("--storage", help="campaign storage: folder or URI (tune.storage)")
    p.add_argument("--search", choices=["optuna", "random"], help="tune.search")
    p.add_argument("--samples", type=int, help="number of trials (tune.num_samples)")
    p.add_argument("--concurrency", type=int, help="trials at once (tune.max_concurrent)")
    p.add_argument("--seed", type=int, help="search seed (tune.seed)")
    p.add_argument("--out", help="tune report: output folder (default STORAGE/NAME/report)")
    _tracking(p)
    _common(p)

    p = sub.add_parser("serve", help="serve a checkpoint on Ray Serve: per-modality encoder "
                       "deployments behind a FastAPI router (POST /v1/predict)")
    p.add_argument("checkpoint", nargs="?", help="a bundle, training run or campaign folder, "
                   "or a storage URI of one (serve.checkpoint)")
    p.add_argument("--host", help="bind address (serve.host, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (serve.port, default 8000)")
    p.add_argument("--api-key-env", metavar="VAR", help="require the API key held in this "
                   "environment variable (X-API-Key header)")
    p.add_argument("--no-batching", action="store_true", default=None,
                   help="encoders answer one request at a time (serve.batching=false)")
    _tracking(p, serve=True)
    _common(p)

    p = sub.add_parser("predict", help="send real files to a running `emoray serve` and print "
                       "the prediction")
    p.add_argument("files", nargs="+", help="EEG (EDF/BDF/FIF), speech (WAV/FLAC), video (MP4, "
                   "JPEG frames or a folder of them): any non-empty subset")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server (default "
                   "%(default)s)")
    p.add_argument("--api-key-env", metavar="VAR", help="send the API key held in this "
                   "environment variable")
    p.add_argument("--video-fps", type=float, help="frame rate of JPEG frames")
    p.add_argument("--encoding", choices=["binary", "arrays", "json"], default="binary",
                   help="binary: the files as they are (default, fewest bytes); arrays: "
                   "decoded here, sent as .npy arrays (the server parses no file format); "
                   "json: decoded here, sent as JSON")
    p.add_argument("--json", action="store_true", help="print the full JSON answer (with "
                   "--stream: one JSON line per window)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds (default %(default)s)")
    p.add_argument("--stream", action="store_true", help="replay the EEG and/or speech "
                   "files in real time against the server's live stream (/v1/stream) and "
                   "print one line per window")
    p.add_argument("--speed", type=float, default=1.0, help="with --stream: times real "
                   "time (0: as fast as the server answers; default %(default)s)")
    p.add_argument("--window-seconds", type=float, help="with --stream: signal per answer "
                   "(default: the model's segment length)")
    p.add_argument("--hop-seconds", type=float, help="with --stream: signal between answers "
                   "(default: the server's serve.stream.hop_seconds)")
    p.add_argument("--subject", help="the person recorded (standardised with their "
                   "calibration, POST /v1/subjects/ID/calibration)")

    p = sub.add_parser("models", help="list every registered encoder and whole model with "
                       "its parameters, FLOPs per sample and input at the default contract")
    p.add_argument("--all", action="store_true", help="every braindecode EEG model "
                   "(braindecode:<Model>), not only EEGNet, ShallowFBCSPNet and EEGConformer")
    p.add_argument("--json", action="store_true", help="print JSON for machines")

    add_cluster_parsers(sub)

    p = sub.add_parser("bench", help="run a benchmark (prints a table, writes JSON)")
    p.add_argument("name", choices=["ingest", "train", "tune", "serve", "accuracy", "models",
                                    "contract"],
                   help="which benchmark")
    p.add_argument("--parts", help="bench accuracy: comma-separated parts to run, of "
                   "deep,encoders (default: both)")
    p.add_argument("--parallel", type=int, help="bench accuracy: training runs at a time "
                   "(default 2; --quick: 3)")
    p.add_argument("--checkpoint", help="bench serve: serve this checkpoint instead of "
                   "training a tiny model")
    p.add_argument("--encoding", choices=["binary", "json"], help="bench serve: the request "
                   "body (default binary: multipart .npy parts, the Python client's default)")
    p.add_argument("--features", help="bench train/tune: reuse this preprocess output folder "
                   "instead of generating one")
    p.add_argument("--quick", action="store_true", help="a smaller run for smoke checks")
    p.add_argument("--out", default="benchmarks/results", help="JSON folder")
    _common(p)
    return parser


_TOKEN_HELP = ("file holding the cluster's Ray auth token (default: RAY_AUTH_TOKEN, "
               "RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token; sent only if the cluster asks)")


def _connection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="the cluster's dashboard URL (default: "
                   "RAY_API_SERVER_ADDRESS, else http://127.0.0.1:8265)")
    p.add_argument("--token-file", metavar="FILE", help=_TOKEN_HELP)


def add_cluster_parsers(sub) -> None:
    """Add ``submit`` and ``jobs`` to the ``emoray`` subcommand parsers."""
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
    p.add_argument("kind", choices=sorted(JOB_KINDS), metavar="KIND",
                   help="one of: " + ", ".join(sorted(JOB_KINDS)))
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
