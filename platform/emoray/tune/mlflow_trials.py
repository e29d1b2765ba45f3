"""The MLflow runs of a tuning campaign: the campaign run, its trials nested under it.

* The **campaign run** (``tune <name>``) holds the resolved campaign config (``ray``,
  ``train``, ``tune``) as params; the shared prefix stages and the best trial's suffix
  stages are plan runs nested under it; at the end it gets the best value, the trial
  counts, ``campaign.yaml``, the report (tables and plots) and the promoted bundle
  (artifact ``bundle``: servable as ``runs:/<campaign run id>/bundle``).
* Each **trial** is a run nested under it, logged by Ray's own
  :class:`~ray.air.integrations.mlflow.MLflowLoggerCallback` in the Tune driver (the
  trial's sampled params; every report of the tuned stage, once per epoch, at step
  ``training_iteration``): :class:`TrialRuns` only adds the parent tag, one batch per
  report and the rule that tracking never fails the campaign.

The campaign's run id is kept in ``campaign.json`` (``Campaign.mlflow``), so ``--resume``
continues the same run; the killed driver's unfinished trial runs are marked KILLED.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray.air.integrations.mlflow import MLflowLoggerCallback

from emoray import storage
from emoray.bundle import TRAIN_STATE_FILE
from emoray.tracking import PARENT_TAG, Tracker, flatten_params, numeric, open_tracker

log = logging.getLogger("emoray.tracking")


class TrialRuns(MLflowLoggerCallback):
    """Ray's MLflow logger, each trial a run nested under the campaign run ``parent``; a
    failing store costs a warning, never the campaign."""

    def __init__(self, tracker: Tracker, parent: str, campaign: str):
        super().__init__(tracking_uri=tracker.uri, experiment_name=tracker.experiment,
                         tags={PARENT_TAG: parent, "emoray.kind": "trial",
                               "emoray.campaign": campaign})
        self._failed = False

    def _guard(self, what: str, fn, *args) -> None:
        if self._failed:
            return
        try:
            fn(*args)
        except Exception as err:
            log.warning("emoray tracking: %s failed (%s: %s); tuning goes on", what,
                        type(err).__name__, " ".join(str(err).split())[:300])
            if what == "setting up MLflow":
                self._failed = True

    def setup(self, *args, **kwargs) -> None:
        self._failed = False
        self._guard("setting up MLflow", super().setup, *args)

    def log_trial_start(self, trial) -> None:
        self._guard(f"starting the run of trial {trial}", super().log_trial_start, trial)

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        def batch() -> None:
            import time

            from mlflow.entities import Metric

            step = int(result.get("training_iteration", iteration))
            now = int(time.time() * 1000)
            metrics = [Metric(k, v, now, step) for k, v in numeric(result).items()]
            self.mlflow_util._get_client().log_batch(self._trial_runs[trial],
                                                     metrics=metrics)
        self._guard(f"logging trial {trial}", batch)

    def log_trial_end(self, trial, failed: bool = False) -> None:
        self._guard(f"ending the run of trial {trial}", super().log_trial_end, trial, failed)


def start_campaign(cfg, campaign) -> Tracker | None:
    """Open the campaign's store (``tracking.uri``, default ``STORAGE/mlflow.db`` for a
    local storage, else the work folder's parent) and its run; record both in
    ``campaign.mlflow``. Raises ConfigError for a URI that cannot work."""
    t = cfg.tracking
    if not t.enabled:
        return None
    root = Path(campaign.work_dir).parent if storage.is_uri(cfg.tune.storage) \
        else Path(cfg.tune.storage)
    tracker = open_tracker(t.uri, t.experiment, root)
    params = flatten_params(cfg.model_dump(mode="json", include={"ray", "train", "tune"}))
    run_id = tracker.start(f"tune {campaign.name}", params=params,
                           tags={"emoray.kind": "campaign", "emoray.campaign": campaign.name,
                                 "emoray.exp": campaign.exp})
    campaign.mlflow = {"uri": tracker.uri, "experiment": tracker.experiment,
                       "experiment_id": tracker.experiment_id, "run_id": run_id}
    return tracker


def tracker_of(campaign) -> Tracker | None:
    """The campaign's tracker as recorded in ``campaign.mlflow`` (None: not tracked)."""
    m = campaign.mlflow or {}
    if not m.get("run_id"):
        return None
    return Tracker(m["uri"], m["experiment"], m["experiment_id"])


def nest(campaign) -> tuple[Tracker | None, str | None]:
    """``run_plan(..., tracking=...)`` of a plan run nested under the campaign run
    (``(None, None)``: not tracked)."""
    tracker = tracker_of(campaign)
    return (tracker, campaign.mlflow["run_id"]) if tracker else (None, None)


def trial_callbacks(campaign) -> list:
    """Tune callbacks logging the trials (none when the campaign is not tracked)."""
    tracker = tracker_of(campaign)
    return [TrialRuns(tracker, campaign.mlflow["run_id"], campaign.name)] if tracker else []


def resume_campaign(campaign) -> None:
    """Open the campaign run again; mark the killed driver's RUNNING trial runs KILLED
    (Tune re-runs an interrupted trial as a new run)."""
    tracker = tracker_of(campaign)
    if tracker is None:
        return
    run_id = tracker.start(f"tune {campaign.name}", resume=campaign.mlflow["run_id"])
    try:
        stale = tracker.client.search_runs(
            [tracker.experiment_id], f"tags.`{PARENT_TAG}` = '{run_id}' and "
            "attributes.status = 'RUNNING'")
        for run in stale:
            tracker.end(run.info.run_id, "KILLED")
    except Exception as err:
        tracker._warn("closing the killed driver's trial runs", err)


def end_campaign(campaign, best: dict[str, Any] | None, counts: dict[str, int],
                 status: str = "FINISHED") -> None:
    """Log the campaign's outcome, report and promoted bundle; end its run."""
    tracker = tracker_of(campaign)
    if tracker is None:
        return
    run_id = campaign.mlflow["run_id"]
    metrics = {f"trials_{k.lower()}": v for k, v in counts.items()}
    if best:
        metrics[f"best_{campaign.metric}"] = best["value"]
        tracker.set_tags(run_id, {"emoray.best_trial": best.get("trial_id"),
                                  "emoray.best": best["path"]})
    tracker.log_metrics(run_id, metrics)
    if not storage.is_uri(campaign.exp):
        exp = Path(campaign.exp)
        try:
            from emoray.tune.report import write_report

            files = write_report(exp)
            tracker.log_artifacts(run_id, [Path(f) for f in files.values()], "report")
        except Exception as err:
            tracker._warn("writing the campaign report", err)
        tracker.log_artifacts(run_id, [exp / "campaign.yaml", exp / "campaign.json"])
    if best:                                  # the promoted bundle, servable from MLflow
        bundle = Path(best["source"] if storage.is_uri(campaign.exp) else best["path"])
        tracker.log_artifacts(run_id, [bundle], "bundle", exclude=(TRAIN_STATE_FILE,))
    tracker.end(run_id, status)
