"""Hyperparameter-search campaigns: Ray Tune + Optuna (or random search) over a plan's fields.

A campaign tunes one stage of a training plan (the *tuned* stage) on the metric that stage
reports every epoch. Each trial is a Tune function trainable (``{"cpu": trial_cpus}``) that
runs the plan's stages from the first searched one up to the tuned one through
:func:`~emoray.train.plan.run_plan`; only the tuned stage's ``TorchTrainer`` forwards its
per-epoch reports to Tune (``TuneReportCallback``), so ASHA stops trials on that stage's
epochs. Around the trials:

* **prefix** - plan stages the tuned stage starts from that the space does not touch (JMML's
  ``intra`` when tuning ``inter``) run once, before the first trial, and every trial starts
  from their bundle;
* **suffix** - plan stages that start from the tuned stage (``classifier`` after ``inter``)
  run once, for the best trial, when it is promoted.

Layout under ``STORAGE/NAME`` (a folder or a pyarrow URI): Tune's experiment state and trial
folders, ``campaign.yaml`` (the resolved config), ``campaign.json`` (what resume needs),
``best/`` (the promoted serving bundle) and ``report/``. The trials' training runs go to the
work folder (``STORAGE/NAME/trials`` for local storage).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from emoray import storage
from emoray.config import EmorayConfig, dump, load_yaml, resolve
from emoray.errors import ConfigError
from emoray.tune.space import apply, check_points, check_space, split_key, tune_space

CAMPAIGN_FILE = "campaign.json"
CONFIG_FILE = "campaign.yaml"
BEST = "best"


# -- config -------------------------------------------------------------------------------

def resolve_campaign(config_file: str | Path | None, flags: dict[str, Any] | None = None,
                     overrides: list[str] | None = None) -> EmorayConfig:
    """The campaign's config: the plan named by ``tune.plan`` (its ``ray`` and ``train``
    sections), overlaid by the campaign file, then flags and ``--set``."""
    base: dict[str, Any] = {}
    plan = ((load_yaml(config_file).get("tune") or {}).get("plan") if config_file else None)
    for text in overrides or []:
        if text.split("=", 1)[0].strip() == "tune.plan":
            plan = yaml.safe_load(text.split("=", 1)[1])
    if plan:
        path = Path(plan)
        if not path.is_file() and config_file and (Path(config_file).parent / plan).is_file():
            path = Path(config_file).parent / plan
        if not path.is_file():
            raise ConfigError(f"tune.plan: the training plan {plan} does not exist")
        tree = load_yaml(path)
        base = {k: v for k, v in tree.items() if k in ("ray", "train")}
    cfg = resolve(config_file, flags, overrides, base=base)
    if cfg.train.features:
        cfg.train.features = str(Path(cfg.train.features).resolve())
    return cfg


# -- the shape of a campaign ----------------------------------------------------------------

@dataclass
class Campaign:
    """Everything a trial and a resume need (picklable; saved as ``campaign.json``)."""

    name: str
    exp: str                          # STORAGE/NAME (folder or URI)
    work_dir: str                     # local (or shared) folder of the trials' runs
    tuned: str
    chain: list[str]                  # stages each trial runs
    prefix: list[str]                 # stages run once before the trials
    suffix: list[str]                 # stages run for the best trial
    metric: str
    mode: str
    max_t: int
    concurrency: int
    trial_cpus: float
    prefix_bundle: str | None = None
    mlflow: dict[str, Any] = field(default_factory=dict)    # tracker and campaign run id
    points: list[dict[str, Any]] = field(default_factory=list)   # typed points_to_evaluate
    config: dict[str, Any] = field(default_factory=dict)    # resolved ray/train/tune

    def emoray_config(self) -> EmorayConfig:
        return EmorayConfig.model_validate(self.config)

    def trial_config(self, params: dict[str, Any], name: str, stages_run: list[str],
                     start: str | None) -> EmorayConfig:
        """The plan of one run: ``stages_run`` with ``params`` applied, the first starting
        from the bundle ``start``; run folder ``work_dir/name``."""
        from emoray.train.plan import plan_stages

        cfg = self.emoray_config()
        stages = apply(plan_stages(cfg), params)
        chosen = {s: stages[s] for s in stages_run}
        if start:
            first = stages_run[0]
            chosen[first] = chosen[first].model_copy(update={"from_checkpoint": start})
        cfg.train.stages = chosen
        cfg.train.name = name
        cfg.train.output = self.work_dir
        return cfg


def _chain(tuned: str, stages: dict[str, Any]) -> list[str]:
    """``tuned`` and the plan stages it starts from, first first."""
    from emoray.train.stages import get_stage

    chain = [tuned]
    while (before := get_stage(chain[0]).after) and before in stages \
            and not getattr(stages[chain[0]], "from_checkpoint", None):
        chain.insert(0, before)
    return chain


def shape(cfg: EmorayConfig) -> dict[str, Any]:
    """Tuned stage, per-trial chain, prefix and suffix of a campaign; checks the space, the
    metric and the starting points against the plan (no Ray needed)."""
    from emoray.train.plan import plan_stages
    from emoray.train.stages import get_stage, reported_metrics

    t = cfg.tune
    stages = plan_stages(cfg)
    check_space(t.space, stages)
    touched = [split_key(k)[0] for k in t.space]
    tuned = t.stage or max(touched, key=list(stages).index)
    if tuned not in stages:
        raise ConfigError(f"tune.stage: the plan has no stage {tuned!r} (its stages: "
                          f"{list(stages)})")
    deps = _chain(tuned, stages)
    off = sorted({s for s in touched if s not in deps})
    if off:
        raise ConfigError(f"tune.space: stage(s) {off} are not run by a trial tuning "
                          f"{tuned!r} (a trial runs {deps}); set tune.stage or drop them")
    first = min(deps.index(s) for s in touched)
    suffix, reach = [], {tuned}
    for s in stages:
        if get_stage(s).after in reach and s not in deps:
            suffix.append(s)
            reach.add(s)
    metrics = reported_metrics(tuned, stages[tuned])
    if t.metric not in metrics:
        raise ConfigError(f"tune.metric: the {tuned} stage does not report {t.metric!r}; it "
                          f"reports {sorted(metrics)}")
    points = check_points(t.points_to_evaluate, t.space, stages)
    epochs = stages[tuned].epochs
    return {"stages": stages, "tuned": tuned, "chain": deps[first:], "prefix": deps[:first],
            "suffix": suffix, "max_t": min(t.scheduler.max_t or epochs, epochs),
            "points": points}


def budget(cfg: EmorayConfig, stages: dict[str, Any], chain: list[str],
           cluster: dict[str, float]) -> tuple[int, str]:
    """How many trials run at once, and a note; ConfigError when one trial can never fit.

    One trial holds ``tune.trial_cpus`` plus its largest stage's Train workers
    (``num_workers x cpus_per_worker``, GPUs when ``use_gpu``); ``tune.data_cpus`` stay
    free for Ray Data (RAY.md trap 2). ``cluster`` is ``ray.cluster_resources()`` (or the
    ``tune.cluster_cpus`` an autoscaling cluster can grow to).
    """
    t = cfg.tune
    worst = max(chain, key=lambda s: stages[s].num_workers * stages[s].cpus_per_worker)
    w = stages[worst]
    cpu = t.trial_cpus + w.num_workers * w.cpus_per_worker
    gpu = max((stages[s].num_workers for s in chain if stages[s].use_gpu), default=0)
    have_cpu = float(t.cluster_cpus or cluster.get("CPU", 0.0))
    have_gpu = float(cluster.get("GPU", 0.0))
    need = (f"{cpu:g} CPUs ({t.trial_cpus:g} for the trial + stages.{worst}: "
            f"{w.num_workers} workers x {w.cpus_per_worker:g}) + tune.data_cpus "
            f"{t.data_cpus:g} for Ray Data")
    if cpu + t.data_cpus > have_cpu + 1e-9:
        raise ConfigError(f"tune: one trial needs {need}, but the cluster has {have_cpu:g} "
                          f"CPUs; lower stages.{worst}.num_workers / cpus_per_worker or "
                          f"tune.data_cpus, or use a larger cluster")
    if gpu > have_gpu:
        raise ConfigError(f"tune: one trial needs {gpu} GPUs (use_gpu with {gpu} workers), "
                          f"but the cluster has {have_gpu:g}")
    fit = int((have_cpu - t.data_cpus + 1e-9) // cpu)
    if gpu:
        fit = min(fit, int(have_gpu // gpu))
    conc = max(1, min(t.max_concurrent, fit, t.num_samples))
    note = f"{conc} trial(s) at a time: each needs {need} of {have_cpu:g} CPUs"
    if conc < min(t.max_concurrent, t.num_samples):
        note += f" (tune.max_concurrent {t.max_concurrent} lowered to fit)"
    return conc, note


def _exp_path(storage_root: str, name: str) -> str:
    return storage.join(storage_root, name)


def _work_dir(cfg: EmorayConfig, exp: str) -> str:
    if cfg.tune.work_dir:
        return str(Path(cfg.tune.work_dir).resolve())
    if storage.is_uri(exp):
        return str(Path("runs/tune-work", cfg.tune.name).resolve())
    return str(Path(exp) / "trials")


# -- running --------------------------------------------------------------------------------

def _trial(params: dict[str, Any], campaign: Campaign) -> None:
    """One trial (runs in a Tune actor): the chain with ``params``, the tuned stage's
    epochs forwarded to Tune; a re-run of an interrupted trial resumes its training runs."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from emoray.train.plan import run_plan
    from emoray.train.loop import run_callbacks

    _quiet_data()
    trial_id = tune.get_context().get_trial_id()
    cfg = campaign.trial_config(params, trial_id, campaign.chain, campaign.prefix_bundle)

    def forward(stage: str):
        return run_callbacks(TuneReportCallback()) if stage == campaign.tuned \
            else run_callbacks()

    out = run_plan(cfg, echo=lambda line: print(f"[trial {trial_id}] {line}", flush=True),
                   stage_context=forward, curves=False, tracking=(None, None))
    done = out["stages"][campaign.tuned]
    if done["status"] == "skipped":       # finished before an interruption: report it once
        tune.report({**done["metrics"], "checkpoint_path": done["bundle"]})


def _quiet_data() -> None:
    """Ray Data's per-dataset INFO lines (each trial reads its split) drown the progress
    lines; Tune's logging set-up brings them back in the driver."""
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _tuner_trainable(campaign: Campaign):
    from ray import tune

    return tune.with_resources(tune.with_parameters(_trial, campaign=campaign),
                               {"cpu": campaign.trial_cpus})


def _search(cfg: EmorayConfig, points: list[dict[str, Any]], concurrency: int):
    t = cfg.tune
    if t.search == "random":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        # a search generator instance makes Tune ignore max_concurrent_trials: it must cap
        # the live trials itself, or every trial starts at once and starves Ray Data
        return BasicVariantGenerator(random_state=t.seed, points_to_evaluate=points or None,
                                     max_concurrent=concurrency)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    startup = t.startup_trials or max(2, min(10, t.num_samples // 3))
    sampler = optuna.samplers.TPESampler(seed=t.seed, n_startup_trials=startup)
    return OptunaSearch(sampler=sampler, points_to_evaluate=points or None)


def _scheduler(cfg: EmorayConfig, max_t: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = cfg.tune.scheduler
    if s.type == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="training_iteration", max_t=max_t,
                         grace_period=min(s.grace_period, max_t),
                         reduction_factor=s.reduction_factor)


def prepare(cfg: EmorayConfig, echo: Callable[[str], None] = print) -> Campaign:
    """Check the campaign against the plan and the running cluster, run the prefix stages
    once, and write ``campaign.yaml`` / ``campaign.json``. Every check happens before any
    training starts."""
    import ray

    from emoray.data.features import feature_metadata
    from emoray.train.plan import preflight, run_plan
    from emoray.tune.mlflow_trials import nest, start_campaign

    t = cfg.tune
    if not cfg.train.features:
        raise ConfigError("train.features: no feature folder given (set it in the plan, the "
                          "campaign file, or --set train.features=...)")
    feature_metadata(Path(cfg.train.features))
    s = shape(cfg)
    preflight(Path(cfg.train.features), s["stages"])
    exp = _exp_path(t.storage, t.name)
    if storage.read_text(storage.join(exp, CAMPAIGN_FILE)) is not None:
        raise ConfigError(f"tune.name: campaign {t.name!r} already exists in {t.storage}; "
                          f"continue it with `emoray tune --resume {t.name}` or choose "
                          f"another tune.name")
    conc, note = budget(cfg, s["stages"], s["chain"], ray.cluster_resources())
    campaign = Campaign(name=t.name, exp=exp, work_dir=_work_dir(cfg, exp), tuned=s["tuned"],
                        chain=s["chain"], prefix=s["prefix"], suffix=s["suffix"],
                        metric=t.metric, mode=t.mode, max_t=s["max_t"], concurrency=conc,
                        trial_cpus=t.trial_cpus, points=s["points"],
                        config=cfg.model_dump(mode="json", include={"ray", "train", "tune"}))
    echo(f"tune: campaign {t.name} -> {exp}: {t.num_samples} trials of "
         f"{'+'.join(s['chain'])} ({t.search} search, {t.scheduler.type}), metric "
         f"{t.metric} ({t.mode})")
    echo(f"tune: {note}")
    start_campaign(cfg, campaign)         # the MLflow run of the campaign (ConfigError first)
    if campaign.prefix:
        echo(f"tune: running the shared stages {campaign.prefix} once, before the trials")
        base = campaign.trial_config({}, "base", campaign.prefix, None)
        out = run_plan(base, echo=echo, curves=False, tracking=nest(campaign))
        campaign.prefix_bundle = out["stages"][campaign.prefix[-1]]["bundle"]
    _write(campaign, cfg)
    return campaign


def _write(campaign: Campaign, cfg: EmorayConfig) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        text = dump(cfg, Path(tmp) / CONFIG_FILE, ["ray", "train", "tune"]).read_text()
    storage.write_text(storage.join(campaign.exp, CONFIG_FILE), text)
    info = {**asdict(campaign), "space": cfg.model_dump(mode="json")["tune"]["space"],
            "written": time.time()}
    storage.write_text(storage.join(campaign.exp, CAMPAIGN_FILE), json.dumps(info, indent=2))


def load_campaign(name: str, storage_root: str = "runs/tune") -> Campaign:
    """The campaign ``name`` under ``storage_root`` (ConfigError if there is none)."""
    exp = _exp_path(storage_root, name)
    text = storage.read_text(storage.join(exp, CAMPAIGN_FILE))
    if text is None:
        raise ConfigError(f"tune: no campaign {name!r} in {storage_root} (expected "
                          f"{storage.join(exp, CAMPAIGN_FILE)}, written by `emoray tune`)")
    info = json.loads(text)
    keep = {k: info[k] for k in Campaign.__dataclass_fields__ if k in info}
    return Campaign(**dict(keep, exp=exp))        # where it is now (storage may have moved)


def run_campaign(cfg: EmorayConfig | None = None, *, resume: str | None = None,
                 storage_root: str | None = None,
                 echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run a campaign (or continue the interrupted campaign ``resume``) and promote its best
    trial; returns ``{"exp", "best", "trials": {status: count}, "seconds"}``.

    Ray must be initialised (:func:`emoray.runtime.init_ray`), with the dashboard on where
    ASHA stops trials (RAY.md trap 3).
    """
    from ray import tune

    from emoray.tune.mlflow_trials import end_campaign, resume_campaign, trial_callbacks
    from emoray.tune.progress import run_config

    t0 = time.perf_counter()
    if resume:
        campaign = load_campaign(resume, storage_root or "runs/tune")
        if not tune.Tuner.can_restore(campaign.exp):
            raise ConfigError(f"tune --resume {resume}: {campaign.exp} holds no Tune state "
                              f"to restore (the campaign stopped before its first trial); "
                              f"start it again under a new tune.name")
        echo(f"tune: resuming campaign {resume} from {campaign.exp}")
        resume_campaign(campaign)
        tuner = tune.Tuner.restore(campaign.exp, trainable=_tuner_trainable(campaign),
                                   resume_unfinished=True, resume_errored=True)
    else:
        campaign = prepare(cfg, echo)
        root = cfg.tune.storage
        tuner = tune.Tuner(
            _tuner_trainable(campaign), param_space=tune_space(cfg.tune.space),
            tune_config=tune.TuneConfig(
                metric=campaign.metric, mode=campaign.mode,
                search_alg=_search(cfg, campaign.points, campaign.concurrency),
                scheduler=_scheduler(cfg, campaign.max_t), num_samples=cfg.tune.num_samples,
                max_concurrent_trials=campaign.concurrency),
            run_config=run_config(campaign, str(Path(root).resolve())
                                   if not storage.is_uri(root) else root,
                                   trial_callbacks(campaign)))
    results = tuner.fit()
    _quiet_data()
    counts: dict[str, int] = {}
    for r in results:
        status = "ERROR" if r.error else "TERMINATED"
        counts[status] = counts.get(status, 0) + 1
    best = None
    try:
        best = promote(campaign, results, echo)
    finally:                                  # FAILED when no trial could be promoted
        end_campaign(campaign, best, counts, "FINISHED" if best else "FAILED")
    return {"exp": campaign.exp, "best": best, "trials": counts,
            "seconds": time.perf_counter() - t0}


# -- promotion --------------------------------------------------------------------------------

def promote(campaign: Campaign, results, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Copy the best trial's bundle (after the suffix stages, if any) to ``EXP/best``.

    The best trial is the one whose last report is best on the metric among the trials that
    did not fail (ASHA compares trials at the same epochs; the bundle is that last report's
    checkpoint).
    """
    from emoray.train.plan import run_plan
    from emoray.tune.mlflow_trials import nest

    sign = 1.0 if campaign.mode == "max" else -1.0
    scored = [r for r in results if r.error is None and r.metrics
              and isinstance(r.metrics.get(campaign.metric), (int, float))
              and math.isfinite(r.metrics[campaign.metric])
              and r.metrics.get("checkpoint_path")]
    if not scored:
        raise ConfigError(f"tune: no trial of campaign {campaign.name} finished with "
                          f"{campaign.metric} and a checkpoint; see `emoray tune report "
                          f"{campaign.name}` for the trials' errors")
    best = max(scored, key=lambda r: sign * r.metrics[campaign.metric])
    params = dict(best.config)
    bundle = best.metrics["checkpoint_path"]
    value = best.metrics[campaign.metric]
    trial_id = best.metrics.get("trial_id")
    echo(f"tune: best trial {trial_id}: {campaign.metric}={value:.4f} with {params}")
    if campaign.suffix:
        echo(f"tune: running {campaign.suffix} from the best trial's {campaign.tuned} bundle")
        cfg = campaign.trial_config(params, f"best-{trial_id}", campaign.suffix, bundle)
        out = run_plan(cfg, echo=echo, tracking=nest(campaign))
        bundle = out["stages"][campaign.suffix[-1]]["bundle"]
    dest = storage.join(campaign.exp, BEST)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / BEST
        shutil.copytree(bundle, staged)
        (staged / "campaign.json").write_text(json.dumps(
            {"campaign": campaign.name, "trial_id": trial_id, "params": params,
             "metric": campaign.metric, "mode": campaign.mode, "value": value,
             "tuned_stage": campaign.tuned, "source": str(bundle)}, indent=2))
        storage.put_dir(staged, dest)
    echo(f"tune: promoted -> {dest}")
    return {"path": dest, "trial_id": trial_id, "value": value, "params": params,
            "source": str(bundle)}


def summary_line(out: dict[str, Any]) -> str:
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(out["trials"].items()))
    return (f"tune: {sum(out['trials'].values())} trials ({counts}) in "
            f"{out['seconds']:.0f} s; best {out['best']['value']:.4f} -> {out['best']['path']}")


