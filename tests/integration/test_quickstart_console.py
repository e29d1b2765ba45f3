"""`emoray quickstart`'s whole console output, as a user sees it in a file (no terminal):
every step once, a stage's first and last epoch, none of Ray's own lines, at most 150 lines;
and every process of its embedded Ray listening on loopback only.

The run is the quickstart itself (its own embedded Ray, all seven steps, Serve) on a
smaller corpus with 2-3 epochs per stage and one evaluation seed (``--seeds 1``; the two
more seeds of the default add one line per stage each): what is printed per step and per
stage is the same as with the defaults (the console shows a stage's first and last epoch,
whatever their number); the default run's count is in docs/quickstart.md.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import sockets

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SHORT = ["synth.trials_per_class=3", "synth.seconds=5", "train.stages.intra.epochs=2",
         "train.stages.inter.epochs=2", "train.stages.fusion.epochs=3"]
MAX_LINES = 150


def test_quickstart_prints_a_short_console_and_logs_the_rest(tmp_path):
    out = tmp_path / "qs"
    sets = [a for kv in SHORT + [f"serve.port={sockets.free_port()}"] for a in ("--set", kv)]
    with subprocess.Popen([sys.executable, "-m", "emoray", "quickstart", "--out", str(out),
                           "--num-cpus", "2", "--seeds", "1", *sets], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as proc:
        watcher = sockets.Watcher(proc.pid, every=1.0)
        try:
            stdout, _ = proc.communicate(timeout=1200)
        finally:
            seen = watcher.stop()
    res = subprocess.CompletedProcess(proc.args, proc.returncode, stdout)
    lines = res.stdout.splitlines()
    assert res.returncode == 0, res.stdout[-4000:]
    # its embedded Ray, Serve included, listened on loopback only (README "Security")
    wide = [s for s in seen if not s.loopback]
    print(f"quickstart: {len(lines)} console lines; {len(seen)} listening sockets in "
          f"{len({s.pid for s in seen})} processes, {len(wide)} not on loopback: "
          f"{sorted({s.process.split()[0] for s in wide})}")
    assert len(seen) >= 8, sorted(map(str, seen))     # GCS, raylet, agents, workers, proxy
    assert sockets.exposed(seen) == [], sorted(map(str, sockets.exposed(seen)))
    assert len(lines) <= MAX_LINES, f"{len(lines)} lines:\n" + res.stdout
    for step in range(1, 8):
        assert sum(line.startswith(f"[{step}/7]") for line in lines) == 1, res.stdout
    # none of Ray's own lines: worker prefixes, Ray Data plans, Train's reports, the
    # raylet's and Ray's loggers' warnings
    for noise in ("pid=", "Execution plan", "Starting execution", "TrainingReport(",
                  "(raylet)", "\tWARNING "):
        assert not any(noise in line for line in lines), (noise, res.stdout)
    # a stage's first run shows its first and last epoch, the evaluation's seeds the last
    epochs = [line for line in lines if re.match(r"\[(intra|inter|fusion)\] epoch ", line)]
    assert sorted({line.split()[2] for line in epochs}) == ["1/2", "1/3", "2/2", "3/3"]
    assert sum(line.startswith("[fusion] epoch 1/3") for line in epochs) == 1
    # the training run's; evaluation seed 0 is that same run (already finished)
    assert sum(line.startswith("[fusion] epoch 3/3") for line in epochs) == 1
    log = out / "logs" / "ray.log"
    assert any(f"logs: {log}" in line for line in lines)
    logged = log.read_text()
    assert "Execution plan of Dataset" in logged and "[fusion] epoch 2/3" in logged
    assert "quickstart done in" in lines[-2] and lines[-1].startswith("logs: ")
