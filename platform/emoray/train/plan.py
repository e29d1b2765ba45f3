"""Training plans: the stages of ``train.stages`` run in order inside one run folder.

The run folder is ``train.output / train.name``. It holds the resolved ``config.yaml``,
``plan_state.json`` (per stage: status, bundle path, last epoch, metrics), one Ray Train
run per stage (``<run folder>/<stage>/checkpoint_*``) and the stage's PNG curves.

Running a plan again with the same name:

* a stage whose bundle exists with its final epoch done is skipped;
* an interrupted stage resumes: Ray Train V2 resumes a run started again with the same
  ``RunConfig(name, storage_path)`` from its latest checkpoint (RAY.md trap 1).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from contextlib import nullcontext
from typing import Any, Callable, ContextManager

from emoray.config import STAGE_CONFIGS, STAGE_NAMES, EmorayConfig, dump
from emoray.data.features import feature_metadata
from emoray.errors import ConfigError
from emoray.bundle import read_bundle_meta
from emoray.train.stages import get_stage

STATE_FILE = "plan_state.json"


def run_dir(cfg: EmorayConfig) -> Path:
    """The run folder ``OUTPUT/NAME`` of a resolved config."""
    return Path(cfg.train.output) / cfg.train.name


def plan_stages(cfg: EmorayConfig) -> dict[str, Any]:
    """Stage name -> settings, in run order (an empty plan is the fusion stage's defaults).

    Raises :class:`ConfigError` for a stage whose predecessor (``inter`` needs ``intra``,
    ``classifier`` needs ``inter``) is neither in the plan nor given as
    ``from_checkpoint``.
    """
    stages = cfg.train.stages or {"fusion": STAGE_CONFIGS["fusion"]()}
    ordered = {name: stages[name] for name in STAGE_NAMES if name in stages}
    for name, stage_cfg in ordered.items():
        before = get_stage(name).after
        if before and before not in ordered and not stage_cfg.from_checkpoint:
            raise ConfigError(f"train.stages.{name}: starts from the {before} stage's "
                              f"bundle; add stages.{before} to the plan or set "
                              f"stages.{name}.from_checkpoint")
    return ordered


def preflight(features: Path, stages: dict[str, Any]) -> None:
    """Every check that needs no earlier stage's output, for every stage, before the first
    stage starts (so a mistake in the last stage does not surface an hour in)."""
    for name, stage_cfg in stages.items():
        check = get_stage(name).preflight
        if check is not None:
            check(features, stage_cfg, stages)


def read_state(folder: str | Path) -> dict[str, Any]:
    """``plan_state.json`` of a run folder (``{"stages": {}}`` if there is none yet)."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        return {"stages": {}}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ConfigError(f"{path}: not valid JSON ({err}); delete it to re-plan") from None


def run_results(folder: str | Path) -> dict[str, Any]:
    """:func:`run_plan`'s results of a run trained elsewhere (an evaluation's pool), read back
    from its ``plan_state.json``, for :func:`format_summary`."""
    entries = read_state(folder)["stages"]
    order = sorted(entries, key=lambda s: (STAGE_NAMES.index(s) if s in STAGE_NAMES
                                           else len(STAGE_NAMES), s))
    stages = {stage: {"status": entries[stage].get("status", "?"),
                      "bundle": entries[stage].get("bundle"),
                      "metrics": entries[stage].get("metrics") or {},
                      "curves": entries[stage].get("curves", []),
                      "seconds": entries[stage].get("seconds", 0.0)} for stage in order}
    return {"run_dir": str(folder), "stages": stages}


def _write_state(folder: Path, state: dict[str, Any]) -> None:
    tmp = folder / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
    tmp.replace(folder / STATE_FILE)


def finished_bundle(folder: str | Path, stage: str, epochs: int,
                    state: dict[str, Any] | None = None) -> Path | None:
    """The bundle of ``stage`` if its final epoch (``epochs - 1``) is done, else None.

    Looks at the bundle recorded in the plan state first, then at the checkpoints Ray Train
    recorded for the stage (a run that finished but whose driver died before the plan state
    was written).
    """
    folder = Path(folder)
    recorded = ((state or {}).get("stages", {}).get(stage) or {}).get("bundle")
    candidates = [Path(recorded)] if recorded else []
    candidates += recorded_checkpoints(folder / stage)
    for path in candidates:
        try:
            epoch = read_bundle_meta(path)["metrics"].get("epoch", -1)
        except ConfigError:
            continue
        if epoch >= epochs - 1:
            return path
    return None


def recorded_checkpoints(stage_dir: Path) -> list[Path]:
    """The checkpoints Ray Train recorded for a stage run (its checkpoint manager snapshot),
    oldest first. A ``checkpoint_*`` folder the snapshot does not list was reported while
    the run died and may be incomplete: it is never trusted."""
    snapshot = stage_dir / "checkpoint_manager_snapshot.json"
    try:
        results = json.loads(snapshot.read_text())["checkpoint_results"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [stage_dir / r["checkpoint_dir_name"] for r in results
            if isinstance(r, dict) and r.get("checkpoint_dir_name")]


def run_plan(cfg: EmorayConfig, echo: Callable[[str], None] = print, *,
             stage_context: Callable[[str], ContextManager] | None = None,
             curves: bool = True, tracking: tuple[Any, str] | None = None) -> dict[str, Any]:
    """Run the plan's stages in order; skip finished ones; return per-stage results.

    Parameters
    ----------
    cfg : EmorayConfig
        A resolved config; reads ``train`` (``features`` must be set).
    echo : callable
        Where progress lines go.
    stage_context : callable, optional
        ``stage -> context manager`` entered around each stage's training (a Tune trial
        uses it to forward one stage's reports to Tune).
    curves : bool
        Write each stage's PNG curves and confusion matrix (a Tune trial skips them).
    tracking : (Tracker, str), optional
        Log the plan's MLflow runs (:mod:`emoray.train.mlflow_runs`) to this tracker,
        nested under this run id (an evaluation's, a campaign's); default: per
        ``cfg.tracking``.

    Returns
    -------
    dict
        ``{"run_dir", "mlflow_run_id", "stages": {stage: {"status", "bundle", "metrics",
        "curves", "seconds"}}}``; status is ``"finished"`` or ``"skipped"``.
    """
    from emoray.train.curves import write_curves
    from emoray.train.mlflow_runs import plan_runs, plan_tracker

    if not cfg.train.features:
        raise ConfigError("train.features: no feature folder given (pass FEATURES or set "
                          "train.features)")
    features = Path(cfg.train.features)
    feature_metadata(features)            # not a preprocess output: fail before any folder
    stages = plan_stages(cfg)
    preflight(features, stages)
    tracker, parent = tracking or (plan_tracker(cfg), None)
    folder = run_dir(cfg).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    resolved = cfg.model_copy(deep=True)
    resolved.train.stages = stages
    dump(resolved, folder / "config.yaml", ["ray", "train"])
    state = read_state(folder)
    state.setdefault("stages", {})
    results: dict[str, Any] = {"run_dir": str(folder), "stages": {}}
    params = resolved.model_dump(mode="json", include={"ray", "train"})
    with plan_runs(tracker, state, cfg.train.name, params, folder, parent) as runs:
        results["mlflow_run_id"] = runs.run_id
        for stage, stage_cfg in stages.items():
            before = get_stage(stage).after
            init = (results["stages"].get(before) or {}).get("bundle") if before else None
            done = finished_bundle(folder, stage, stage_cfg.epochs, state)
            if done is not None:
                echo(f"stage {stage} already finished: {done}")
                entry = state["stages"].get(stage) or {}
                metrics = read_bundle_meta(done)["metrics"]
                if entry.get("status") != "finished" or entry.get("bundle") != str(done):
                    # finished, but the driver died before recording it (and its plots)
                    plots = [str(p) for p in write_curves(done, folder, features=features,
                                                          stage=stage, split=cfg.train.split,
                                                          echo=echo)] if curves else []
                    entry = {"status": "finished", "bundle": str(done), "metrics": metrics,
                             "epoch": metrics.get("epoch"), "curves": plots}
                    state["stages"][stage] = entry
                    _write_state(folder, state)
                logged = runs.stage_skipped(stage, stage_cfg, entry, done, str(features), folder)
                if any(entry.get(k) != v for k, v in logged.items()):
                    state["stages"][stage] = {**entry, **logged}
                    _write_state(folder, state)
                results["stages"][stage] = {
                    "status": "skipped", "bundle": str(done), "metrics": metrics,
                    "curves": entry.get("curves", []), "seconds": 0.0}
                continue
            echo(f"stage {stage}: training {stage_cfg.epochs} epochs on {features} "
                 f"-> {folder / stage}")
            sid = runs.stage_start(stage, stage_cfg, state["stages"].get(stage), str(features))
            state["stages"][stage] = {"status": "running", "started": time.time(),
                                      **runs.record(sid)}
            _write_state(folder, state)
            t0 = time.perf_counter()
            kwargs = {"init": init} if before else {}
            with (stage_context or (lambda _: nullcontext()))(stage), runs.epochs(sid):
                out = get_stage(stage).train(features, folder, stage_cfg, name=stage,
                                    split=cfg.train.split, **kwargs)
            seconds = time.perf_counter() - t0
            plots = [str(p) for p in write_curves(
                out["checkpoint"], folder, features=features, stage=stage,
                split=cfg.train.split, echo=echo)] if curves else []
            runs.stage_end(sid, out["checkpoint"], plots, folder)
            entry = {"status": "finished", "bundle": out["checkpoint"], "path": out["path"],
                     "epoch": out["metrics"].get("epoch"), "metrics": out["metrics"],
                     "curves": plots, "seconds": round(seconds, 2),
                     "n_train": out["n_train"], "n_val": out["n_val"], **runs.record(sid)}
            state["stages"][stage] = entry
            _write_state(folder, state)
            results["stages"][stage] = {"status": "finished", "bundle": out["checkpoint"],
                                        "metrics": out["metrics"], "curves": plots,
                                        "seconds": seconds}
    return results


def format_summary(results: dict[str, Any]) -> str:
    """Human-readable lines: per stage its status, metrics and bundle path."""
    lines = [f"train: run folder {results['run_dir']}"]
    for stage, r in results["stages"].items():
        m = r.get("metrics") or {}
        shown = " ".join(f"{k}={v:.3f}" for k, v in m.items()
                         if isinstance(v, float) and (k.startswith("val_") or k == "train_loss"))
        epoch, steps = m.get("epoch"), m.get("steps")
        trained = "" if steps is None else f", {steps} steps"
        lines.append(f"  {stage}: {r['status']} (epoch {None if epoch is None else epoch + 1}"
                     f"{trained}, {r['seconds']:.1f} s) {shown}")
        lines.append(f"  {stage} bundle: {r['bundle']}")
        for c in r.get("curves", []):
            lines.append(f"  {stage} plot: {c}")
    return "\n".join(lines)
