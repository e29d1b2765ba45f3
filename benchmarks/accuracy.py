"""Do the models learn? The shipped plan against a linear probe on the same split:
``python benchmarks/accuracy.py [--quick]`` (or ``emoray bench accuracy``).

One synthetic corpus in real formats (full: 6 subjects x 8 trials per class x 20 s,
5 s segments; ``--quick``: 4 x 3 x 10 s) is ingested and preprocessed once. On it:

* **deep**: the quickstart plan (``configs/data/quickstart.yaml``: JMML intra -> inter ->
  classifier and the attention fusion, tiny presets; ``--plan FILE`` for another) is
  trained and evaluated with ``emoray evaluate``'s machinery: within subject (split by
  trial) over 3 seeds (``--quick``: 1) and leave-subjects-out over 3 folds (``--quick``: 2);
* **probe**: logistic regression on fixed hand features (:mod:`benchmarks._probe`) on
  exactly the same train/validation records of every split, late-fused by averaged
  probabilities;
* **incongruence**: the fused model's expressed (speech + face) vs EEG divergence on each
  validation trial, sent whole, against the corpus's ground truth ``acted`` flag (ROC AUC);
* **repeatability**: the fusion stage trained once more with the first seed in a fresh
  folder, its fused accuracy beside the evaluation's for that seed;
* the JMML ablation (speech and EEG macro-F1 for raw features, JEC-SSL, JMML) as
  ``emoray evaluate`` reports it.

The deep part's (seed, fold) plans, the run's own seed among them, and the encoder
comparison's runs go ``parallel`` at a time (Ray tasks, as ``emoray evaluate --parallel``;
full: 2, ``--quick``: 3). On 2 cores a tiny run is CPU-bound on Ray Train's own actors
(about 30 s of CPU each), so the pool fills idle gaps rather than multiplying throughput
(docs/benchmarks.md, Accuracy). Runs beside each other share the CPUs, not data or seeds: on the quick
corpus each protocol's accuracies came out the same whether the run's own seed trained alone
first or beside the folds.

The table gives, per protocol, mean ± std over seeds and a 95 % interval (a t interval
over seeds, or a binomial one for a single run). The headline ratio is deep fused accuracy
over probe fused accuracy within subject; the last line is
``accuracy: ratio R (target 1.05)``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):      # run as a script (python benchmarks/NAME.py): the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # makes `benchmarks` importable

import json
import math
import shutil
import tempfile
import time
from typing import Any

import numpy as np

from benchmarks._encoders import ENCODERS, collect, encoder_ratio, encoder_runs
from benchmarks._incongruence import incongruence_auc
from benchmarks._probe import MODALITIES, load_table, run_probe
from benchmarks._runner import runner_parser, start_ray, table, write_result

TARGET = 1.05
PARTS = ("deep", "encoders")
FULL = {"subjects": 6, "trials_per_class": 8, "seconds": 20.0, "seeds": [0, 1, 2],
        "folds": 3, "encoder_preset": "small", "parallel": 2}
QUICK = {"subjects": 4, "trials_per_class": 3, "seconds": 10.0, "seeds": [0], "folds": 2,
         "encoder_preset": "tiny", "encoder_epochs": 4, "parallel": 3}
#: the raw EEG column kept in volts, so that the encoder comparison's per-subject
#: standardisation (subject_norm: [eeg]) keeps band power and topography; the shipped plan
#: reads band power, computed before this step, so it is unaffected
ENCODER_CONTRACT = ["preprocess.contract.eeg.normalize=none"]
#: t quantiles (0.975) by degrees of freedom, for intervals over seeds
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}


def interval(values: list[float], n_records: int) -> tuple[float, float, float, float]:
    """``(mean, std, low, high)``: a t interval over seeds, or for one value a normal
    binomial interval over its ``n_records`` validation records."""
    v = np.asarray(values, dtype=float)
    mean = float(v.mean())
    if len(v) > 1:
        std = float(v.std(ddof=1))
        half = _T975.get(len(v) - 1, 1.96) * std / math.sqrt(len(v))
    else:
        std = 0.0
        half = 1.96 * math.sqrt(max(mean * (1 - mean), 1e-12) / max(n_records, 1))
    return mean, std, max(0.0, mean - half), min(1.0, mean + half)


def make_features(work: Path, sizes: dict[str, Any], plan: str | None, ray_cfg=None,
                  overrides: list[str] | None = None, out_dir: str | Path = "benchmarks/results"):
    """The corpus, records and features under ``work``; returns ``(cfg, corpus, features)``.
    ``overrides`` are ``--set`` overrides of the config (e.g. a contract or stage field);
    Ray's log goes under ``out_dir`` (:func:`benchmarks._runner.start_ray`)."""
    from emoray.cli.quickstart import quickstart_config
    from emoray.data.ingest import run_ingest
    from emoray.data.preprocess import run_preprocess
    from emoray.synth.corpus import write_corpus

    sets = [f"synth.subjects={sizes['subjects']}",
            f"synth.trials_per_class={sizes['trials_per_class']}",
            f"synth.seconds={sizes['seconds']}"]
    cfg = quickstart_config(plan, sets + list(overrides or []))
    if ray_cfg is not None:
        cfg.ray = ray_cfg
    corpus, records, features = work / "corpus", work / "records", work / "features"
    start_ray(cfg.ray, out_dir, "accuracy")      # first: Ray's processes start beside synth
    write_corpus(cfg.synth, corpus)
    quiet = lambda *_: None                                            # noqa: E731
    run_ingest(cfg.ingest.model_copy(update={"source": str(corpus), "output": str(records)}),
               echo=quiet)
    run_preprocess(cfg.preprocess.model_copy(update={"input": str(records),
                                                     "output": str(features)}), echo=quiet)
    return cfg, corpus, features


def deep(cfg, features: Path, work: Path, seeds: list[int], folds: int,
         parallel: int = 2) -> dict[str, Any]:
    """Train the plan and evaluate it within subject and leave-subjects-out: every (seed,
    fold) plan, the run's own seed among them, in one pool of ``parallel`` concurrent runs
    (``emoray evaluate --parallel``)."""
    from emoray.train.evaluate import evaluate_protocols
    from emoray.train.plan import run_dir

    train = cfg.train.model_copy(update={"features": str(features),
                                         "output": str(work / "train")})
    plan_cfg = cfg.model_copy(update={"train": train})
    quiet = lambda *_: None                                            # noqa: E731
    return evaluate_protocols(run_dir(plan_cfg), {"within-subject": (seeds, None),
                                                  "loso": (seeds[:1], folds)},
                              cfg=plan_cfg, echo=quiet, parallel=parallel)


def repeat_call(cfg, features: Path, work: Path, seed: int) -> tuple[tuple, dict]:
    """The ``train_fusion`` call (``(args, kwargs)``) that trains the plan's fusion stage
    once more with ``seed`` on the within-subject split, in a fresh run folder: what a
    user re-running the same config gets."""
    from emoray.config import SplitConfig

    stage = cfg.train.stages["fusion"].model_copy(update={"seed": seed})
    return ((features, work / "repeat", stage),
            {"name": f"repeat-seed{seed}",
             "split": SplitConfig(fraction=cfg.train.split.fraction)})


def repeat_fusion(cfg, features: Path, work: Path, seed: int) -> dict[str, Any]:
    """Run :func:`repeat_call` here; its metrics."""
    from emoray.train.stages.fusion import train_fusion

    args, kwargs = repeat_call(cfg, features, work, seed)
    return train_fusion(*args, **kwargs)["metrics"]


def _repeated(repeat: dict[str, Any], again: float) -> None:
    """Fill the repeatability entry with the second run's fused accuracy."""
    first = repeat["first"]
    repeat.update(again=again, diff=None if first is None else abs(again - first))


def unit_split(features: Path, unit: dict[str, Any]) -> tuple[set[str], set[str]]:
    """The train and validation record ids of one evaluation unit (a seed or a fold)."""
    from emoray.config import SplitConfig
    from emoray.data.shards import shard_files
    from emoray.train.split import split_records

    split = (SplitConfig(protocol="subjects", val_subjects=unit["val_subjects"])
             if unit.get("val_subjects") else SplitConfig())
    return split_records(shard_files(features), split, str(features))


def _per_seed(report: dict[str, Any], seed: int) -> float | None:
    """The fused accuracy of one seed in an evaluation report."""
    fused = next((r for r in report.get("fusion", []) if r["model"] == "fused"), None)
    per = (fused or {}).get("acc", {}).get("per_seed", {})
    value = per.get(seed, per.get(str(seed)))
    return None if value is None else float(value)


def _rows(deep_reports: dict[str, Any], probes: dict[str, list[dict]]) -> list[dict[str, str]]:
    rows = []
    for protocol, report in deep_reports.items():
        deep_rows = {r["model"]: r["acc"] for r in report.get("fusion", [])}
        for model in ("fused", *MODALITIES):
            stat = deep_rows.get(model)
            probe = [p[model]["acc"] for p in probes[protocol] if model in p]
            n = sum(p[model]["n"] for p in probes[protocol] if model in p)
            row = {"protocol": protocol, "model": model}
            if stat:
                m, s, lo, hi = interval(list(stat["per_seed"].values()), n)
                row.update(deep=f"{100 * m:.1f} ± {100 * s:.1f}",
                           deep_ci=f"[{100 * lo:.1f}, {100 * hi:.1f}]")
            if probe:
                pm = float(np.average(probe, weights=[p[model]["n"] for p in probes[protocol]
                                                      if model in p]))
                _, _, lo, hi = interval([pm], n)
                row.update(probe=f"{100 * pm:.1f}", probe_ci=f"[{100 * lo:.1f}, {100 * hi:.1f}]")
            rows.append(row)
    return rows


def _jmml_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    jm = report.get("jmml") or {}
    out = []
    for r in jm.get("rows", []):
        row = {"modality": r["modality"], "method": r["method"]}
        for t in jm.get("targets", []):
            s = r.get(t)
            row[t] = f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}" if s else "-"
        out.append(row)
    return out


def _encoder_rows(rows: list[dict[str, Any]], probe: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    for r in rows:
        row = {"modality": r["modality"], "encoder": r["encoder"], "preset": r["preset"]}
        if r.get("error"):
            row["acc"] = f"refused: {r['error']}"
        elif r["acc"]:
            m, s, lo, hi = interval(r["acc"], r.get("n_val", 0))
            row.update(acc=f"{100 * m:.1f} ± {100 * s:.1f}",
                       ci=f"[{100 * lo:.1f}, {100 * hi:.1f}]", seconds=f"{r['seconds']:.0f}")
        if r["modality"] in probe:
            row["probe"] = f"{100 * probe[r['modality']]['acc']:.1f}"
        out.append(row)
    return out


def run_benchmark(quick: bool = False, out_dir: str | Path = "benchmarks/results",
                  ray_cfg=None, plan: str | None = None, keep: bool = False,
                  overrides: list[str] | None = None,
                  parts: tuple[str, ...] = PARTS,
                  encoder_modalities: tuple[str, ...] = tuple(ENCODERS),
                  encoder_preset: str | None = None,
                  parallel: int | None = None) -> dict[str, Any]:
    """Run the benchmark's ``parts`` (``deep``: the shipped plan vs the probe, JMML,
    incongruence, repeatability; ``encoders``: the encoder comparison, on
    ``encoder_modalities``, at ``encoder_preset``: default ``small``, ``--quick`` ``tiny``)
    on one corpus."""
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise ValueError(f"parts: expected some of {list(PARTS)}, got {list(parts)}")
    if not encoder_modalities or set(encoder_modalities) - set(ENCODERS):
        raise ValueError(f"encoder modalities: expected some of {list(ENCODERS)}, got "
                         f"{list(encoder_modalities)}")
    sizes = dict(QUICK if quick else FULL)
    if encoder_preset:
        sizes["encoder_preset"] = encoder_preset
    if parallel is not None:
        if parallel < 1:
            raise ValueError(f"parallel: expected a number of runs >= 1, got {parallel}")
        sizes["parallel"] = parallel
    work = Path(tempfile.mkdtemp(prefix="emoray-bench-accuracy-"))
    times: dict[str, float] = {}
    details: dict[str, Any] = {"sizes": sizes, "quick": quick, "parts": list(parts),
                               "overrides": list(overrides or [])}
    try:
        t = time.perf_counter()
        cfg, corpus, features = make_features(work, sizes, plan, ray_cfg,
                                              [*ENCODER_CONTRACT, *(overrides or [])], out_dir)
        times["data"] = time.perf_counter() - t
        data = load_table(features)
        # with both parts, the repeat run joins the encoder comparison's pool (its
        # last round has idle room), else it runs at the end of the deep part
        both = "deep" in parts and "encoders" in parts
        if "deep" in parts:
            details.update(_deep_part(cfg, corpus, features, work, sizes, data, times,
                                      repeat_now=not both))
        if "encoders" in parts:
            details["encoders"] = _encoders_part(cfg, features, work, sizes, data, times,
                                                 encoder_modalities, details.get("repeat"))
        details["seconds"] = times
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return _report(details, out_dir)


def _encoders_part(cfg, features: Path, work: Path, sizes: dict[str, Any],
                   data: dict[str, Any], times: dict[str, float],
                   modalities: tuple[str, ...], repeat: dict[str, Any] | None
                   ) -> dict[str, Any]:
    """The encoder comparison against the probe; ``repeat``, the deep part's repeatability
    entry still to run, goes first into the same pool (the longest run first) and is
    filled here (``times["repeat"]``: its own run's wall time, within the encoders')."""
    from emoray.errors import EmorayError
    from emoray.runtime import run_concurrently
    from emoray.train.stages.fusion import train_fusion

    t = time.perf_counter()
    probe = run_probe(data, *unit_split(features, {}))
    rows, calls, owner = encoder_runs(cfg, features, work, sizes["seeds"],
                                      preset=sizes["encoder_preset"],
                                      epochs=sizes.get("encoder_epochs"),
                                      encoders={m: ENCODERS[m] for m in modalities})
    if repeat:
        calls.insert(0, repeat_call(cfg, features, work, repeat["seed"]))
    outcomes = run_concurrently(train_fusion, calls, sizes["parallel"],
                                keep_errors=(EmorayError,))
    if repeat:
        out, times["repeat"] = outcomes.pop(0)
        if isinstance(out, Exception):
            raise out
        _repeated(repeat, out["metrics"]["val_acc"])
    rows = collect(rows, owner, outcomes)
    label, ratio = encoder_ratio(rows) or (None, None)
    times["encoders"] = time.perf_counter() - t
    return {"rows": rows, "probe": probe, "table": _encoder_rows(rows, probe),
            "ratio": ratio, "ratio_of": label}


def _deep_part(cfg, corpus: Path, features: Path, work: Path, sizes: dict[str, Any],
               data: dict[str, Any], times: dict[str, float],
               repeat_now: bool = True) -> dict[str, Any]:
    """The shipped plan against the probe (both protocols), repeatability, incongruence
    (``repeat_now`` False: the repeat entry is left for the caller to run and fill)."""
    from emoray.train.plan import read_state

    t = time.perf_counter()
    reports = deep(cfg, features, work, sizes["seeds"], sizes["folds"], sizes["parallel"])
    times["deep"] = time.perf_counter() - t
    repeat = None
    if "fusion" in cfg.train.stages:
        seed = sizes["seeds"][0]
        repeat = {"seed": seed, "first": _per_seed(reports["within-subject"], seed),
                  "again": None, "diff": None}
        if repeat_now:
            t = time.perf_counter()
            _repeated(repeat, repeat_fusion(cfg, features, work, seed)["val_acc"])
            times["repeat"] = time.perf_counter() - t
    t = time.perf_counter()
    probes: dict[str, list[dict]] = {}
    splits: dict[str, list] = {}
    for protocol, report in reports.items():
        units = report["units"] if protocol == "loso" else report["units"][:1]
        splits[protocol] = [unit_split(features, u) for u in units]
        probes[protocol] = [run_probe(data, tr, va) for tr, va in splits[protocol]]
    times["probe"] = time.perf_counter() - t
    t = time.perf_counter()
    within = reports["within-subject"]
    aucs = []
    for unit in within["units"]:
        bundle = (read_state(unit["run_dir"])["stages"].get("fusion") or {}).get("bundle")
        if bundle:
            aucs.append(incongruence_auc(bundle, features, splits["within-subject"][0][1],
                                         corpus))
    times["incongruence"] = time.perf_counter() - t
    deep_fused = next(r for r in within["fusion"] if r["model"] == "fused")["acc"]["mean"]
    probe_fused = probes["within-subject"][0]["fused"]["acc"]
    auc_values = [a["auc"] for a in aucs if a["auc"] is not None]
    return {"rows": _rows(reports, probes), "jmml": _jmml_rows(within), "incongruence": aucs,
            "incongruence_auc": float(np.mean(auc_values)) if auc_values else None,
            "repeat": repeat, "deep_fused": deep_fused, "probe_fused": probe_fused,
            "ratio": deep_fused / max(probe_fused, 1e-9),
            "reports": {p: {k: v for k, v in r.items() if k != "units"}
                        for p, r in reports.items()},
            "probe": probes}


def _report(details: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Print the tables, write the JSON; the last line is the headline ratio."""
    times = details["seconds"]
    if "rows" in details:
        print(table(details["rows"], ["protocol", "model", "deep", "deep_ci", "probe",
                                      "probe_ci"]))
        if details["jmml"]:
            targets = [k for k in details["jmml"][0] if k not in ("modality", "method")]
            print("\nJMML ablation, macro-F1 within subject (mean ± std over seeds)")
            print(table(details["jmml"], ["modality", "method", *targets]))
        auc = details["incongruence_auc"]
        print(f"\nincongruence ROC AUC on acted trials: "
              f"{'-' if auc is None else f'{auc:.3f}'} (target 0.75)")
        repeat = details["repeat"]
        if repeat and repeat["diff"] is not None:
            print(f"same seed twice ({repeat['seed']}): fused {100 * repeat['first']:.1f} "
                  f"then {100 * repeat['again']:.1f}, |diff| {100 * repeat['diff']:.1f} "
                  f"points (target <= 2)")
    enc = details.get("encoders")
    if enc:
        print("\nencoders, one modality alone, within subject (mean ± std over seeds; probe: "
              "the linear probe of that modality on the same split)")
        print(table(enc["table"], ["modality", "encoder", "preset", "acc", "ci", "probe",
                                   "seconds"]))
        if enc["ratio"] is not None:
            print(f"{enc['ratio_of']}: {enc['ratio']:.2f} (target >= 1.0)")
    inside = "encoders" in times and "deep" in times     # the repeat ran in their pool
    print("seconds: " + ", ".join(f"{k} {v:.0f}" + (" (within encoders)" if inside and
                                                    k == "repeat" else "")
                                  for k, v in times.items()))
    if "ratio" in details:
        name, ratio, target = "accuracy", details["ratio"], TARGET
    else:                                    # the encoder comparison alone
        name, ratio, target = "accuracy-encoders", enc["ratio"] or 0.0, 1.0
    path = write_result(out_dir, name, ratio, target, json.loads(json.dumps(
        details, default=float)))
    print(f"wrote {path}")
    print(f"{name}: ratio {ratio:.2f} (target {target})")
    return details


def main(argv: list[str] | None = None) -> None:
    """The command line of ``python benchmarks/accuracy.py``."""
    parser = runner_parser(__doc__)
    parser.add_argument("--plan", help="a training plan YAML instead of the quickstart's")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config field of the run, e.g. "
                        "preprocess.contract.eeg.normalize=global (repeatable)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated parts to run, of {','.join(PARTS)}")
    parser.add_argument("--encoder-modalities", default=",".join(ENCODERS),
                        help="the modalities of the encoder comparison, of "
                        f"{','.join(ENCODERS)}")
    parser.add_argument("--encoder-preset", choices=("tiny", "small", "base"),
                        help="the encoders' preset in the comparison (default: small; "
                        "--quick: tiny)")
    parser.add_argument("--parallel", type=int, help="training runs at a time (default: 2; "
                        "--quick: 3)")
    args = parser.parse_args(argv)
    run_benchmark(quick=args.quick, out_dir=args.out, plan=args.plan, keep=args.keep,
                  overrides=args.overrides, parts=tuple(p for p in args.parts.split(",") if p),
                  encoder_modalities=tuple(m for m in args.encoder_modalities.split(",") if m),
                  encoder_preset=args.encoder_preset, parallel=args.parallel)


if __name__ == "__main__":
    main()
