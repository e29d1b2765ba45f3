"""``emoray quickstart``: the whole path on an embedded local Ray.

synth (a parallel EEG + speech + video corpus) -> ingest (Ray Data, Parquet shards) ->
preprocess (Ray Data, feature shards) -> a printed summary of both shard sets -> train one
plan with JMML's three stages and the attention fusion (tiny presets, Ray Train) ->
evaluate it (within-subject, three seeds) and print both reports (the fused-vs-unimodal
table and the JMML ablation).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from emoray.config import EmorayConfig, dump, resolve

#: The quickstart's own defaults (under the user's --config/--set). Kept small so the whole
#: run takes a few minutes on 2 cores; configs/data/quickstart.yaml holds the same values.
QUICKSTART_DEFAULTS: dict = {
    "ray": {"num_cpus": 2},
    "synth": {"mode": "parallel", "layout": "native", "subjects": 4, "trials_per_class": 6,
              "seconds": 10.0, "seed": 0},
    "ingest": {"layout": "manifest", "segment_seconds": 5.0},
    "preprocess": {"contract": {"video": {"n_frames": 10, "size": 64}}},
    "train": {"name": "quickstart", "stages": {
        "intra": {"encoders": {"speech": "tiny", "eeg": "tiny"}, "epochs": 10,
                  "batch_size": 16, "num_workers": 2, "cpus_per_worker": 0.25,
                  "materialize": True},
        "inter": {"k": 4, "hidden": 32, "epochs": 10, "batch_size": 24, "num_workers": 2,
                  "cpus_per_worker": 0.25, "materialize": True},
        "classifier": {"num_workers": 1, "cpus_per_worker": 0.25, "materialize": True},
        "fusion": {"encoders": {"eeg": "tiny", "speech": "tiny", "video": "tiny"},
                   "architectures": {"eeg": "bandpower-mlp", "speech": "speechstats"},
                   "subject_norm": ["eeg_bp", "audio_stats", "video"],
                   "calibrate_unseen": True, "fuse_aux": True,
                   "per_modality": "aux", "mixup": 0.4,
                   "feature_noise": {"eeg_bp": 1.0, "audio_stats": 1.0},
                   "dropout": 0.3, "dim": 32,
                   "heads": 2, "layers": 1, "epochs": 20, "lr": 0.002, "weight_decay": 0.05,
                   "batch_size": 16, "num_workers": 2, "cpus_per_worker": 0.25,
                   "materialize": True}}},
}

#: How the quickstart evaluates its run: protocol -> (seeds, folds); the run is the first
#: seed, and every seed's plan trains at once.
#: Leave-subjects-out is `emoray evaluate RUN --protocol loso` (it re-trains per fold:
#: adding it here, 2 folds x 1 seed, took the quickstart from about 8 to 12.5 minutes).
QUICKSTART_EVAL = {"within-subject": ([0, 1, 2], None)}
QUICKSTART_PARALLEL = 3


def quickstart_config(config_file: str | None = None, overrides: list[str] | None = None,
                      flags: dict | None = None) -> EmorayConfig:
    return resolve(config_file, flags, overrides, base=QUICKSTART_DEFAULTS)


def run_quickstart(cfg: EmorayConfig, out: str | Path, echo=print, seeds: int = 3) -> dict:
    """Run every stage into ``out`` (corpus/, records/, features/), evaluating over the
    first ``seeds`` seeds of :data:`QUICKSTART_EVAL`; return the summaries."""
    from emoray.data.ingest import format_report as ingest_text, run_ingest
    from emoray.data.inspect import format_summary, overview_png, summarize
    from emoray.data.preprocess import format_report as prep_text, run_preprocess
    from emoray.runtime import init_ray
    from emoray.synth.corpus import write_corpus

    out = Path(out)
    corpus, records, features = out / "corpus", out / "records", out / "features"
    timings = {}

    t = time.perf_counter()
    echo(f"[1/7] synth: {cfg.synth.subjects} subjects x {cfg.synth.trials_per_class} trials "
         f"per class x {cfg.synth.seconds:g} s ({cfg.synth.mode}, {cfg.synth.layout}) -> {corpus}")
    write_corpus(cfg.synth, corpus)
    timings["synth"] = time.perf_counter() - t

    t = time.perf_counter()
    echo("[2/7] starting the embedded local Ray" if not cfg.ray.address
         else f"[2/7] connecting to Ray at {cfg.ray.address}")
    init_ray(cfg.ray)
    timings["ray"] = time.perf_counter() - t
    from emoray import console

    if console.where():
        echo("  " + console.where())

    t = time.perf_counter()
    ingest = cfg.ingest.model_copy(update={"source": str(corpus), "output": str(records)})
    echo(f"[3/7] ingest -> {records}")
    ingest_report = run_ingest(ingest, echo=echo)
    echo(ingest_text(ingest_report))
    timings["ingest"] = time.perf_counter() - t

    t = time.perf_counter()
    prep = cfg.preprocess.model_copy(update={"input": str(records), "output": str(features)})
    echo(f"[4/7] preprocess -> {features}")
    prep_report = run_preprocess(prep, echo=echo)
    echo(prep_text(prep_report))
    timings["preprocess"] = time.perf_counter() - t

    resolved = cfg.model_copy(update={"ingest": ingest, "preprocess": prep})
    dump(resolved, out / "config.yaml")
    summaries = {}
    for name, folder in (("records", records), ("features", features)):
        summary = summarize(folder)
        summaries[name] = summary
        echo("")
        echo(short_summary(format_summary(summary)))
        echo(f"  overview: {overview_png(folder)}; `emoray inspect {folder}` prints it all")
    reports = train_and_evaluate(cfg, features, out / "train", timings, echo, seeds)
    t = time.perf_counter()
    answers = serve_and_ask(cfg, out / "train" / cfg.train.name, corpus, echo,
                            features=features)
    timings["serve"] = time.perf_counter() - t
    echo("")
    echo("quickstart done in " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
         + f"; resolved config: {out / 'config.yaml'}")
    if console.where():
        echo(console.where())
    return {"ingest": ingest_report, "preprocess": prep_report, "summaries": summaries,
            "reports": reports, "answers": answers, "timings": timings}


def _headline(m: re.Match) -> str:
    key = m.group(0).split("=")[0].strip()
    return m.group(0) if key in ("val_acc", "val_f1", "train_loss") else ""


def short_summary(text: str, drop: tuple[str, ...] | None = None) -> str:
    """A shard summary (:func:`emoray.data.inspect.format_summary`) in a few lines: the
    header, modalities, classes and subjects, and the shapes on one line; or, with
    ``drop``, ``text`` without the lines holding one of those strings. The whole goes to
    the log file."""
    from emoray import console

    console.log(text)
    lines = text.splitlines()
    if drop is not None:                     # a run's summary: its headline metrics only
        return "\n".join(re.sub(r" (val|train)_\w+=[-\d.]+", _headline, ln)
                         for ln in lines if not any(d in ln for d in drop))
    keep = lines[:1] + [ln for ln in lines[1:] if ln.lstrip().startswith(
        ("per modality", "per class", "per subject"))]
    shapes = [ln.strip()[len("shape "):] for ln in lines if ln.lstrip().startswith("shape ")]
    if shapes:
        keep.append("  shapes: " + "; ".join(shapes))
    return "\n".join(keep)


def train_and_evaluate(cfg: EmorayConfig, features: Path, output: Path,
                       timings: dict[str, float], echo=print, seeds: int = 3) -> dict:
    """Train the quickstart plan on ``features`` into ``output`` and evaluate it under
    :data:`QUICKSTART_EVAL` (its first ``seeds`` seeds); print and return the reports.

    The run is the evaluation's first seed, so it trains in the evaluation's pool beside the
    other seeds (:data:`QUICKSTART_PARALLEL` at a time) rather than alone before them: on 2
    cores a small plan leaves the CPUs idle part of the time, which the others fill."""
    from emoray.train.evaluate import evaluate_protocols, format_report
    from emoray.train.plan import format_summary, run_dir, run_results

    t = time.perf_counter()
    train = cfg.train.model_copy(update={"features": str(features), "output": str(output)})
    plan_cfg = cfg.model_copy(update={"train": train})
    protocols = {p: (s[:seeds], f) for p, (s, f) in QUICKSTART_EVAL.items()}
    others = sorted({seed for s, _ in protocols.values() for seed in s[1:]})
    echo("")
    echo(f"[5/7] train: {', '.join(train.stages)} (Ray Train) -> {run_dir(plan_cfg)}"
         + (f"; the evaluation's seeds {others} train beside it ({QUICKSTART_PARALLEL} "
            "plans at a time)" if others else ""))
    reports = evaluate_protocols(run_dir(plan_cfg), protocols, cfg=plan_cfg, echo=echo,
                                 parallel=QUICKSTART_PARALLEL)
    echo(short_summary(format_summary(run_results(run_dir(plan_cfg))),
                       drop=(" bundle: ", " plot: ")))
    timings["train"] = time.perf_counter() - t
    echo("")
    echo("[6/7] evaluate: " + "; ".join(
        f"{p} over seeds {s}" + (f" and {f} subject folds" if f else "")
        for p, (s, f) in protocols.items()))
    for protocol, report in reports.items():
        echo("")
        echo("\n".join(ln for ln in format_report(report).splitlines() if ln.strip()))
        echo(f"  files: {', '.join(report['files'])}")
    return reports


SUBSETS = [("eeg",), ("speech",), ("video",), ("eeg", "speech"), ("eeg", "video"),
           ("speech", "video"), ("eeg", "speech", "video")]


def demo_trial(corpus: Path, features: Path | None, split=None) -> dict[str, str]:
    """The manifest row of the first trial with all three modalities that the model never
    trained on (a validation trial of ``split``; any trial without ``features``)."""
    import csv

    held: set[tuple[str, ...]] | None = None
    if features is not None:
        from emoray.data.shards import shard_files
        from emoray.train.split import split_records

        _, val_ids = split_records(shard_files(features), split, str(features))
        held = {tuple(r.split("/")[1:4]) for r in val_ids}     # dataset/subject/session/trial/seg
    with open(corpus / "manifest.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("eeg") and r.get("audio")
                and r.get("video")]
    for r in rows:
        if held is None or (r["subject"], r["session"], r["trial"]) in held:
            return r
    return rows[0]


def serve_and_ask(cfg: EmorayConfig, run: Path, corpus: Path, echo=print,
                  features: Path | None = None) -> dict:
    """Serve the trained run on Ray Serve (``cfg.serve``), send one validation trial's files
    with every modality subset over HTTP (naming its subject, whose statistics the model
    keeps), print the answers beside the true label and shut Serve down."""
    from ray import serve

    from emoray import console
    from emoray.cli.format import format_prediction
    from emoray.serving.app import run as serve_run
    from emoray.serving.client import predict_files

    row = demo_trial(corpus, features, cfg.train.split)
    files = {"eeg": corpus / row["eeg"], "speech": corpus / row["audio"],
             "video": corpus / row["video"]}
    settings = cfg.serve.model_copy(update={"checkpoint": str(run)})
    echo("")
    echo(f"[7/7] serve: {run} on Ray Serve; one request per modality subset of validation "
         f"trial {row['trial']} of {row['subject']} (true label: {row['label']})")
    console.quiet_ray_loggers()              # Serve sets its driver logger up on import
    url = serve_run(settings, echo=echo)
    answers = {}
    try:
        for subset in SUBSETS:
            answer = predict_files(url, [files[m] for m in subset], subject=row["subject"])
            answers["+".join(subset)] = answer
            echo(f"  {'+'.join(subset):<17} -> " + format_prediction(answer).splitlines()[0]
                 + f"   (true: {row['label']})")
        echo("  full answer for eeg+speech+video:")
        echo("    " + format_prediction(answers["eeg+speech+video"]).replace("\n", "\n    "))
        echo(f"  serve it yourself: emoray serve {run}   (docs at {url}/docs)")
    finally:
        serve.shutdown()
    return answers
