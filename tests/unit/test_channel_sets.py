"""Channel sets at ingest (``ingest.channels``) over real files whose channels differ:
EDF and BrainVision written with MNE's exporter, a manifest, the ingest driver and its
shard writer (the tasks run in this process: the same work Ray runs per shard)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from emoray.config import IngestConfig
from emoray.data.channels import resolve_set
from emoray.data.ingest import format_report, run_ingest, run_tasks_local
from emoray.data.shards import unflatten
from emoray.datasets.manifest import write_manifest
from emoray.errors import ConfigError
from emoray.io.eeg import write_eeg
from emoray.types import EEG

SFREQ = 128.0
#: every channel the files use; a sample's value tells which channel it came from
ALL = ["Fp1", "Fp2", "Fz", "Cz", "Pz", "O1", "O2", "X1"]
FILES = {   # file -> channels as stored (case and order differ)
    "s1/t1.edf": ["Fp1", "Fp2", "Fz", "Cz", "Pz", "O1", "X1"],
    "s1/t2.vhdr": ["Fz", "Cz", "Pz", "O1", "Fp1", "X1"],
    "s2/t1.edf": ["FZ", "CZ", "PZ", "O1", "O2", "FP1", "X1"],
}


def _eeg(names: list[str]) -> EEG:
    ids = [[a.lower() for a in ALL].index(n.lower()) for n in names]
    data = np.tile(np.array(ids, np.float64)[:, None] + 1.0, (1, int(4 * SFREQ))) * 1e-5
    return EEG(data=data.astype(np.float32), sfreq=SFREQ, ch_names=list(names))   # (C, T)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    rows = []
    for i, (rel, names) in enumerate(FILES.items()):
        write_eeg(root / rel, _eeg(names))
        rows.append({"subject": rel.split("/")[0], "trial": str(i),
                     "label": ["neutral", "anger"][i % 2], "eeg": root / rel})
    write_manifest(root / "manifest.csv", rows)
    return root


def _ingest(corpus, out, channels) -> dict:
    cfg = IngestConfig(source=str(corpus), output=str(out), segment_seconds=2.0,
                       channels=channels)
    return run_ingest(cfg, runner=run_tasks_local, echo=lambda line: None)


def _stored(out) -> dict[str, list[str]]:
    """record id -> the channels its stored EEG came from (by the marked values)."""
    found = {}
    for f in sorted((out / "shards").glob("part-*.parquet")):
        for r in pq.read_table(f).to_pylist():
            eeg = unflatten(r["eeg"], r["eeg_shape"])                 # (C, T)
            found[r["record_id"]] = [ALL[int(round(v * 1e5)) - 1] for v in eeg[:, 0]]
    return found


def test_without_a_set_files_lacking_the_first_files_channels_are_rejected(corpus, tmp_path):
    report = _ingest(corpus, tmp_path / "o", None)
    assert (report["ingested"], report["rejected"]) == (1, 2)
    assert report["rejected_by_kind"] == {"missing_channel": 2}
    assert "channels" not in report


def test_intersection_keeps_every_file_and_reports_what_was_dropped(corpus, tmp_path):
    report = _ingest(corpus, tmp_path / "o", "intersection")
    assert (report["ingested"], report["rejected"], report["records"]) == (3, 0, 6)
    picked = ["Fp1", "Fz", "Cz", "Pz", "O1", "X1"]             # the first file's order
    assert report["channels"]["picked"] == picked
    assert report["dataset"]["eeg_channels"] == picked
    dropped = {k.split("mixed")[-1][2:]: v for k, v in report["channels"]["dropped"].items()}
    assert dropped == {"s1/t1.edf": ["Fp2"], "s2/t1.edf": ["O2"]}
    stored = _stored(tmp_path / "o")
    assert len(stored) == 6 and all(chans == picked for chans in stored.values())
    text = format_report(report)
    assert "channels (intersection): 6 picked from 3 EEG files: Fp1, Fz, Cz, Pz, O1, X1" in text
    assert "dropped Fp2 from 1 file(s): t1.edf" in text
    assert "dropped O2 from 1 file(s): t1.edf" in text


def test_a_montage_keeps_its_channels_common_to_all_files(corpus, tmp_path):
    report = _ingest(corpus, tmp_path / "o", "standard_1020")
    picked = ["Fp1", "Fz", "Cz", "Pz", "O1"]                   # no X1: not in the montage
    assert report["channels"]["picked"] == picked and report["ingested"] == 3
    assert all(v == picked for v in _stored(tmp_path / "o").values())
    assert any(v == ["Fp2", "X1"] for v in report["channels"]["dropped"].values())


def test_a_list_picks_those_channels_in_that_order(corpus, tmp_path):
    report = _ingest(corpus, tmp_path / "o", ["CZ", "fp1", "O2"])
    assert report["channels"]["picked"] == ["Cz", "Fp1", "O2"]
    # two files lack O2: rejected, naming it; the third is picked in the listed order
    assert (report["ingested"], report["rejected_by_kind"]) == (1, {"missing_channel": 2})
    assert all("O2" in r["reason"] for r in report["rejections"])
    assert list(_stored(tmp_path / "o").values())[0] == ["Cz", "Fp1", "O2"]
    assert "lacks O2: rejected" in format_report(report)


def test_bad_sets_fail_before_anything_is_read(corpus, tmp_path):
    with pytest.raises(ConfigError, match="neither 'intersection' nor an MNE montage"):
        _ingest(corpus, tmp_path / "o", "standard_9999")
    with pytest.raises(ConfigError, match="twice"):
        resolve_set(["Cz", "CZ"], {})
    with pytest.raises(ConfigError, match="no channel is common"):
        resolve_set("intersection", {"a": ["Cz"], "b": ["Fz"]})
