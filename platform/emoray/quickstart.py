"""``emoray quickstart``: the whole path on an embedded local Ray.

synth (a parallel EEG + speech + video corpus) -> ingest (Ray Data, Parquet shards) ->
preprocess (Ray Data, feature shards) -> a printed summary of both shard sets.
"""

from __future__ import annotations

import time
from pathlib import Path

from emoray.config import EmorayConfig, dump, resolve

#: The quickstart's own defaults (under the user's --config/--set). Kept small so the whole
#: run takes a few minutes on 2 cores; configs/data/quickstart.yaml holds the same values.
QUICKSTART_DEFAULTS: dict = {
    "ray": {"num_cpus": 2},
    "synth": {"mode": "parallel", "layout": "native", "subjects": 4, "trials_per_class": 3,
              "seconds": 10.0, "seed": 0},
    "ingest": {"layout": "manifest", "segment_seconds": 5.0},
    "preprocess": {"contract": {"video": {"n_frames": 10, "size": 64}}},
}


def quickstart_config(config_file: str | None = None, overrides: list[str] | None = None,
                      flags: dict | None = None) -> EmorayConfig:
    return resolve(config_file, flags, overrides, base=QUICKSTART_DEFAULTS)


def run_quickstart(cfg: EmorayConfig, out: str | Path, echo=print) -> dict:
    """Run every stage into ``out`` (corpus/, records/, features/); return the summaries."""
    from emoray.data.ingest import format_report as ingest_text, run_ingest
    from emoray.data.inspect import format_summary, overview_png, summarize
    from emoray.data.preprocess import format_report as prep_text, run_preprocess
    from emoray.runtime import init_ray
    from emoray.synth.corpus import write_corpus

    out = Path(out)
    corpus, records, features = out / "corpus", out / "records", out / "features"
    timings = {}

    t = time.perf_counter()
    echo(f"[1/4] synth: {cfg.synth.subjects} subjects x {cfg.synth.trials_per_class} trials "
         f"per class x {cfg.synth.seconds:g} s ({cfg.synth.mode}, {cfg.synth.layout}) -> {corpus}")
    write_corpus(cfg.synth, corpus)
    timings["synth"] = time.perf_counter() - t

    t = time.perf_counter()
    echo("[2/4] starting the embedded local Ray" if not cfg.ray.address
         else f"[2/4] connecting to Ray at {cfg.ray.address}")
    init_ray(cfg.ray)
    timings["ray"] = time.perf_counter() - t

    t = time.perf_counter()
    ingest = cfg.ingest.model_copy(update={"source": str(corpus), "output": str(records)})
    echo(f"[3/4] ingest -> {records}")
    ingest_report = run_ingest(ingest, echo=echo)
    echo(ingest_text(ingest_report))
    timings["ingest"] = time.perf_counter() - t

    t = time.perf_counter()
    prep = cfg.preprocess.model_copy(update={"input": str(records), "output": str(features)})
    echo(f"[4/4] preprocess -> {features}")
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
        echo(format_summary(summary))
        echo(f"  overview: {overview_png(folder)}")
    echo("")
    echo("quickstart done in " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
         + f"; resolved config: {out / 'config.yaml'}")
    return {"ingest": ingest_report, "preprocess": prep_report, "summaries": summaries,
            "timings": timings}
