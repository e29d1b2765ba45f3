"""The emoray command: help, config errors, and a real synth -> ingest -> inspect run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from emoray.cli import build_parser, main

SUBCOMMANDS = ["quickstart", "synth", "ingest", "preprocess", "inspect", "bench", "train",
               "evaluate", "tune", "serve", "predict", "submit", "jobs", "models"]


def _run(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "emoray", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout)


def test_help_lists_every_subcommand():
    res = _run("--help")
    assert res.returncode == 0
    for name in SUBCOMMANDS:
        assert name in res.stdout
    for name in SUBCOMMANDS:
        sub = _run(name, "--help")
        assert sub.returncode == 0 and "usage: emoray " + name in sub.stdout


def test_parser_knows_the_same_subcommands():
    actions = [a for a in build_parser()._subparsers._group_actions]
    assert sorted(actions[0].choices) == sorted(SUBCOMMANDS)


def test_verbose_is_a_flag_before_or_after_the_command():
    parser = build_parser()
    assert parser.parse_args(["-v", "quickstart"]).verbose
    assert parser.parse_args(["ingest", "src", "--out", "o", "--verbose"]).verbose
    assert not parser.parse_args(["quickstart"]).verbose


def test_config_errors_are_one_line_not_a_traceback(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "c"), "--set", "synth.subjcts=2"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'synth.subjects'" in err and "Traceback" not in err
    assert main(["ingest", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--layout", "nosuch"]) == 2
    assert "unknown dataset layout 'nosuch'" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path)]) == 2
    assert "holds no shards" in capsys.readouterr().err


@pytest.mark.integration
def test_synth_ingest_inspect_from_the_command_line(tmp_path, capsys):
    # synth and inspect need no Ray: called in-process (the same command lines, without an
    # interpreter start-up each; ``python -m emoray`` itself runs in the help test). ingest
    # runs as its own process: it starts its own embedded Ray (--num-cpus), as a user's does.
    corpus, rec = tmp_path / "corpus", tmp_path / "rec"
    code = main(["synth", str(corpus), "--layout", "eav", "--subjects", "1",
                 "--trials-per-class", "1", "--seconds", "4", "--set", "synth.video_size=32"])
    assert code == 0, capsys.readouterr().err
    assert yaml.safe_load((corpus / "config.yaml").read_text())["synth"]["layout"] == "eav"
    res = _run("ingest", str(corpus), "--layout", "eav", "--out", str(rec), "--num-cpus", "2",
               "--segment-seconds", "2", "--set", "ingest.options.task=both")
    assert res.returncode == 0, res.stderr
    assert "5 found = 5 ingested + 0 rejected (reconciled)" in res.stdout
    # the quiet console: Ray's own lines go to the run folder's log, which the console names
    log = rec / "logs" / "ray.log"
    printed = res.stdout + res.stderr
    assert f"logs: {log}" in res.stdout and "Execution plan" not in printed, printed
    assert len(printed.splitlines()) <= 10, printed
    assert "Execution plan of Dataset" in log.read_text()
    saved = yaml.safe_load((rec / "config.yaml").read_text())
    assert saved["ingest"]["options"] == {"task": "both"} and saved["ingest"]["layout"] == "eav"
    capsys.readouterr()
    code = main(["inspect", str(rec), "--png", str(tmp_path / "o.png")])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "10 records from 5 trials" in printed.out and Path(tmp_path / "o.png").exists()
