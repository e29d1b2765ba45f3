"""``emoray evaluate``: the reports of a training run under an evaluation protocol.

Protocols (``--protocol``):

``within-subject``
    METHODS.md's split, by trial: per subject and class the first 70 % of trials train
    (every segment with its trial: a trial is never on both sides), the rest are scored. The run itself is the first seed; more seeds re-run the plan.
``loso``
    Leave subjects out: the subjects are dealt into ``folds`` groups (default: one subject
    per fold); each fold trains the plan on the other subjects and scores the held-out ones.

Every (seed, fold) is a plan run of its own under ``RUN/eval/<protocol>/`` (so an
interrupted evaluation resumes, finished stages are skipped). The scores are the metrics
of each stage's final bundle on its held-out records: fused and per-modality accuracy /
macro-F1 for the fusion stage; for JMML the classifier stage's ablation (raw features,
JEC-SSL embeddings, full JMML) for speech and EEG, per target. Per seed, the folds are
averaged weighted by the records each scored; the report gives mean and standard
deviation over seeds, as ``report.json`` and ``report.md`` in the evaluation folder.
Each protocol is an MLflow run (:func:`~emoray.train.mlflow_runs.evaluation_run`) with its
(seed, fold) plan runs nested under it.

A single checkpoint (a bundle folder) is scored on the within-subject validation records
of ``--features`` (default: the features of the run it belongs to), in the driver.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from emoray.config import EmorayConfig, SplitConfig, dump, resolve
from emoray.errors import ConfigError

PROTOCOLS = ("within-subject", "loso")
#: JMML ablation rows: (modality, method, representation key in the classifier metrics)
ABLATION = [("speech", "raw features", "raw_speech"), ("speech", "JEC-SSL", "jec_speech"),
            ("speech", "JMML", "speech_only"), ("eeg", "raw features", "raw_eeg"),
            ("eeg", "JEC-SSL", "jec_eeg"), ("eeg", "JMML", "eeg_only"),
            ("speech+eeg", "JMML", "combined")]


def is_run(path: Path) -> bool:
    return (path / "config.yaml").is_file() and (path / "plan_state.json").is_file()


def folds_of(subjects: list[str], folds: int | None) -> list[list[str]]:
    """Deal ``subjects`` (sorted) into ``folds`` contiguous groups (default: one each)."""
    n = len(subjects) if folds is None else folds
    if n < 2 or n > len(subjects):
        raise ConfigError(f"--folds: expected 2..{len(subjects)} (the features have "
                          f"{len(subjects)} subjects: {subjects}), got {n}")
    return [list(g) for g in np.array_split(np.array(subjects, dtype=object), n)]


def _stage_seed(cfg: EmorayConfig) -> int:
    seeds = {getattr(s, "seed", 0) for s in cfg.train.stages.values()}
    return min(seeds) if seeds else 0


def unit_config(cfg: EmorayConfig, run: Path, protocol: str, seed: int,
                val_subjects: list[str] | None, fold: int | None) -> EmorayConfig:
    """The plan config of one (seed, fold): every stage's seed set, the split set, the run
    folder under ``RUN/eval/<protocol>`` (or the run itself for its own seed)."""
    sub = cfg.model_copy(deep=True)
    for stage in sub.train.stages.values():
        stage.seed = seed
        if getattr(stage, "from_checkpoint", None):
            raise ConfigError("evaluate: a plan whose stages start from an external "
                              "checkpoint (from_checkpoint) cannot be re-trained per "
                              "seed/fold; evaluate its bundle instead")
    if protocol == "within-subject":
        if seed == _stage_seed(cfg) and cfg.train.split.protocol == "within-subject":
            sub.train.output, sub.train.name = str(run.parent), run.name
            return sub
        sub.train.split = SplitConfig(fraction=cfg.train.split.fraction)
        name = f"seed{seed}"
    else:
        sub.train.split = SplitConfig(protocol="subjects", val_subjects=val_subjects)
        name = f"seed{seed}-fold{fold}"
    sub.train.output, sub.train.name = str(run / "eval" / protocol), name
    return sub


def evaluate_run(run: str | Path, protocol: str = "within-subject",
                 seeds: list[int] | None = None, folds: int | None = None,
                 features: str | None = None, cfg: EmorayConfig | None = None,
                 echo: Callable[[str], None] = print, parallel: int = 1,
                 tracker: Any = "config") -> dict[str, Any]:
    """Train/score the run's plan for every (seed, fold) and write the report.

    ``parallel > 1`` runs that many (seed, fold) plans at once, each driven by a Ray task
    (its stages' Train workers and Ray Data take the cluster's CPUs as usual); on small
    data most of a stage's time is start-up latency, which overlaps."""
    return evaluate_protocols(run, {protocol: (seeds, folds)}, features, cfg, echo,
                              parallel, tracker)[protocol]


def evaluate_protocols(run: str | Path, protocols: dict[str, tuple[list[int] | None,
                                                                   int | None]],
                       features: str | None = None, cfg: EmorayConfig | None = None,
                       echo: Callable[[str], None] = print, parallel: int = 1,
                       tracker: Any = "config") -> dict[str, dict[str, Any]]:
    """:func:`evaluate_run` for several protocols (``{protocol: (seeds, folds)}``), their
    (seed, fold) plans sharing one pool of ``parallel`` concurrent runs. ``tracker``: an
    open :class:`~emoray.tracking.Tracker`, None (no MLflow runs) or ``"config"`` (per
    ``cfg.tracking``, the store in the run's output root by default)."""
    from emoray.data.shards import shard_files
    from emoray.tracking import open_tracker
    from emoray.train.mlflow_runs import end_evaluation, evaluation_run
    from emoray.train.plan import plan_stages, run_plan
    from emoray.train.split import subjects_of

    run = Path(run).resolve()
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad:
        raise ConfigError(f"--protocol: expected one of {PROTOCOLS}, got {bad[0]!r}")
    cfg = cfg or resolve(run / "config.yaml")
    if features:
        cfg.train.features = str(features)
    plan_stages(cfg)
    if tracker == "config":
        t = cfg.tracking
        tracker = open_tracker(t.uri, t.experiment, run.parent) if t.enabled else None
    base = _stage_seed(cfg)
    todo, layout, mlflow_runs = [], {}, {}
    for protocol, (seeds, folds) in protocols.items():
        seeds = list(seeds) if seeds else [base, base + 1, base + 2]
        groups = (folds_of(subjects_of(shard_files(cfg.train.features)), folds)
                  if protocol == "loso" else [None])
        layout[protocol] = (seeds, groups)
        params = {"evaluate": {"protocol": protocol, "seeds": seeds, "folds": folds,
                               "run": str(run)},
                  **cfg.model_dump(mode="json", include={"ray", "train"})}
        mlflow_runs[protocol] = evaluation_run(tracker, run, protocol, params)
        for seed in seeds:
            for i, group in enumerate(groups):
                sub = unit_config(cfg, run, protocol, seed, group, i if group else None)
                where = f"seed {seed}" + (f", fold {i + 1}/{len(groups)} (held out: "
                                          f"{', '.join(group)})" if group else "")
                todo.append((protocol, {"seed": seed, "fold": i if group else None,
                                        "val_subjects": group},
                             sub, f"evaluate {protocol}: {where}"))
    nest = {p: (tracker, mlflow_runs[p]) if tracker else (None, None) for p in protocols}
    if parallel > 1 and len(todo) > 1:
        results = _run_concurrently([(sub, label, nest[p]) for p, _, sub, label in todo],
                                    parallel, echo)
    else:
        results = []
        for p, _, sub, label in todo:
            echo(label)
            results.append(run_plan(sub, echo=echo, tracking=nest[p]))
    reports = {}
    for protocol, (seeds, groups) in layout.items():
        units = [{**unit, "run_dir": result["run_dir"],
                  "metrics": {s: r["metrics"] for s, r in result["stages"].items()}}
                 for (p, unit, _, _), result in zip(todo, results) if p == protocol]
        reports[protocol] = _write_report(run, cfg, summarize(units, protocol, seeds, groups))
        end_evaluation(tracker, mlflow_runs[protocol], reports[protocol])
    return reports


def _write_report(run: Path, cfg: EmorayConfig, report: dict[str, Any]) -> dict[str, Any]:
    out_dir = run / "eval" / report["protocol"]
    out_dir.mkdir(parents=True, exist_ok=True)
    report["run"] = str(run)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=float))
    (out_dir / "report.md").write_text(format_report(report) + "\n")
    report["files"] = [str(out_dir / "report.json"), str(out_dir / "report.md")]
    dump(cfg, out_dir / "config.yaml", ["ray", "train"])
    return report


def _plan_task(tree: dict[str, Any], label: str, tracking: tuple) -> dict[str, Any]:
    """A Ray task: run one plan (config as a JSON tree) and return its results."""
    from emoray.console import remote_echo
    from emoray.train.plan import run_plan

    # its stages' lines reach the driver's console (the driver printed the label)
    return run_plan(EmorayConfig.model_validate(tree), echo=remote_echo, tracking=tracking)


def _run_concurrently(units: list[tuple[EmorayConfig, str, tuple]], parallel: int,
                      echo: Callable[[str], None]) -> list[dict[str, Any]]:
    from emoray.runtime import run_concurrently

    calls = [((sub.model_dump(mode="json"), label, tracking), {})
             for sub, label, tracking in units]
    started = lambda i, running: echo(f"{units[i][1]} (started, {running} running)")  # noqa: E731
    return [result for result, _ in run_concurrently(_plan_task, calls, parallel, started)]


# -- aggregation ----------------------------------------------------------------------

def _pooled(units: list[dict], stage: str, key: str, n_key: str | None) -> dict[int, float]:
    """seed -> the metric averaged over that seed's folds, weighted by ``n_key``."""
    by_seed: dict[int, list[tuple[float, float]]] = {}
    for u in units:
        m = u["metrics"].get(stage) or {}
        if key not in m:
            continue
        w = float(m.get(n_key, 1.0)) if n_key else 1.0
        by_seed.setdefault(u["seed"], []).append((float(m[key]), w))
    return {s: float(np.average([v for v, _ in vw], weights=[max(w, 1e-9) for _, w in vw]))
            for s, vw in by_seed.items()}


def _stat(per_seed: dict[int, float]) -> dict[str, Any] | None:
    if not per_seed:
        return None
    values = np.array(list(per_seed.values()))
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1))
            if len(values) > 1 else 0.0, "n_seeds": len(values),
            "per_seed": {str(k): v for k, v in per_seed.items()}}


def summarize(units: list[dict], protocol: str, seeds: list[int],
              groups: list) -> dict[str, Any]:
    """The fusion and JMML tables (mean, std over seeds) of the units' final metrics."""
    report: dict[str, Any] = {"protocol": protocol, "seeds": seeds,
                              "folds": [g for g in groups if g], "units": units}
    if any("fusion" in u["metrics"] for u in units):
        mods = [k[len("val_acc_"):] for k in units[0]["metrics"].get("fusion", {})
                if k.startswith("val_acc_")]
        rows = [{"model": "fused", "acc": _stat(_pooled(units, "fusion", "val_acc", "val_n")),
                 "f1": _stat(_pooled(units, "fusion", "val_f1", "val_n"))}]
        for m in mods:
            rows.append({"model": m,
                         "acc": _stat(_pooled(units, "fusion", f"val_acc_{m}", f"val_n_{m}")),
                         "f1": _stat(_pooled(units, "fusion", f"val_f1_{m}", f"val_n_{m}"))})
        report["fusion"] = rows
    if any("classifier" in u["metrics"] for u in units):
        targets = sorted({k.rsplit("_", 1)[1] for u in units
                          for k in (u["metrics"].get("classifier") or {})
                          if k.startswith("val_f1_raw_speech_")})
        rows = []
        for modality, method, rep in ABLATION:
            row = {"modality": modality, "method": method, "representation": rep}
            for t in targets:
                row[t] = _stat(_pooled(units, "classifier", f"val_f1_{rep}_{t}",
                                       f"val_n_{rep}_{t}"))
            if any(row[t] for t in targets):
                rows.append(row)
        report["jmml"] = {"targets": targets, "rows": rows,
                          "ordering": _ordering(rows, targets)}
    return report


def _ordering(rows: list[dict], targets: list[str]) -> dict[str, Any]:
    """Does baseline < JEC-SSL < JMML hold (by mean) per modality and target?"""
    out = {}
    for modality in ("speech", "eeg"):
        for t in targets:
            means = {r["method"]: r[t]["mean"] for r in rows
                     if r["modality"] == modality and r.get(t)}
            if len(means) == 3:
                out[f"{modality}/{t}"] = bool(means["raw features"] < means["JEC-SSL"]
                                              < means["JMML"])
    return out


def _cell(stat: dict | None) -> str:
    if not stat:
        return "-"
    return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"


def format_report(report: dict[str, Any]) -> str:
    """Markdown tables (percent, mean ± std over seeds)."""
    n = len(report["seeds"])
    folds = report.get("folds") or []
    lines = [f"# Evaluation: {report['protocol']}", "",
             f"{n} seeds ({', '.join(map(str, report['seeds']))})"
             + (f", {len(folds)} folds of held-out subjects" if folds else "")
             + "; mean ± std over seeds, in percent."
             + (" Split by trial: no trial on both sides." if report["protocol"]
                == "within-subject" else "")]
    if "fusion" in report:
        lines += ["", "## Attention fusion: fused vs unimodal (5-class)", "",
                  "| model | accuracy | macro-F1 |", "|---|---|---|"]
        lines += [f"| {r['model']} | {_cell(r['acc'])} | {_cell(r['f1'])} |"
                  for r in report["fusion"]]
    if "jmml" in report:
        targets = report["jmml"]["targets"]
        lines += ["", "## JMML ablation: macro-F1 per binary target", "",
                  "| modality | method | " + " | ".join(targets) + " |",
                  "|---|---|" + "---|" * len(targets)]
        lines += [f"| {r['modality']} | {r['method']} | "
                  + " | ".join(_cell(r.get(t)) for t in targets) + " |"
                  for r in report["jmml"]["rows"]]
        order = report["jmml"]["ordering"]
        if order:
            lines += ["", "raw features < JEC-SSL < JMML holds for: "
                      + (", ".join(k for k, v in order.items() if v) or "none")
                      + "; not for: " + (", ".join(k for k, v in order.items() if not v)
                                         or "none")]
    return "\n".join(lines)


# -- a single checkpoint --------------------------------------------------------------

def evaluate_bundle(bundle: str | Path, features: str | Path | None = None,
                    split: SplitConfig | None = None, batch_size: int = 64
                    ) -> dict[str, Any]:
    """Score a fusion or JMML classifier bundle on the validation records of ``features``
    (driver-side, one shard at a time). Metric keys match the training metrics."""
    import torch

    from emoray.data.features import batch_to_tensors, feature_metadata
    from emoray.bundle import load_bundle, read_bundle_meta
    from emoray.train.curves import val_batches
    from emoray.train.metrics import confusion, macro_f1

    bundle = Path(bundle).resolve()
    meta_b = read_bundle_meta(bundle)
    if features is None:
        run = bundle.parents[1]
        if not (run / "config.yaml").is_file():
            raise ConfigError(f"evaluate {bundle}: pass --features (the bundle is not "
                              f"inside a run folder whose config names them)")
        features = resolve(run / "config.yaml").train.features
    meta = feature_metadata(features)
    model, _ = load_bundle(bundle, feature_meta=meta)
    stage = meta_b["stage"]
    if stage == "fusion":
        from emoray.data.subject_norm import normalize
        from emoray.train.stages.fusion import model_columns

        cols = model_columns(meta, model)
        names = ["fused"] + list(model.modalities)
        n = len(meta_b["label_names"])
        conf = {k: torch.zeros(n, n, dtype=torch.float64) for k in names}
        for batch in val_batches(features, ["subject", "label"] + cols, split, batch_size,
                                 max_rows=None):
            t = normalize(batch_to_tensors(batch, meta), model, batch["subject"])
            keep = t["label"] >= 0
            if not keep.any():
                continue
            t = {k: v[keep] for k, v in t.items()}
            with torch.no_grad():
                for name, (logits, rows) in model.scores(t).items():
                    conf[name] += confusion(t["label"][rows], logits.argmax(1), n)
        out = {"val_acc": float(conf["fused"].diag().sum() / conf["fused"].sum().clamp_min(1)),
               "val_f1": macro_f1(conf["fused"]), "val_n": int(conf["fused"].sum())}
        for m in model.modalities:
            out[f"val_acc_{m}"] = float(conf[m].diag().sum() / conf[m].sum().clamp_min(1))
            out[f"val_f1_{m}"] = macro_f1(conf[m])
            out[f"val_n_{m}"] = int(conf[m].sum())
        return {"stage": stage, "metrics": out}
    if stage != "classifier":
        raise ConfigError(f"evaluate {bundle}: a {stage!r} bundle does not predict; "
                          f"evaluate the run's fusion or classifier bundle")
    needs = {"speech_only": ["speech"], "eeg_only": ["eeg"], "combined": ["speech", "eeg"]}
    cols = [f"{t}_high" for t in model.targets] + list(model.features.values())
    conf = {(p, t): torch.zeros(2, 2, dtype=torch.float64) for p in needs
            for t in model.targets}
    for batch in val_batches(features, cols, split, batch_size, max_rows=None):
        full = batch_to_tensors(batch, meta)
        for path, mods in needs.items():
            sel = torch.ones(full[f"{model.targets[0]}_high"].shape[0], dtype=torch.bool)
            for m in mods:
                sel &= full[f"{m}_present"]
            if not sel.any():
                continue
            t = {k: v[sel] for k, v in full.items()
                 if not any(k == model.features[m] or k == f"{m}_present"
                            for m in model.modalities if m not in mods)}
            probs = model.predict(t)["probs"]
            for name in model.targets:
                y = t[f"{name}_high"]
                ok = y >= 0
                conf[(path, name)] += confusion(y[ok], probs[name].argmax(1)[ok], 2)
    out = {}
    for (path, name), c in conf.items():
        if c.sum() > 0:
            out[f"val_f1_{path}_{name}"] = macro_f1(c)
            out[f"val_acc_{path}_{name}"] = float(c.diag().sum() / c.sum())
            out[f"val_n_{path}_{name}"] = int(c.sum())
    return {"stage": stage, "metrics": out}
