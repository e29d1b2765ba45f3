"""How a campaign runs and reports: its Tune ``RunConfig`` (:func:`run_config`) and its
console, one line per trial start and end (:class:`TrialLines`) instead of Ray Tune's
status tables unless the console is verbose (``emoray -v tune ...``; :mod:`emoray.console`)."""

from __future__ import annotations

import os
from typing import Any, Callable

from ray import tune

from emoray import console


def run_config(campaign, storage_root: str, callbacks: list) -> tune.RunConfig:
    """The campaign's ``RunConfig``: its folder, no retries, ``callbacks`` and the console's
    (Optuna's INFO lines, as Ray's, to the log file: its handler exists once imported)."""
    import optuna  # noqa: F401

    if console.is_driver():
        console.quiet_ray_loggers()
    return tune.RunConfig(name=campaign.name, storage_path=storage_root, verbose=verbosity(),
                          failure_config=tune.FailureConfig(max_failures=0),
                          callbacks=callbacks + console_callbacks(campaign.metric,
                                                                  campaign.max_t))


def verbosity() -> int:
    """Ray Tune's ``verbose``: 1 (its tables) on a verbose console or without emoray's
    console (a library call), 0 on emoray's quiet one (:class:`TrialLines` instead). Tune's
    own output engine prints its experiment header whatever the verbosity; its legacy one
    (Ray's switch ``RAY_AIR_NEW_OUTPUT=0``, read when a run starts) prints nothing at 0."""
    if console.verbose() or not console.is_driver():
        return 1
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    return 0


def console_callbacks(metric: str, max_t: int) -> list:
    """The console's Tune callbacks: :class:`TrialLines` where Tune's own tables are off."""
    return [TrialLines(metric, max_t)] if verbosity() == 0 else []


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class TrialLines(tune.Callback):
    """``tune: trial ID started: lr=0.001 ...`` and ``tune: trial ID done after N
    iterations: METRIC=V`` (``stopped early`` where the scheduler ended it, ``failed`` with
    the error's first line)."""

    def __init__(self, metric: str, max_t: int, echo: Callable[[str], None] = print) -> None:
        self.metric, self.max_t, self.echo = metric, max_t, echo

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        params = " ".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}"
                          for k, v in sorted(_flat(trial.config).items()))
        self.echo(f"tune: trial {trial.trial_id} started: {params}")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        last = trial.last_result or {}
        n = last.get("training_iteration", 0)
        value = last.get(self.metric)
        how = " (stopped early)" if n < self.max_t else ""
        self.echo(f"tune: trial {trial.trial_id} done after {n} iteration(s){how}: "
                  f"{self.metric}={_short(value)}")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        error = str(getattr(trial, "error_file", "") or "see `emoray tune report`")
        self.echo(f"tune: trial {trial.trial_id} failed ({error})")


def _flat(config: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, name + "."))
        else:
            out[name] = value
    return out
