"""What every benchmark shares: the machine record, the JSON result, the table, the
runner's flags (``emoray bench NAME`` and ``python benchmarks/NAME.py`` both end here).

Each compares side by side in one run, prints a table, writes
``benchmarks/results/<name>.json`` with ``{"name", "ratio", "target", "machine", "details"}``
and ends with the line ``<name>: ratio <r> (target <t>)``.
"""

from __future__ import annotations

import json
import math
import os
import platform as _stdlib_platform
from pathlib import Path
from typing import Any

from emoray.errors import ConfigError


def machine() -> dict[str, Any]:
    import torch

    return {"cpus": os.cpu_count(), "platform": _stdlib_platform.platform(),
            "python": _stdlib_platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.is_available()}


def write_result(out_dir: str | Path, name: str, ratio: float, target: float,
                 details: dict[str, Any]) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps({"name": name, "ratio": ratio, "target": target,
                                "machine": machine(), "details": details}, indent=2))
    return path


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A fixed-width text table."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line, sep] + ["  ".join(v.ljust(w) for v, w in zip(row, widths))
                                    for row in cells])


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks
    (NumPy's default); NaN for no values."""
    if not 0 <= q <= 100:
        raise ConfigError(f"percentile q: expected 0..100, got {q}")
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def runner_parser(doc: str | None):
    """The argument parser every ``benchmarks/*.py`` runner shares: ``--quick``, ``--out``,
    ``--features`` (a benchmark adds its own flags)."""
    import argparse

    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--quick", action="store_true", help="a smaller run for smoke checks")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--features", help="reuse this preprocess output folder instead of "
                        "generating one")
    return parser


def start_ray(ray_cfg, out_dir: str | Path, name: str) -> None:
    """Start the benchmark's embedded Ray with emoray's quiet console: Ray's own output to
    ``OUT/logs/NAME/logs/ray.log`` (printed first), the table on the console. A Ray already
    running (a test session, a joined cluster) is used as it is."""
    import ray

    from emoray.runtime import init_ray_logged

    if not ray.is_initialized():
        init_ray_logged(ray_cfg, Path(out_dir) / "logs" / name)
