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
from pathlib import Path
from typing import Any

import pandas as pd

from emoray import storage
from emoray.errors import ConfigError
from emoray.tune.plots import (format_cell, plot_history, plot_importance, plot_parallel,
                               plot_slices)

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
                      str(row["iterations"]), *(format_cell(row[p]) for p in params),
                      format_cell(row[metric]),
                      "-" if pd.isna(row["time_s"]) else f"{row['time_s']:.1f}s"])
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    text = ["  ".join(c.rjust(w) if i > 2 else c.ljust(w)
                      for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in lines]
    text.insert(1, "-" * len(text[0]))
    if best is not None:
        text.append(f"* best {metric} ({mode}, last report): trial {df.at[best, 'trial_id']}")
    text += [f"trial {r.trial_id} failed: {r.error}" for r in df.itertuples() if r.error]
    return "\n".join(text)


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
