"""Search campaigns: Optuna TPE + ASHA vs random search with every trial run to the end.

Both sides run :func:`emoray.tune.campaign.run_campaign` on ``configs/tune/cca-tiny.yaml``
(the JMML inter stage, E-DCC-CAE, tuned on ``val_f1_speech_only``) over the same synthetic
features on the same local Ray, with the same trial budget and the same concurrency (2):

``optuna``
    ``tune.search=optuna`` (TPE, seeded), ``tune.scheduler.type=asha``.
``random``
    ``tune.search=random`` (seeded), ``tune.scheduler.type=fifo``.

For each seed both campaigns run one after the other, the order alternating from seed to
seed (optuna first, then random first) so that slow spells of a shared machine fall on
both sides. Each campaign trains its own shared intra bundle (the *prefix*) and ends with
the classifier stage of its best trial; neither counts in the search's times, which start
at the campaign's **first trial start**. Tune stamps each report with whole seconds
(``timestamp``) and with the trial's own clock (``time_total_s``, float), so a trial's
start is estimated as the latest ``timestamp - time_total_s`` of its reports and a report's
time as that start plus its ``time_total_s`` (error below 1 s, on both sides alike).

Per campaign: the best metric any report reached, the epochs all trials ran together (the
sum of each trial's last ``training_iteration``: what ASHA saves), the search's wall time
(first trial start to last report), and the time from the first trial start to the first
report at or past a **target**: the median of all campaigns' best metrics, chosen after all
runs so both sides face the same bar (for an even count the lower middle one: a value some
campaign reached, so at least half the campaigns reach it). A campaign that never reaches
it has an infinite time-to-target; a method's figure is then the *expected running time*
(COCO/BBOB's ERT: the time all its campaigns spent, unsuccessful ones for their whole
search, over the number that reached the target), the plain mean when all reach it. The
headline ratio is random's ERT over Optuna's (> 1: Optuna + ASHA gets there faster); when
it is not finite, the epochs ratio (random / optuna) stands in and ``details["headline"]``
says so.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):      # run as a script (python benchmarks/NAME.py): the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # makes `benchmarks` importable

import math
import os
import shutil
import statistics
import tempfile
import time
from typing import Any, Iterable

from benchmarks._runner import runner_parser, start_ray, table, write_result
from emoray.config import RayConfig
from emoray.errors import ConfigError

TARGET = 1.0
METHODS = {"optuna": ["tune.search=optuna", "tune.scheduler.type=asha"],
           "random": ["tune.search=random", "tune.scheduler.type=fifo"]}
CONFIG = Path(__file__).resolve().parents[3] / "configs" / "tune" / "cca-tiny.yaml"
CONCURRENCY = 2


# -- pure summaries (no Ray) ----------------------------------------------------------------

def _better(a: float, b: float, mode: str) -> bool:
    """``a`` at least as good as ``b``."""
    return a >= b if mode == "max" else a <= b


def _values(rows: list[dict[str, Any]], metric: str) -> list[float]:
    out = []
    for r in rows:
        v = r.get(metric)
        out.append(float(v) if v is not None and math.isfinite(float(v)) else math.nan)
    return out


def trial_start(rows: list[dict[str, Any]]) -> float:
    """A trial's start (epoch seconds): the latest ``timestamp - time_total_s`` of its
    reports (``timestamp`` is truncated to whole seconds, so the latest is the tightest)."""
    if not rows:
        raise ValueError("trial_start: a trial without reports has no start")
    return max(float(r["timestamp"]) - float(r["time_total_s"]) for r in rows)


def report_times(rows: list[dict[str, Any]]) -> list[float]:
    """Each report's time (epoch seconds): the trial's start plus its ``time_total_s``."""
    start = trial_start(rows)
    return [start + float(r["time_total_s"]) for r in rows]


def max_overlap(spans: Iterable[tuple[float, float]]) -> int:
    """Most spans ``(start, end)`` open at one time; one ending when another starts does not
    overlap it. Applied to trials' (start, last report), a lower bound of the concurrency
    the campaign actually ran at."""
    spans = list(spans)
    marks = sorted([(e, -1) for _, e in spans] + [(s, 1) for s, _ in spans])
    most = now = 0
    for _, step in marks:
        now += step
        most = max(most, now)
    return most


def campaign_record(histories: dict[str, list[dict[str, Any]]], metric: str,
                    mode: str) -> dict[str, Any]:
    """Best value, epochs and times of one campaign from its trials' report histories.

    Parameters
    ----------
    histories : dict[str, list[dict]]
        Trial id -> its reports, each with ``metric``, ``timestamp``, ``time_total_s`` and
        ``training_iteration``. Trials without reports are counted but have no times.
    metric, mode : str
        The tuned metric and ``"max"`` / ``"min"``.

    Returns
    -------
    dict
        ``best`` (best report of any trial; NaN without one), ``epochs`` (sum of each
        trial's last ``training_iteration``), ``trials``, ``start`` (earliest trial start),
        ``trials_s`` (start to the last report), ``overlap`` (:func:`max_overlap` of the
        trials' start to last report) and ``events``: ``[seconds since start, value]`` of
        every report with a finite value, in time order.
    """
    if mode not in ("max", "min"):
        raise ConfigError(f"mode: expected 'max' or 'min', got {mode!r}")
    events, epochs, starts, ends = [], 0, [], []        # starts/ends: per trial
    for rows in histories.values():
        if not rows:
            continue
        epochs += int(max(int(r.get("training_iteration") or 0) for r in rows) or len(rows))
        starts.append(trial_start(rows))
        times = report_times(rows)
        ends.append(max(times))
        events += [(t, v) for t, v in zip(times, _values(rows, metric)) if not math.isnan(v)]
    if not starts:
        return {"best": math.nan, "epochs": 0, "trials": len(histories), "start": math.nan,
                "trials_s": math.nan, "overlap": 0, "events": []}
    start = min(starts)
    values = [v for _, v in events]
    best = (max(values) if mode == "max" else min(values)) if values else math.nan
    return {"best": best, "epochs": epochs, "trials": len(histories), "start": start,
            "trials_s": max(ends) - start, "overlap": max_overlap(zip(starts, ends)),
            "events": [[t - start, v] for t, v in sorted(events)]}


def time_to_target(events: Iterable[Iterable[float]], target: float, mode: str) -> float:
    """Seconds from the first trial start to the first report at or past ``target``
    (``math.inf`` if none); ``events`` as in :func:`campaign_record`."""
    hits = [t for t, v in events if _better(v, target, mode)]
    return min(hits) if hits else math.inf


def choose_target(bests: Iterable[float], mode: str = "max") -> float:
    """The bar both methods are timed against: the median of the campaigns' best values
    (NaNs ignored), taken on the easier side for an even count (the lower of the middle
    two for ``max``), so it is a value some campaign reached and at least half reach it."""
    if mode not in ("max", "min"):
        raise ConfigError(f"mode: expected 'max' or 'min', got {mode!r}")
    finite = [b for b in bests if not math.isnan(b)]
    if not finite:
        raise ValueError("choose_target: no campaign reported a finite best value")
    pick = statistics.median_low if mode == "max" else statistics.median_high
    return float(pick(finite))


def expected_time(times: list[float], spent: list[float]) -> float:
    """Expected running time to the target (ERT): the time of the campaigns that reached it
    plus ``spent`` of those that did not, over the number that reached it (``math.inf``
    if none did)."""
    reached = [t for t in times if math.isfinite(t)]
    if not reached:
        return math.inf
    lost = sum(s for t, s in zip(times, spent) if not math.isfinite(t))
    return (sum(reached) + lost) / len(reached)


def method_summary(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method: mean best, mean epochs, mean search seconds, ERT and reached count.

    ``records`` carry ``method``, ``best``, ``epochs``, ``trials_s`` and
    ``time_to_target`` (after :func:`time_to_target`).
    """
    out: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(r["method"] for r in records):
        mine = [r for r in records if r["method"] == method]
        ttt = [r["time_to_target"] for r in mine]
        out[method] = {
            "campaigns": len(mine), "best": statistics.fmean(r["best"] for r in mine),
            "epochs": statistics.fmean(r["epochs"] for r in mine),
            "trials_s": statistics.fmean(r["trials_s"] for r in mine),
            "reached": sum(math.isfinite(t) for t in ttt),
            "time_to_target": expected_time(ttt, [r["trials_s"] for r in mine])}
    return out


def _ratio(a: float, b: float) -> float:
    """``a / b`` with inf/inf and 0/0 undefined (NaN), x/0 infinite and x/inf zero."""
    if (math.isinf(a) and math.isinf(b)) or (a == 0 and b == 0) or math.isnan(a + b):
        return math.nan
    if b == 0 or math.isinf(a):
        return math.inf
    return a / b


def ratios(summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Optuna vs random: ``best`` (optuna / random), ``time_to_target`` (random / optuna:
    > 1 means Optuna + ASHA reached the target sooner), ``epochs`` (random / optuna), and
    ``headline``: the time-to-target ratio if finite, else the epochs ratio."""
    o, r = summary["optuna"], summary["random"]
    out = {"best": _ratio(o["best"], r["best"]),
           "time_to_target": _ratio(r["time_to_target"], o["time_to_target"]),
           "epochs": _ratio(r["epochs"], o["epochs"])}
    finite = math.isfinite(out["time_to_target"])
    out["headline"] = "time_to_target" if finite else "epochs"
    out["ratio"] = out[out["headline"]]
    return out


def _json_safe(value: Any) -> Any:
    """Non-finite floats -> None (JSON has no inf/NaN), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# -- running the campaigns (Ray) ------------------------------------------------------------

def histories(exp: str | Path, metric: str) -> dict[str, list[dict[str, Any]]]:
    """Trial id -> its reports (``metric``, ``timestamp``, ``time_total_s``,
    ``training_iteration``) from the Tune experiment in ``exp``."""
    from ray.tune import ExperimentAnalysis

    keep = [metric, "timestamp", "time_total_s", "training_iteration"]
    frames = ExperimentAnalysis(str(Path(exp).resolve())).trial_dataframes
    return {tid: df[[c for c in keep if c in df]].to_dict("records") if len(df) else []
            for tid, df in frames.items()}


def run_one(config: Path, features: Path, storage: Path, method: str, seed: int,
            trials: int, epochs: int) -> dict[str, Any]:
    """One campaign of ``method`` with ``seed``; its record (without time-to-target):
    :func:`campaign_record` plus ``concurrency`` (planned), ``status`` (trial counts),
    ``promoted`` (the promoted trial's last value), ``campaign_s`` (all of
    :func:`run_campaign`), ``setup_s`` (call to first trial start: prefix stage, Tune
    start) and ``promote_s`` (last report to return: teardown, classifier, copy)."""
    from emoray.tune.campaign import load_campaign, resolve_campaign, run_campaign

    name = f"s{seed}-{method}"
    cfg = resolve_campaign(config, {"train.features": str(features)},
                           [f"tune.name={name}", f"tune.storage={storage}", f"tune.seed={seed}",
                            f"tune.num_samples={trials}", f"tune.max_concurrent={CONCURRENCY}",
                            f"train.stages.inter.epochs={epochs}", *METHODS[method]])
    print(f"bench tune: campaign {name} ({trials} trials x {epochs} epochs, "
          f"{' '.join(METHODS[method])})", flush=True)
    called = time.time()
    out = run_campaign(cfg, echo=lambda line: print(f"  [{name}] {line}", flush=True))
    ended = time.time()
    rec = campaign_record(histories(out["exp"], cfg.tune.metric), cfg.tune.metric,
                          cfg.tune.mode)
    conc = load_campaign(name, str(storage)).concurrency
    rec.update(method=method, seed=seed, name=name, metric=cfg.tune.metric,
               mode=cfg.tune.mode, concurrency=conc, status=out["trials"],
               promoted=out["best"]["value"], campaign_s=out["seconds"],
               setup_s=rec["start"] - called, promote_s=ended - rec["start"] - rec["trials_s"])
    print(f"bench tune: {name}: best {rec['best']:.4f}, {rec['epochs']} epochs, search "
          f"{rec['trials_s']:.0f} s of {rec['campaign_s']:.0f} s", flush=True)
    return rec


def run_benchmark(quick: bool = False, out_dir: str | Path = "benchmarks/results",
                  ray_cfg: RayConfig | None = None, features: str | Path | None = None,
                  seeds: int | None = None, trials: int | None = None,
                  epochs: int | None = None, config: str | Path | None = None
                  ) -> dict[str, Any]:
    """Run both methods per seed, print the table, write ``OUT_DIR/tune.json``.

    Parameters
    ----------
    quick : bool
        Defaults 1 seed x 4 trials x 3 inter epochs (else 3 seeds x 8 trials x 6 epochs)
        and the small synthetic corpus.
    out_dir : str | Path
        Folder of the JSON result.
    ray_cfg : RayConfig | None
        How to start or join Ray; the dashboard is turned on (RAY.md trap 3). Default: an
        embedded local Ray of 2 CPUs.
    features : str | Path | None
        A preprocess output folder to reuse instead of generating one.
    seeds, trials, epochs : int | None
        Seeds (campaign pairs), trials per campaign, epochs of the tuned inter stage.
    config : str | Path | None
        The campaign file (default ``configs/tune/cca-tiny.yaml``).

    Raises
    ------
    ConfigError
        A count below 1 (2 for ``epochs``: ASHA needs a rung), or no campaign file.
    DataError
        ``features`` is not a folder of feature shards.
    """
    from benchmarks.train import make_features
    from emoray.data.features import feature_metadata

    seeds = seeds if seeds is not None else (1 if quick else 3)
    trials = trials if trials is not None else (4 if quick else 8)
    epochs = epochs if epochs is not None else (3 if quick else 6)
    for field, value, low in (("seeds", seeds, 1), ("trials", trials, 1), ("epochs", epochs, 2)):
        if value < low:
            raise ConfigError(f"{field}: expected >= {low}, got {value}")
    config = Path(config) if config is not None else CONFIG
    if not config.is_file():
        raise ConfigError(f"config: the campaign file {config} does not exist")
    if features is not None:
        feature_metadata(Path(features))          # a bad folder fails before Ray starts
    ray_cfg = (ray_cfg or RayConfig(num_cpus=2)).model_copy(update={"include_dashboard": True})
    work = Path(tempfile.mkdtemp(prefix="emoray-bench-tune-"))
    load = {"before": os.getloadavg()}
    start_ray(ray_cfg, out_dir, "tune")
    records = []
    try:
        feat = (Path(features).resolve() if features is not None
                else make_features(work, quick, "tune"))
        for i, seed in enumerate(range(seeds)):
            order = list(METHODS) if i % 2 == 0 else list(METHODS)[::-1]
            for method in order:
                rec = run_one(config, feat, work / "campaigns", method, seed, trials, epochs)
                rec["order"] = order.index(method) + 1
                records.append(rec)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load["after"] = os.getloadavg()
    info = dict(quick=quick, seeds=list(range(seeds)), trials=trials, epochs=epochs,
                concurrency=CONCURRENCY, config=str(config), loadavg=load,
                features=str(features) if features is not None else "generated",
                methods={m: " ".join(o) for m, o in METHODS.items()})
    return report(records, out_dir, info)


def report(records: list[dict[str, Any]], out_dir: str | Path,
           info: dict[str, Any]) -> dict[str, Any]:
    """Choose the target, time each campaign to it, print the table and ratios, write the
    JSON and print the closing line; returns the figures."""
    mode = records[0]["mode"]
    target = choose_target([r["best"] for r in records], mode)
    for r in records:
        r["time_to_target"] = time_to_target(r["events"], target, mode)
    summary = method_summary(records)
    rat = ratios(summary)

    def cell(v: float, fmt: str = ".1f") -> str:
        return "never" if math.isinf(v) else ("-" if math.isnan(v) else format(v, fmt))

    rows = [{"campaign": r["name"], "order": r["order"], "best": cell(r["best"], ".4f"),
             "epochs": r["epochs"], "search s": cell(r["trials_s"]),
             "to target s": cell(r["time_to_target"]), "campaign s": cell(r["campaign_s"]),
             "at once": r["overlap"],
             "trials": ", ".join(f"{n} {s.lower()}" for s, n in sorted(r["status"].items()))}
            for r in records]
    rows += [{"campaign": f"{m} (mean)", "best": cell(s["best"], ".4f"),
              "epochs": f"{s['epochs']:.1f}", "search s": cell(s["trials_s"]),
              "to target s": f"{cell(s['time_to_target'])} (ERT, {s['reached']}/"
                             f"{s['campaigns']} reached)"} for m, s in summary.items()]
    print(table(rows, ["campaign", "order", "best", "epochs", "search s", "to target s",
                       "campaign s", "at once", "trials"]))
    unequal = [r["name"] for r in records if r["overlap"] > CONCURRENCY]
    if unequal:
        print(f"WARNING: {unequal} ran more than {CONCURRENCY} trials at once (column 'at "
              f"once': most trials between start and last report at one time); the methods "
              f"were not compared at equal concurrency")
    sign = ">=" if mode == "max" else "<="
    print(f"target {records[0]['metric']} {sign} {target:.4f} (median of the campaigns' "
          f"best, easier side); ratios: best optuna/random {rat['best']:.3f}, time to target "
          f"random/optuna {rat['time_to_target']:.2f}, epochs random/optuna "
          f"{rat['epochs']:.2f}; load average before/after {info['loadavg']['before'][0]:.1f}"
          f"/{info['loadavg']['after'][0]:.1f}")
    if not math.isfinite(rat["ratio"]):
        raise RuntimeError(f"bench tune: no usable ratio ({rat})")
    if rat["headline"] != "time_to_target":
        print("time to target is undefined for a method that never reached it; the headline "
              "ratio is the epochs ratio")
    for r in records:
        r.pop("start")
    details = dict(info, target_metric=target, metric=records[0]["metric"], mode=mode,
                   campaigns=records, summary=summary, ratios=rat,
                   headline=rat["headline"], over_concurrency=unequal)
    path = write_result(out_dir, "tune", round(rat["ratio"], 3), TARGET, _json_safe(details))
    print(f"wrote {path}")
    print(f"tune: ratio {rat['ratio']:.2f} (target {TARGET})")
    return dict(rat, target_metric=target, summary=summary, records=records, path=str(path))


def main(argv: list[str] | None = None) -> None:
    """The command line of ``python benchmarks/tune.py``."""
    parser = runner_parser(__doc__)
    parser.add_argument("--seeds", type=int, help="campaign pairs (default 1 quick, 3 full)")
    parser.add_argument("--trials", type=int, help="trials per campaign (default 4 / 8)")
    parser.add_argument("--epochs", type=int, help="epochs of the tuned inter stage (3 / 6)")
    args = parser.parse_args(argv)
    run_benchmark(quick=args.quick, out_dir=args.out, features=args.features,
                  seeds=args.seeds, trials=args.trials, epochs=args.epochs)


if __name__ == "__main__":
    main()
