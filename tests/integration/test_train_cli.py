"""`emoray train` in-process on real local Ray: config mistakes (and a tracking URI that
cannot work) exit 2 with one line naming the field, before anything starts.

What a finished call writes (the run folder: config, plan state, bundle, PNG plots) and that
an identical call then skips the finished stage are checked in test_train_faults.py, on the
run that call resumes after its driver was killed: one tiny fusion run serves both (each
Ray Train start-up costs about 25 s on 2 cores)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from emoray.cli import main

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "train" / "fusion-tiny.yaml")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def features(eav_features):
    return eav_features / "feat"


def test_config_mistakes_exit_2_with_one_line(features, tmp_path, capsys):
    base = ["train", "--config", TINY, str(features), "--out", str(tmp_path)]
    assert main(base + ["--set", "train.stages.intro.epochs=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "unknown stage 'intro'" in err
    assert "valid stages: ['intra', 'inter', 'classifier', 'fusion']" in err

    assert main(base + ["--set", "train.stages.inter.k=4"]) == 2      # inter needs intra
    assert "starts from the intra stage's bundle" in capsys.readouterr().err

    assert main(base + ["--set", "train.stages.fusion.epochs=many"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "fusion.epochs" in err and "'many'" in err and "integer" in err

    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stages:\n    fusion: {epochs: 1}\n    jmml: {}\n")
    assert main(["train", "--config", str(bad), str(features), "--out", str(tmp_path)]) == 2
    assert "unknown stage 'jmml'" in capsys.readouterr().err

    assert main(["train", "--config", TINY, str(tmp_path / "nowhere"),
                 "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("emoray train: error:")

    # an MLflow tracking URI that cannot work: one line naming it, before Ray or a store
    for uri, what in ((f"http://127.0.0.1:{_closed_port()}", "no MLflow server answers"),
                      (str(tmp_path / "mlruns"), "a file store")):
        assert main(base + ["--tracking-uri", uri]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert err.startswith(f"emoray train: error: tracking.uri {uri}: ") and what in err
    assert list(tmp_path.iterdir()) == [bad]                          # nothing was started
