"""The four PNG plots of a campaign report: optimisation history, parameter importances,
metric slices per parameter and parallel coordinates (matplotlib, Agg backend).

Each takes the trials table of :func:`emoray.tune.report.trials_table` and the campaign's
space (``campaign.json``); a plot that cannot be drawn (too few finished trials) carries a
note instead of failing the report.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def format_cell(value: Any) -> str:
    """A table cell: 4 significant digits for floats, "-" for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}" if isinstance(value, (float, np.floating)) else str(value)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    _pyplot().close(fig)
    return path


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes)
    ax.set_axis_off()


_STYLES = {"failed": ("tab:red", "x"), "stopped early": ("tab:orange", "v"),
           "completed": ("tab:blue", "o"), "unfinished": ("tab:gray", "s")}


def _scatter(ax, xs, ys, rows: pd.DataFrame) -> None:
    """Points styled by outcome (completed, stopped early, failed, unfinished)."""
    kinds = np.where(rows["status"] == "ERROR", "failed",
                     np.where(rows["stopped_early"], "stopped early",
                              np.where(rows["status"] == "TERMINATED", "completed",
                                       "unfinished")))
    for kind, (colour, marker) in _STYLES.items():
        pick = kinds == kind
        if pick.any():
            ax.scatter(np.asarray(xs)[pick], np.asarray(ys)[pick], c=colour, marker=marker,
                       label=kind)


def plot_history(df: pd.DataFrame, metric: str, mode: str, path: Path, title: str) -> Path:
    """Each trial's metric in completion order, with the best so far."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = _pyplot().subplots(figsize=(7, 4))
    done = df[df[metric].notna()].sort_values("finished", kind="stable")
    if done.empty:
        _note(ax, f"no trial has reported {metric} yet")
    else:
        x, y = np.arange(1, len(done) + 1), done[metric].to_numpy(float)
        _scatter(ax, x, y, done)
        run = np.maximum.accumulate(y) if mode == "max" else np.minimum.accumulate(y)
        ax.step(x, run, where="post", color="black", label=f"best so far ({mode})")
        ax.set(xlabel="trial, in completion order", ylabel=f"{metric} (last report)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax.set_title(f"{title}: optimisation history ({len(done)} of {len(df)} trials reported)")
    return _save(fig, path)


def _distribution(spec: dict[str, Any]):
    from optuna.distributions import (CategoricalDistribution, FloatDistribution,
                                      IntDistribution)

    if spec.get("type") == "choice":
        return CategoricalDistribution(list(spec.get("values") or []))
    if spec.get("type") == "int":
        return IntDistribution(int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")),
                               step=int(spec.get("step") or 1))
    return FloatDistribution(float(spec["low"]), float(spec["high"]),
                             log=bool(spec.get("log")), step=spec.get("step"))


def _plain(value: Any, spec: dict[str, Any]) -> Any:
    """A table cell as the Python value Optuna and the space's choices hold."""
    if isinstance(value, float) and math.isnan(value):
        return None
    value = value.item() if isinstance(value, np.generic) else value
    return int(value) if spec.get("type") == "int" and value is not None else value


def param_importances(df: pd.DataFrame, metric: str, mode: str, space: dict[str, Any]
                      ) -> tuple[dict[str, float] | None, str]:
    """Optuna's importances (PED-ANOVA, no scikit-learn needed) over the TERMINATED trials
    that reported the metric, from an in-memory study rebuilt with their last values;
    ``(None, why)`` when they cannot be computed, else ``(importances, how)``."""
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    done = df[(df["status"] == "TERMINATED") & df[metric].notna()]
    if len(done) < 2 or not space:
        return None, (f"parameter importance needs at least 2 finished trials that "
                      f"reported {metric}; this campaign has {len(done)}")
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
            dists = {k: _distribution(s) for k, s in space.items()}
            for _, row in done.iterrows():
                try:
                    study.add_trial(optuna.trial.create_trial(
                        params={k: _plain(row[k], space[k]) for k in space},
                        distributions=dists, value=float(row[metric])))
                except (ValueError, TypeError):        # a value outside the space
                    continue
            if len(study.trials) < 2:
                return None, "fewer than 2 finished trials have parameters inside the space"
            found = get_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
            return dict(found), f"PED-ANOVA over {len(study.trials)} finished trials"
    except Exception as err:          # optuna raises several types on degenerate studies
        return None, f"parameter importance could not be computed ({err})"
    finally:
        optuna.logging.set_verbosity(level)


def plot_importance(df, metric, mode, space, path: Path, title: str) -> Path:
    """Horizontal bars of :func:`param_importances`, or the reason there are none."""
    found, how = param_importances(df, metric, mode, space)
    fig, ax = _pyplot().subplots(figsize=(7, 1.2 + 0.45 * max(len(space), 2)))
    if found is None:
        _note(ax, how)
    else:
        names = sorted(found, key=found.get)
        ax.barh(names, [found[n] for n in names], color="tab:blue")
        ax.set_xlabel(f"importance for {metric} ({how})")
        ax.grid(alpha=0.3, axis="x")
    ax.set_title(f"{title}: parameter importance")
    return _save(fig, path)


def _positions(values: pd.Series, spec: dict[str, Any]) -> np.ndarray:
    """Index of each value among the choices (NaN if absent)."""
    choices = list(spec.get("values") or [])
    return np.asarray([next((i for i, c in enumerate(choices) if c == _plain(v, spec)),
                            math.nan) for v in values], float)


def plot_slices(df, metric, space, path: Path, title: str) -> Path:
    """The metric against each parameter, one panel per parameter (log x for log ranges,
    the choices in order for a choice)."""
    done = df[df[metric].notna()]
    cols = min(3, max(len(space), 1))
    rows = max(1, math.ceil(len(space) / cols))
    fig, axes = _pyplot().subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax, (key, spec) in zip(flat, space.items()):
        if done.empty:
            _note(ax, f"{key}: no trial has reported {metric} yet")
            continue
        if spec.get("type") == "choice":
            xs = _positions(done[key], spec)
            ax.set_xticks(range(len(spec["values"])), [str(v) for v in spec["values"]])
        else:
            xs = pd.to_numeric(done[key], errors="coerce").to_numpy(float)
            ax.set_xscale("log" if spec.get("log") else "linear")
        _scatter(ax, xs, done[metric].to_numpy(float), done)
        ax.set(xlabel=key, ylabel=metric)
        ax.grid(alpha=0.3)
    for ax in flat[len(space):]:
        ax.set_axis_off()
    if space and not done.empty:
        flat[0].legend(fontsize=7)
    fig.suptitle(f"{title}: {metric} against each parameter")
    return _save(fig, path)


def _normalised(values: pd.Series, spec: dict[str, Any]) -> np.ndarray:
    if spec.get("type") == "choice":
        return _positions(values, spec) / max(len(spec.get("values") or []) - 1, 1)
    x = pd.to_numeric(values, errors="coerce").to_numpy(float)
    lo = float(spec["low"]) if spec.get("low") is not None else np.nanmin(x)
    hi = float(spec["high"]) if spec.get("high") is not None else np.nanmax(x)
    if spec.get("log") and lo > 0:
        x, lo, hi = np.log10(x), math.log10(lo), math.log10(hi)
    return (x - lo) / (hi - lo) if hi > lo else np.full_like(x, 0.5)


def plot_parallel(df, metric, mode, space, path: Path, title: str) -> Path:
    """Parallel coordinates: each parameter scaled to [0, 1] over its range (choices by
    index, log ranges in log), then the metric; lines coloured by the metric."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    plt = _pyplot()
    done = df[df[metric].notna()]
    fig, ax = plt.subplots(figsize=(1.8 * (len(space) + 1) + 2, 4.5))
    ax.set_title(f"{title}: parallel coordinates ({len(done)} trials)")
    if done.empty:
        _note(ax, f"no trial has reported {metric} yet")
        return _save(fig, path)
    y = done[metric].to_numpy(float)
    norm = Normalize(float(y.min()), max(float(y.max()), float(y.min()) + 1e-12))
    grid = np.vstack([_normalised(done[k], s) for k, s in space.items()] + [norm(y)]).T
    best, cmap = int(np.argmax(y) if mode == "max" else np.argmin(y)), plt.get_cmap("viridis")
    for i, line in enumerate(grid):                             # grid: (trials, params + 1)
        ax.plot(range(grid.shape[1]), line, color=cmap(norm(y[i])), marker="o", ms=3,
                lw=3 if i == best else 1.2, alpha=0.9)
    for j, spec in enumerate(space.values()):
        ends = ((spec["values"][0], spec["values"][-1]) if spec.get("type") == "choice"
                else (spec.get("low"), spec.get("high")))
        ax.text(j, -0.07, format_cell(ends[0]), ha="center", va="top", fontsize=7)
        ax.text(j, 1.07, format_cell(ends[1]), ha="center", va="bottom", fontsize=7)
    for j in range(grid.shape[1]):
        ax.axvline(j, color="black", lw=0.6)
    ax.set_xticks(range(grid.shape[1]), [*space, metric], rotation=20, ha="right", fontsize=8)
    ax.set(ylim=(-0.15, 1.15), yticks=[])
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=metric)
    return _save(fig, path)
