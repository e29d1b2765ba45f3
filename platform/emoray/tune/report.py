"""The trials of a campaign as a table (terminal, CSV, Parquet) and four plots (PNG).

Everything is read from the local campaign folder ``EXP`` (``STORAGE/NAME``) without a
running Ray: :class:`ray.tune.ExperimentAnalysis` loads Tune's experiment state (statuses,
configs, folders) and each trial's ``result.json``; ``campaign.json`` gives the metric, the
mode, the space and ``max_t``. A trial's value is its **last** report of the metric, as in
:func:`emoray.tune.campaign.promote` and in what OptunaSearch is told when a trial ends;
``best_<metric>`` is the best of all its reports. A killed driver leaves the trials it was
running saved as ``PENDING`` with their results so far (the table marks them interrupted).
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emoray import storage
from emoray.errors import ConfigError

#: written by :mod:`emoray.tune.campaign` (not imported from there: it may import us)
CAMPAIGN_FILE = "campaign.json"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b")
_NOT_PARAMS = ("trial_id", "status", "stopped_early", "iterations", "time_s", "checkpoint",
               "error", "finished")


# -- reading ------------------------------------------------------------------------------

def _folder(exp: str | Path) -> Path:
    if storage.is_uri(exp):
        raise ConfigError(f"{exp}: a campaign report reads a local folder; download the "
                          f"campaign first (emoray.storage.fetch_dir) and pass that folder")
    if not Path(exp).is_dir():
        raise ConfigError(f"{exp}: not a campaign folder: expected the folder STORAGE/NAME "
                          f"that `emoray tune` writes")
    return Path(exp)


def read_campaign(exp: str | Path) -> dict[str, Any]:
    """``EXP/campaign.json``, checked for ``metric``, ``mode`` and ``space``."""
    path = _folder(exp) / CAMPAIGN_FILE
    if not path.is_file():
        raise ConfigError(f"{exp}: not a campaign folder: expected {CAMPAIGN_FILE} written "
                          f"by `emoray tune`")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(info, dict) or not isinstance(info.get("metric"), str) \
            or info.get("mode") not in ("max", "min") or not isinstance(info.get("space"), dict):
        raise ConfigError(f"{path}: expected an object with 'metric' (a name), 'mode' "
                          f"('max' or 'min') and 'space' (dotted key -> range)")
    return info


def _analysis(exp: Path, metric: str, mode: str):
    if not any(exp.glob("experiment_state-*.json")):
        raise ConfigError(f"{exp}: no Tune experiment state (expected experiment_state-*.json,"
                          f" which Ray Tune writes once the campaign's trials start)")
    from ray.tune import ExperimentAnalysis

    try:
        return ExperimentAnalysis(str(exp.resolve()), default_metric=metric, default_mode=mode)
    except Exception as err:          # Tune raises several types for a damaged state file
        raise ConfigError(f"{exp}: the Tune experiment state cannot be read "
                          f"({type(err).__name__}: {err})") from None


def _creation_key(trial) -> tuple:
    """The experiment tag starts with the search algorithm's trial counter (restored on
    resume); the state file lists trials in no useful order."""
    found = re.match(r"(\d+)_", trial.experiment_tag or "")
    start = trial.run_metadata.start_time
    return (int(found.group(1)) if found else math.inf,
            start if start and math.isfinite(start) else math.inf, trial.trial_id)


def _error(trial) -> str:
    """The last exception line of the trial's ``error.txt`` (at most 200 characters)."""
    name = trial.run_metadata.error_filename
    if not name:
        return "failed (no error file)" if trial.status == "ERROR" else ""
    try:
        text = _ANSI.sub("", (Path(trial.path) / name).read_text(errors="replace"))
    except OSError:
        return f"failed (see {name} in the trial folder)"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    picked = [line for line in lines if _EXCEPTION_LINE.match(line)] or lines or [""]
    return picked[-1][:200]


def _last(hist: pd.DataFrame, column: str) -> Any:
    values = hist[column].dropna() if column in hist else ()
    return values.iloc[-1] if len(values) else None


def _row(trial, hist: pd.DataFrame, keys: list[str], metric: str, mode: str) -> dict:
    values = pd.to_numeric(hist[metric], errors="coerce") if metric in hist \
        else pd.Series(dtype=float)
    checkpoint = _last(hist, "checkpoint_path")
    if checkpoint is None and (name := _last(hist, "checkpoint_dir_name")):
        checkpoint = str(Path(trial.path) / name)            # a Tune checkpoint instead
    iters, time_s = _last(hist, "training_iteration"), _last(hist, "time_total_s")
    ended = trial.run_metadata.last_result_time
    ended = ended if ended and math.isfinite(ended) else _last(hist, "timestamp")
    return {"trial_id": trial.trial_id, "status": trial.status,
            "iterations": int(iters) if iters is not None else len(hist),
            **{k: trial.config.get(k) for k in keys},
            metric: float(values.iloc[-1]) if len(values) else math.nan,
            f"best_{metric}": float(values.max() if mode == "max" else values.min()),
            "time_s": float(time_s) if time_s is not None else math.nan,
            "checkpoint": str(checkpoint or ""), "error": _error(trial),
            "finished": pd.to_datetime(ended, unit="s", utc=True) if ended else pd.NaT}


def trials_table(exp: str | Path, metric: str, mode: str) -> pd.DataFrame:
    """One row per trial of the campaign in ``exp``, in the order the trials were created.

    Parameters
    ----------
    exp : str | Path
        The local campaign folder. Its ``campaign.json`` is optional here: it names the
        parameter columns (else the trials' searched keys) and gives ``max_t`` (else the
        most iterations any trial reached).
    metric, mode : str
        The metric the trials report; ``"max"`` or ``"min"``.

    Returns
    -------
    pandas.DataFrame
        ``trial_id, status, stopped_early, iterations``, a column per parameter (its dotted
        key), ``<metric>`` (last report, NaN if none), ``best_<metric>``, ``time_s``,
        ``checkpoint`` (last ``checkpoint_path``), ``error`` and ``finished`` (UTC time of
        the last report). ``stopped_early``: TERMINATED after fewer than ``max_t``
        iterations (ASHA stopped it). ``df.attrs`` holds ``metric``, ``mode``, ``max_t``.
    """
    if mode not in ("max", "min"):
        raise ConfigError(f"mode: expected 'max' or 'min', got {mode!r}")
    path = _folder(exp)
    info = read_campaign(path) if (path / CAMPAIGN_FILE).is_file() else {}
    ea = _analysis(path, metric, mode)
    trials = sorted(ea.trials, key=_creation_key)
    space = info.get("space") or {}
    keys = list(space) or list(dict.fromkeys(
        k for t in trials for k in (t.evaluated_params or {})))
    frames = ea.trial_dataframes
    hists = [frames.get(t.trial_id, pd.DataFrame()) for t in trials]
    reported = sorted({c for h in hists for c in h.columns if not c.startswith("config/")})
    if reported and metric not in reported:
        raise ConfigError(f"metric: no trial in {exp} reports {metric!r}; they report "
                          f"{reported}")
    rows = [_row(t, h, keys, metric, mode) for t, h in zip(trials, hists)]
    df = pd.DataFrame(rows, columns=["trial_id", "status", "iterations", *keys, metric,
                                     f"best_{metric}", *_NOT_PARAMS[4:]])
    for key in keys:                         # choices stay as given (None is not NaN)
        if space.get(key, {}).get("type") == "choice":
            df[key] = pd.Series([r[key] for r in rows], dtype=object)
    max_t = int(info.get("max_t") or 0) or int(df["iterations"].max() if len(df) else 0)
    early = (df["status"] == "TERMINATED") & (df["iterations"] >= 1) & (df["iterations"] < max_t)
    df.insert(2, "stopped_early", early.astype(bool))
    df.attrs.update(metric=metric, mode=mode, max_t=max_t)
    return df


# -- the terminal table -------------------------------------------------------------------

def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}" if isinstance(value, (float, np.floating)) else str(value)


def _best(df: pd.DataFrame, metric: str, mode: str):
    values = pd.to_numeric(df[metric], errors="coerce")
    if not values.notna().any():
        return None
    return values.idxmax() if mode == "max" else values.idxmin()


def format_table(df: pd.DataFrame, metric: str, mode: str | None = None) -> str:
    """A fixed-width text table of :func:`trials_table`'s rows, ``*`` on the best trial
    (``mode`` defaults to ``df.attrs["mode"]``), then each failed trial's error."""
    mode = mode or df.attrs.get("mode")
    if mode not in ("max", "min"):
        raise ValueError(f"format_table: mode must be 'max' or 'min', got {mode!r}")
    params = [c for c in df.columns if c not in (*_NOT_PARAMS, metric, f"best_{metric}")]
    short = [p.rsplit(".", 1)[-1] for p in params]
    short = short if len(set(short)) == len(short) else params
    best = _best(df, metric, mode)
    header = ["", "trial", "status", "iters", *short, metric, "time"]
    lines = [header]
    for idx, row in df.iterrows():
        status = str(row["status"])
        if row.get("stopped_early"):
            status += " (early stop)"
        elif status in ("PENDING", "RUNNING") and row["iterations"] > 0:
            status += " (interrupted)"
        lines.append(["*" if idx == best else "", str(row["trial_id"]), status,
                      str(row["iterations"]), *(_cell(row[p]) for p in params),
                      _cell(row[metric]),
                      "-" if pd.isna(row["time_s"]) else f"{row['time_s']:.1f}s"])
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    text = ["  ".join(c.rjust(w) if i > 2 else c.ljust(w)
                      for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in lines]
    text.insert(1, "-" * len(text[0]))
    if best is not None:
        text.append(f"* best {metric} ({mode}, last report): trial {df.at[best, 'trial_id']}")
    text += [f"trial {r.trial_id} failed: {r.error}" for r in df.itertuples() if r.error]
    return "\n".join(text)


# -- plots ----------------------------------------------------------------------------------

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
        ax.text(j, -0.07, _cell(ends[0]), ha="center", va="top", fontsize=7)
        ax.text(j, 1.07, _cell(ends[1]), ha="center", va="bottom", fontsize=7)
    for j in range(grid.shape[1]):
        ax.axvline(j, color="black", lw=0.6)
    ax.set_xticks(range(grid.shape[1]), [*space, metric], rotation=20, ha="right", fontsize=8)
    ax.set(ylim=(-0.15, 1.15), yticks=[])
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=metric)
    return _save(fig, path)


# -- the report -----------------------------------------------------------------------------

def _parquet_ready(df: pd.DataFrame) -> pd.DataFrame:
    """Object columns that pyarrow cannot type (choices of mixed types) as strings."""
    import pyarrow as pa

    out = df.copy()
    out.attrs = {}
    for col in out.columns[out.dtypes == object]:
        try:
            pa.array(out[col].tolist())
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            out[col] = [None if v is None else str(v) for v in out[col]]
    return out


def write_report(exp: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """Write the trials table and the plots of the campaign in ``exp``.

    Parameters
    ----------
    exp : str | Path
        The local campaign folder ``STORAGE/NAME`` (with ``campaign.json``).
    out : str | Path | None
        Output folder (created); default ``EXP/report``.

    Returns
    -------
    dict[str, Path]
        ``csv``, ``parquet`` (``trials.*``) and ``history``, ``importance``, ``slices``,
        ``parallel`` (``<key>.png``).
    """
    info = read_campaign(exp)
    metric, mode, space = info["metric"], info["mode"], info["space"]
    df = trials_table(exp, metric, mode)
    out = Path(out) if out is not None else Path(exp) / "report"
    out.mkdir(parents=True, exist_ok=True)
    title = str(info.get("name") or Path(exp).resolve().name)
    paths = {"csv": out / "trials.csv", "parquet": out / "trials.parquet"}
    df.to_csv(paths["csv"], index=False)
    _parquet_ready(df).to_parquet(paths["parquet"], index=False)
    paths["history"] = plot_history(df, metric, mode, out / "history.png", title)
    paths["importance"] = plot_importance(df, metric, mode, space, out / "importance.png",
                                          title)
    paths["slices"] = plot_slices(df, metric, space, out / "slices.png", title)
    paths["parallel"] = plot_parallel(df, metric, mode, space, out / "parallel.png", title)
    return paths
