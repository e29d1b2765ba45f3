"""The MLflow runs of training: a plan run, one nested run per stage, evaluations.

:class:`PlanRuns` is what :func:`~emoray.train.plan.run_plan` calls; its runs are:

* the **plan run** (``train <name>``): the resolved config (``ray`` and ``train``) as
  params, ``config.yaml`` and ``plan_state.json`` as artifacts;
* a **stage run** per stage, nested under it: the stage's settings as params; its
  per-epoch metrics (step = epoch) logged live by :class:`EpochMetrics`, a Ray Train
  callback on the Train controller that logs rank 0's report once per epoch, and
  backfilled by the driver from the checkpoint's history for any epoch the callback
  missed (a killed driver, a store that was down); its plots and its bundle (without the
  optimizer state) as artifacts.

The run ids are kept in ``plan_state.json`` (``mlflow`` and each stage's
``mlflow_run_id``), so running the plan again continues the same runs: a resumed stage
keeps one metric point per epoch, a skipped one is not logged twice.

:func:`evaluation_run` / :func:`end_evaluation` are the run of ``emoray evaluate``: the
evaluation's settings as params, each (seed, fold) plan run nested under it, the report's
means as metrics and ``report.json`` / ``report.md`` as artifacts.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from ray.train import UserCallback

from emoray.bundle import TRAIN_STATE_FILE
from emoray.tracking import Tracker, flatten_params, open_tracker

BUNDLE_ARTIFACT = "bundle"


class EpochMetrics(UserCallback):
    """Log rank 0's metrics of every ``ray.train.report`` (once per epoch) to a stage run;
    runs on the Ray Train controller."""

    def __init__(self, tracker: Tracker, run_id: str):
        self.tracker, self.run_id = tracker, run_id

    def after_report(self, run_context, metrics, checkpoint) -> None:
        try:
            first = metrics[0] if metrics else {}
            self.tracker.log_metrics(self.run_id, first, step=int(first.get("epoch", 0)))
        except Exception as err:             # a callback that raises fails the Train run
            self.tracker._warn("logging an epoch", err)


def plan_tracker(cfg) -> Tracker | None:
    """The tracker of a plan config (``tracking``; default store in ``train.output``), or
    None when tracking is off. Raises ConfigError for a URI that cannot work."""
    t = cfg.tracking
    return open_tracker(t.uri, t.experiment, cfg.train.output) if t.enabled else None


class PlanRuns:
    """The MLflow runs of one plan run; every method is a no-op without a tracker."""

    def __init__(self, tracker: Tracker | None, state: dict[str, Any], name: str,
                 params: dict[str, Any], parent: str | None = None):
        self.tracker = tracker
        self.run_id: str | None = None
        self._stage: str | None = None
        if tracker is None:
            return
        recorded = state.get("mlflow") or {}
        same = recorded.get("uri") == tracker.uri
        self.run_id = tracker.start(f"train {name}", params=flatten_params(params),
                                    tags={"emoray.kind": "plan", "emoray.run": name},
                                    parent=parent, resume=recorded.get("run_id") if same
                                    else None)
        if self.run_id:
            state["mlflow"] = {"uri": tracker.uri, "experiment_id": tracker.experiment_id,
                               "run_id": self.run_id}

    def _recorded(self, entry: dict[str, Any] | None) -> str | None:
        """The stage run id ``entry`` (a plan state entry) recorded in this store."""
        if not entry or self.tracker is None or not self.run_id:
            return None
        return entry.get("mlflow_run_id") if entry.get("mlflow_uri") == self.tracker.uri \
            else None

    def record(self, run_id: str | None) -> dict[str, Any]:
        """What a plan state entry keeps of a stage run."""
        return {"mlflow_run_id": run_id, "mlflow_uri": self.tracker.uri} if run_id else {}

    def stage_start(self, stage: str, stage_cfg: Any, entry: dict[str, Any] | None,
                    features: str) -> str | None:
        """Open the stage's run (the one ``entry`` recorded, if any) and return its id."""
        if self.tracker is None or not self.run_id:
            return None
        params = {"stage": stage, "features": features,
                  **flatten_params(stage_cfg.model_dump(mode="json"))}
        self._stage = self.tracker.start(f"{stage}", params=params, parent=self.run_id,
                                         tags={"emoray.kind": "stage", "emoray.stage": stage},
                                         resume=self._recorded(entry))
        return self._stage

    @contextlib.contextmanager
    def epochs(self, run_id: str | None) -> Iterator[None]:
        """Around a stage's training: its Ray Train runs log each epoch to ``run_id``."""
        from emoray.train.loop import run_callbacks

        if run_id is None:
            yield
            return
        with run_callbacks(EpochMetrics(self.tracker, run_id)):
            yield

    def stage_end(self, run_id: str | None, bundle: str | Path, plots: list[str],
                  folder: Path) -> None:
        """Backfill missing epochs, log the plots and the bundle, mark it FINISHED."""
        if self.tracker is None or not run_id:
            return
        from emoray.train.curves import read_history

        done = self.tracker.logged_steps(run_id, "epoch")
        for h in read_history(bundle):
            step = int(h.get("epoch", 0))
            if step not in done:
                self.tracker.log_metrics(run_id, h, step=step)
        self.tracker.log_artifacts(run_id, plots, "plots")
        self.tracker.log_artifacts(run_id, [bundle], BUNDLE_ARTIFACT, exclude=(TRAIN_STATE_FILE,))
        self.tracker.set_tags(run_id, {"emoray.bundle": str(bundle),
                                       "emoray.run_dir": str(folder)})
        self.tracker.end(run_id)
        self._stage = None

    def stage_skipped(self, stage: str, stage_cfg: Any, entry: dict[str, Any],
                      bundle: str | Path, features: str, folder: Path) -> dict[str, Any]:
        """A finished stage found on disk: log it once (a stage whose driver died before
        recording it); return what its plan state entry keeps."""
        run_id = self._recorded(entry)
        if run_id or self.tracker is None or not self.run_id:
            return self.record(run_id)
        run_id = self.stage_start(stage, stage_cfg, None, features)
        self.stage_end(run_id, bundle, entry.get("curves", []), folder)
        return self.record(run_id)

    def end(self, folder: Path, status: str = "FINISHED") -> None:
        """Close the open stage run (FAILED/KILLED on an error) and the plan run."""
        if self.tracker is None or not self.run_id:
            return
        if self._stage:
            self.tracker.end(self._stage, status)
        self.tracker.log_artifacts(self.run_id, [folder / "config.yaml",
                                                 folder / "plan_state.json"])
        self.tracker.set_tags(self.run_id, {"emoray.run_dir": str(folder)})
        self.tracker.end(self.run_id, status)


@contextlib.contextmanager
def plan_runs(tracker: Tracker | None, state: dict[str, Any], name: str,
              params: dict[str, Any], folder: Path,
              parent: str | None = None) -> Iterator[PlanRuns]:
    """:class:`PlanRuns` whose runs end FINISHED, FAILED on an error, KILLED on Ctrl-C."""
    runs = PlanRuns(tracker, state, name, params, parent)
    try:
        yield runs
    except KeyboardInterrupt:
        runs.end(folder, "KILLED")
        raise
    except BaseException:
        runs.end(folder, "FAILED")
        raise
    runs.end(folder)


# -- evaluations -------------------------------------------------------------------------

def evaluation_run(tracker: Tracker | None, run: Path, protocol: str,
                   params: dict[str, Any]) -> str | None:
    """Start the MLflow run of one protocol's evaluation of ``run``."""
    if tracker is None:
        return None
    return tracker.start(f"evaluate {run.name} {protocol}", params=flatten_params(params),
                         tags={"emoray.kind": "evaluation", "emoray.run": str(run),
                               "emoray.protocol": protocol})


def end_evaluation(tracker: Tracker | None, run_id: str | None,
                   report: dict[str, Any]) -> None:
    """Log the report's means and standard deviations, and its files."""
    if tracker is None or not run_id:
        return
    metrics: dict[str, Any] = {}
    for row in report.get("fusion", []):
        for what in ("acc", "f1"):
            for stat in ("mean", "std"):
                metrics[f"{row['model']}_{what}_{stat}"] = (row.get(what) or {}).get(stat)
    jmml = report.get("jmml") or {}
    for row in jmml.get("rows", []):
        for target in jmml.get("targets", []):
            for stat in ("mean", "std"):
                metrics[f"{row['modality']}_{row['representation']}_{target}_f1_{stat}"] = \
                    (row.get(target) or {}).get(stat)
    tracker.log_metrics(run_id, {k: v for k, v in metrics.items() if v is not None})
    tracker.log_artifacts(run_id, report.get("files", []), "report")
    tracker.end(run_id)
