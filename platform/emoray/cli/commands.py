"""The ``emoray`` command's handlers: one front door for every stage.

Every subcommand takes ``--config FILE.yaml`` and repeatable ``--set key=value``
overrides on the typed config (see :mod:`emoray.config`); its own flags are shorthands
for config fields. User errors print one clear message and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from emoray.cli.format import format_prediction, format_synth, format_window
from emoray.cli.parser import build_parser
from emoray.errors import EmorayError

_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def _resolve(args: argparse.Namespace, flags: dict[str, Any]):
    from emoray.config import resolve

    flags = dict(flags, **{"ray.address": args.ray_address, "ray.num_cpus": args.num_cpus},
                 **_tracking_flags(args))
    return resolve(args.config, flags, args.overrides)


def _tracking_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {"tracking.uri": getattr(args, "tracking_uri", None),
            "tracking.enabled": False if getattr(args, "no_tracking", False) else None}


def _tracker(cfg, root: str | Path):
    """The MLflow tracker of ``cfg.tracking`` (None when off), opened before Ray starts so
    that a bad ``--tracking-uri`` fails first, with one line."""
    from emoray.tracking import open_tracker

    t = cfg.tracking
    return open_tracker(t.uri, t.experiment, root) if t.enabled else None


def _start_ray(args: argparse.Namespace, ray_cfg, folder: str | Path) -> None:
    from emoray.runtime import init_ray_logged

    init_ray_logged(ray_cfg, folder, verbose=getattr(args, "verbose", False))


def _command(name: str):
    def wrap(fn):
        _COMMANDS[name] = fn
        return fn
    return wrap


@_command("synth")
def _synth(args: argparse.Namespace) -> int:
    from emoray.config import dump
    from emoray.synth.corpus import write_corpus

    cfg = _resolve(args, {"synth.layout": args.layout, "synth.mode": args.mode,
                          "synth.subjects": args.subjects,
                          "synth.trials_per_class": args.trials_per_class,
                          "synth.seconds": args.seconds, "synth.seed": args.seed})
    summary = write_corpus(cfg.synth, args.out)
    dump(cfg, Path(args.out) / "config.yaml", ["synth"])
    print(format_synth(summary, args.out))
    return 0


@_command("ingest")
def _ingest(args: argparse.Namespace) -> int:
    from emoray.config import dump
    from emoray.data.ingest import format_report, run_ingest
    cfg = _resolve(args, {"ingest.source": args.source, "ingest.output": args.out,
                          "ingest.layout": args.layout,
                          "ingest.segment_seconds": args.segment_seconds,
                          "ingest.force": args.force})
    if not cfg.ingest.source or not cfg.ingest.output:
        raise EmorayError("ingest needs a SOURCE and --out (or ingest.source/ingest.output "
                          "in --config)")
    _start_ray(args, cfg.ray, cfg.ingest.output)
    report = run_ingest(cfg.ingest)
    dump(cfg, Path(cfg.ingest.output) / "config.yaml", ["ray", "ingest"])
    print(format_report(report))
    return 0


@_command("preprocess")
def _preprocess(args: argparse.Namespace) -> int:
    from emoray.config import dump
    from emoray.data.preprocess import format_report, run_preprocess

    cfg = _resolve(args, {"preprocess.input": args.input, "preprocess.output": args.out,
                          "preprocess.force": args.force})
    if not cfg.preprocess.input or not cfg.preprocess.output:
        raise EmorayError("preprocess needs an INPUT folder and --out")
    from emoray.data.shards import shard_files

    shard_files(cfg.preprocess.input)         # a bad folder fails before Ray starts
    _start_ray(args, cfg.ray, cfg.preprocess.output)
    report = run_preprocess(cfg.preprocess)
    dump(cfg, Path(cfg.preprocess.output) / "config.yaml", ["ray", "preprocess"])
    print(format_report(report))
    return 0


@_command("inspect")
def _inspect(args: argparse.Namespace) -> int:
    from emoray.data.inspect import format_summary, overview_png, summarize

    summary = summarize(args.shards)
    print(format_summary(summary))
    if not args.no_png:
        png = overview_png(args.shards, args.png)
        print(f"overview: {png}")
    return 0


@_command("quickstart")
def _quickstart(args: argparse.Namespace) -> int:
    from emoray.cli.quickstart import quickstart_config, run_quickstart

    cfg = quickstart_config(args.config, args.overrides,
                            {"ray.address": args.ray_address, "ray.num_cpus": args.num_cpus})
    from emoray import console

    console.configure(Path(args.out) / "logs", verbose=getattr(args, "verbose", False))
    run_quickstart(cfg, args.out, echo=console.echo, seeds=args.seeds)
    return 0


@_command("train")
def _train(args: argparse.Namespace) -> int:
    cfg = _resolve(args, {"train.features": args.features, "train.name": args.name,
                          "train.output": args.out})
    if not cfg.train.features:
        raise EmorayError("train needs a FEATURES folder (or train.features in --config)")
    from emoray.data.features import feature_metadata
    from emoray.train.plan import format_summary, plan_stages, preflight, run_dir, run_plan

    feature_metadata(cfg.train.features)      # a bad folder fails before Ray starts
    preflight(Path(cfg.train.features), plan_stages(cfg))
    tracker = _tracker(cfg, cfg.train.output)
    _start_ray(args, cfg.ray, run_dir(cfg))
    print(format_summary(run_plan(cfg, tracking=(tracker, None))))
    return 0


@_command("evaluate")
def _evaluate(args: argparse.Namespace) -> int:
    from emoray.train.evaluate import evaluate_bundle, evaluate_run, format_report, is_run

    target = Path(args.target)
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    except ValueError:
        raise EmorayError(f"--seeds: expected comma-separated integers, got "
                          f"{args.seeds!r}") from None
    if not is_run(target):
        if args.protocol != "within-subject" or seeds:
            raise EmorayError(f"{target}: not a run folder (config.yaml + plan_state.json); "
                              "a single checkpoint is scored within-subject only, without "
                              "re-training (--protocol loso and --seeds need a run)")
        result = evaluate_bundle(target, args.features)
        print(f"evaluate {target} ({result['stage']} bundle, within-subject validation):")
        for k, v in result["metrics"].items():
            print(f"  {k} = {v:.4f}" if isinstance(v, float) else f"  {k} = {v}")
        return 0
    cfg = _resolve(args, {})
    from emoray.config import resolve

    run_cfg = resolve(target / "config.yaml", overrides=args.overrides)
    run_cfg.ray, run_cfg.tracking = cfg.ray, cfg.tracking
    tracker = _tracker(cfg, target.resolve().parent)
    if args.parallel < 1:
        raise EmorayError(f"--parallel: expected an integer >= 1, got {args.parallel}")
    _start_ray(args, cfg.ray, target / "eval" / args.protocol)
    report = evaluate_run(target, args.protocol, seeds, args.folds, args.features, run_cfg,
                          parallel=args.parallel, tracker=tracker)
    print(format_report(report))
    print("report files: " + ", ".join(report["files"]))
    return 0


@_command("tune")
def _tune(args: argparse.Namespace) -> int:
    from emoray.tune.campaign import resolve_campaign, run_campaign, summary_line

    flags = {"tune.name": args.name, "tune.storage": args.storage, "tune.search": args.search,
             "tune.num_samples": args.samples, "tune.max_concurrent": args.concurrency,
             "tune.seed": args.seed, "ray.address": args.ray_address,
             "ray.num_cpus": args.num_cpus, **_tracking_flags(args)}
    if args.args[:1] == ["report"]:
        if len(args.args) != 2:
            raise EmorayError("usage: emoray tune report NAME [--storage S] [--out DIR]")
        from emoray import storage
        from emoray.tune.report import format_table, read_campaign, trials_table, write_report

        cfg = resolve_campaign(args.config, flags, args.overrides)
        exp = _campaign_folder(args.args[1], args.storage or cfg.tune.storage)
        out = args.out
        if storage.is_uri(exp):               # read a copy; write the report locally
            out = out or str(Path("runs/tune-reports") / args.args[1])
            exp = str(storage.fetch_dir(exp))
        info = read_campaign(exp)
        files = write_report(exp, out)
        print(format_table(trials_table(exp, info["metric"], info["mode"]), info["metric"],
                           info["mode"]))
        print("report files: " + ", ".join(str(v) for v in files.values()))
        return 0
    if len(args.args) > 1:
        raise EmorayError(f"tune: expected at most one FEATURES folder, got {args.args}")
    if args.resume:
        if args.config or args.args:
            raise EmorayError("tune --resume NAME takes the campaign's saved config: drop "
                              "--config and FEATURES")
        from emoray.tune.campaign import load_campaign

        ray_cfg = load_campaign(args.resume, args.storage or "runs/tune").emoray_config().ray
        ray_cfg.address = args.ray_address or ray_cfg.address
        ray_cfg.num_cpus = args.num_cpus or ray_cfg.num_cpus
    else:
        if not args.config:
            raise EmorayError("tune needs --config CAMPAIGN.yaml (e.g. configs/tune/cca.yaml)"
                              " or --resume NAME")
        if args.args:
            flags["train.features"] = args.args[0]
        cfg = resolve_campaign(args.config, flags, args.overrides)
        from emoray.tune.campaign import shape

        if not cfg.train.features:
            raise EmorayError("tune needs a FEATURES folder (or train.features in the plan or "
                              "the campaign file)")
        from emoray.data.features import feature_metadata

        shape(cfg)                            # a bad space, metric or folder fails before
        feature_metadata(cfg.train.features)  # Ray starts
        if cfg.tracking.enabled and cfg.tracking.uri:
            from emoray.tracking import check_uri

            check_uri(cfg.tracking.uri)
        ray_cfg = cfg.ray
    if ray_cfg.include_dashboard is None:
        ray_cfg.include_dashboard = True      # ASHA-stopped trials leak PGs without it
    from emoray import storage

    root = args.storage or ("runs/tune" if args.resume else cfg.tune.storage)
    _start_ray(args, ray_cfg, storage.join(root, args.resume or cfg.tune.name))
    out = run_campaign(None if args.resume else cfg, resume=args.resume,
                       storage_root=args.storage)
    print(summary_line(out))
    return 0


@_command("serve")
def _serve(args: argparse.Namespace) -> int:
    cfg = _resolve(args, {"serve.checkpoint": args.checkpoint, "serve.host": args.host,
                          "serve.port": args.port, "serve.api_key_env": args.api_key_env,
                          "serve.batching": False if args.no_batching else None})
    from emoray.serving.app import run
    from emoray.serving.model import ServedModel

    if not cfg.serve.checkpoint:
        raise EmorayError("serve needs a CHECKPOINT (or serve.checkpoint in --config)")
    if cfg.tracking.uri:                      # runs:/RUN_ID/bundle is read from this store
        import os                             # (by the replicas of an embedded Ray too)

        os.environ["MLFLOW_TRACKING_URI"] = cfg.tracking.uri
    ServedModel(cfg.serve.checkpoint, role="router", device="cpu")   # fails before Ray starts
    _start_ray(args, cfg.ray, Path("runs") / f"serve-{cfg.serve.port}")
    run(cfg.serve, blocking=True)
    return 0


@_command("predict")
def _predict(args: argparse.Namespace) -> int:
    import json
    import os

    from emoray.serving.client import predict_files

    key = None
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            raise EmorayError(f"--api-key-env: environment variable {args.api_key_env} is "
                              "unset or empty")
    if args.stream:
        return _predict_stream(args, key)
    answer = predict_files(args.url, args.files, api_key=key, video_fps=args.video_fps,
                           timeout=args.timeout, encoding=args.encoding,
                           subject=args.subject)
    print(json.dumps(answer, indent=2) if args.json else format_prediction(answer))
    return 0


def _predict_stream(args: argparse.Namespace, key: str | None) -> int:
    import json

    from emoray.serving.stream_client import stream_files

    def show(answer: dict) -> None:
        print(json.dumps(answer) if args.json else format_window(answer), flush=True)

    result = stream_files(args.url, args.files, api_key=key, subject=args.subject,
                          window_seconds=args.window_seconds, hop_seconds=args.hop_seconds,
                          speed=args.speed, timeout=args.timeout, on_answer=show)
    if not args.json:
        lat = sorted(result.latencies_ms)
        p50 = f", latency p50 {lat[len(lat) // 2]:.0f} ms" if lat else ""
        print(f"{len(result.answers)} window(s) over {result.seconds:.1f} s of signal in "
              f"{result.wall_s:.1f} s{p50}")
    return 0


def _campaign_folder(name: str, storage_root: str) -> str:
    from emoray import storage

    if Path(name).is_dir() and (Path(name) / "campaign.json").is_file():
        return name                           # a campaign folder given directly
    return storage.join(storage_root, name)


def _benchmarks_on_path() -> None:
    """Make ``benchmarks`` (beside the package in a checkout) importable."""
    import emoray

    for root in (Path(emoray.__file__).resolve().parents[2], Path.cwd()):
        if (root / "benchmarks" / "_runner.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            return
    raise EmorayError("bench: the benchmarks live in a checkout of emoray (benchmarks/ beside "
                      "platform/); run from one, or `python benchmarks/NAME.py` there")


@_command("bench")
def _bench(args: argparse.Namespace) -> int:
    import importlib

    _benchmarks_on_path()
    cfg = _resolve(args, {})
    kwargs = {"features": args.features} if args.features else {}
    if kwargs and args.name not in ("train", "tune"):
        raise EmorayError(f"bench {args.name}: --features applies to `bench train` and "
                          "`bench tune`")
    if args.checkpoint:
        if args.name != "serve":
            raise EmorayError("bench: --checkpoint applies to `bench serve`")
        kwargs["checkpoint"] = args.checkpoint
    if args.encoding:
        if args.name != "serve":
            raise EmorayError("bench: --encoding applies to `bench serve`")
        kwargs["encoding"] = args.encoding
    for flag in ("parts", "parallel"):
        if getattr(args, flag) is not None and args.name != "accuracy":
            raise EmorayError(f"bench: --{flag} applies to `bench accuracy`")
    if args.name == "accuracy":
        kwargs["overrides"] = list(args.overrides)     # its run's own config (quickstart's)
        if args.parts:
            kwargs["parts"] = tuple(p for p in args.parts.split(",") if p)
        if args.parallel is not None:
            if args.parallel < 1:
                raise EmorayError(f"bench accuracy --parallel: expected a number of training "
                                  f"runs >= 1, got {args.parallel}")
            kwargs["parallel"] = args.parallel
    bench = importlib.import_module(f"benchmarks.{args.name}")
    bench.run_benchmark(quick=args.quick, out_dir=args.out, ray_cfg=cfg.ray, **kwargs)
    return 0


@_command("models")
def _models(args: argparse.Namespace) -> int:
    from emoray.cli.models import run_models

    return run_models(args)


@_command("submit")
def _submit(args: argparse.Namespace) -> int:
    from emoray.cli.cluster import run_submit

    return run_submit(args)


@_command("jobs")
def _jobs(args: argparse.Namespace) -> int:
    from emoray.cli.cluster import run_jobs

    return run_jobs(args)


def run(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run its handler; user errors print one line and return 2."""
    from emoray import console

    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    try:
        return _COMMANDS[args.command](args)
    except EmorayError as exc:
        print(f"emoray {args.command}: error: {exc}", file=sys.stderr)
        console.tell_logs(args.command)
        return 2
    except KeyboardInterrupt:
        print(f"emoray {args.command}: interrupted", file=sys.stderr)
        console.tell_logs(args.command)
        return 130
    except BaseException:
        console.tell_logs(args.command)
        raise
    finally:
        console.close()

