"""``emoray models``: every registered encoder x preset and whole model x preset, with
positive parameter and FLOP counts at the default contract; the console script agrees."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from emoray.cli.commands import run
from emoray.cli.models import BRAINDECODE_SHOWN, PRESETS, format_table
from emoray.models import encoder_names, model_names

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def listing() -> dict:
    """``emoray models --json`` run in this process (the command's own handler)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run(["models", "--json"]) == 0
    return json.loads(out.getvalue())


def _rows(listing: dict, kind: str) -> dict[tuple[str, str], dict]:
    return {(r["name"], r["preset"]): r for r in listing[kind]}


def test_every_encoder_and_preset_is_listed_with_its_cost(listing):
    rows = _rows(listing, "encoders")
    expected = {(n, p) for n in encoder_names() for p in PRESETS}
    expected |= {(f"braindecode:{m}", p) for m in BRAINDECODE_SHOWN for p in PRESETS}
    assert set(rows) == expected
    for key, row in rows.items():
        assert row["params"] > 0 and row["flops"] > 0, key
        assert row["input"] and all(all(d > 0 for d in s) for s in row["input"].values())
    assert rows[("eegformer", "tiny")]["input"] == {"eeg": [30, 500]}          # EAV: 5 s
    assert rows[("eegformer", "tiny")]["contract"]["sfreq"] == 100.0
    assert rows[("vit", "tiny")]["input"] == {"video": [25, 3, 224, 224]}
    assert listing["refused"] == {}


def test_our_encoders_grow_with_their_preset(listing):
    rows = _rows(listing, "encoders")
    for name in encoder_names():
        params = [rows[(name, p)]["params"] for p in PRESETS]
        flops = [rows[(name, p)]["flops"] for p in PRESETS]
        assert params[0] < params[1] < params[2], (name, params)
        assert flops[0] <= flops[1] <= flops[2], (name, flops)


def test_every_whole_model_and_preset_is_listed(listing):
    rows = _rows(listing, "models")
    assert set(rows) == {(n, p) for n in model_names() for p in PRESETS}
    for key, row in rows.items():
        assert row["params"] > 0 and row["flops"] > 0, key
    fusion = rows[("fusion", "tiny")]
    assert set(fusion["input"]) == {"eeg", "logmel", "video"}
    # the fused model costs at least its encoders
    enc = _rows(listing, "encoders")
    assert fusion["flops"] >= sum(enc[(n, "tiny")]["flops"] for n in ("eegformer", "ast", "vit"))


def test_the_table_names_every_row(listing):
    table = format_table(listing)
    for row in listing["encoders"] + listing["models"]:
        assert row["name"] in table
    assert "braindecode:<Model>" in table


def test_console_script_prints_the_same_json(listing):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "emoray", "models", "--json"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr == ""                              # building is quiet
    again = json.loads(done.stdout)
    assert [(r["name"], r["preset"], r["params"], r["flops"]) for r in again["encoders"]] == \
        [(r["name"], r["preset"], r["params"], r["flops"]) for r in listing["encoders"]]
    assert again["contract"] == listing["contract"]
