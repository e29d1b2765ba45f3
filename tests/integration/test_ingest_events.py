"""Ingest on a real local Ray of one recording whose events are given three ways (EDF+
annotations written by MNE's exporter, an events TSV beside a plain EDF, a BIDS tree written
by mne_bids): the same records, and bad recordings reported without sinking the batch."""

from __future__ import annotations

import json
import warnings

import mne
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from emoray.cli import main
from emoray.config import IngestConfig
from emoray.data.ingest import format_report, run_ingest
from emoray.data.shards import shard_files
from emoray.datasets.manifest import write_manifest

pytestmark = pytest.mark.integration

SFREQ = 128.0
CHANNELS = ["Fp1", "Fp2", "Cz", "Pz"]
EVENTS = [(2.0, "happy", 8.0), (9.0, "sad", 2.0), (16.5, "happy", 7.0), (24.0, "calm", 6.0)]
MAP = {"happy": "happiness", "sad": "sadness", "calm": "calmness"}
OPTIONS = {"va_scale": [1, 9], "events": {"map": MAP, "post": 4.0, "baseline": [-1.0, 0.0]}}


def _raw(annotations: bool) -> mne.io.RawArray:
    data = 1e-5 * np.random.default_rng(3).standard_normal((4, int(32 * SFREQ)))  # (C, T)
    raw = mne.io.RawArray(data, mne.create_info(CHANNELS, SFREQ, "eeg"), verbose="error")
    if annotations:
        raw.set_annotations(mne.Annotations(
            [e[0] for e in EVENTS], [4.0] * len(EVENTS), [e[1] for e in EVENTS],
            extras=[{"valence": e[2], "arousal": 5.0} for e in EVENTS]))
    return raw


def _export(raw, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mne.export.export_raw(str(path), raw, overwrite=True, verbose="error")
    return path


def _records(out) -> pd.DataFrame:
    df = pd.concat([pq.read_table(f).to_pandas() for f in shard_files(out)], ignore_index=True)
    df["onset"] = df["extra"].map(lambda e: json.loads(e)["onset"])
    return df.sort_values(["onset", "segment"]).reset_index(drop=True)


@pytest.fixture
def sources(tmp_path):
    from mne_bids import BIDSPath, write_raw_bids

    edf = _export(_raw(True), tmp_path / "rec.edf")
    _export(_raw(False), tmp_path / "plain.edf")
    (tmp_path / "plain_events.tsv").write_text("onset\tduration\ttrial_type\n" + "".join(
        f"{o}\t4\t{d}\n" for o, d, _ in EVENTS))
    (tmp_path / "broken.edf").write_bytes(b"not an EDF file at all")
    write_manifest(tmp_path / "annotations.csv", [
        {"subject": "p1", "trial": "rec", "eeg": edf, "events": "annotations"},
        {"subject": "p2", "trial": "rec", "eeg": tmp_path / "broken.edf",
         "events": "annotations"}])
    write_manifest(tmp_path / "file.csv", [
        {"subject": "p1", "trial": "rec", "eeg": tmp_path / "plain.edf",
         "events": tmp_path / "plain_events.tsv"}])
    raw = mne.io.read_raw(edf, verbose="error")
    raw.set_annotations(_raw(True).annotations)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_raw_bids(raw, BIDSPath(subject="p1", task="film", datatype="eeg",
                                     root=tmp_path / "bids"), overwrite=True, verbose="error")
    return tmp_path


def test_every_way_ingests_to_the_same_records(ray_cluster, sources, tmp_path):
    reports, frames = {}, {}
    for name, layout, source in [("annotations", "manifest", sources / "annotations.csv"),
                                 ("file", "manifest", sources / "file.csv"),
                                 ("bids", "bids", sources / "bids")]:
        cfg = IngestConfig(layout=layout, source=str(source), segment_seconds=2.0,
                           output=str(tmp_path / f"out-{name}"), options=OPTIONS)
        reports[name] = run_ingest(cfg, echo=lambda *_: None)
        frames[name] = _records(tmp_path / f"out-{name}")
    bad = reports["annotations"]
    assert bad["found"] == 5 and bad["ingested"] == 4 and bad["rejected"] == 1
    assert bad["reconciled"] and bad["rejections"][0]["files"] == [str(sources / "broken.edf")]
    assert "Traceback" not in format_report(bad)
    reference = frames["annotations"]
    assert len(reference) == 4 * 2                                   # 4 s trials, 2 s segments
    assert list(reference["label_name"][::2]) == [MAP[e[1]] for e in EVENTS]
    assert list(reference["onset"][::2]) == [e[0] for e in EVENTS]
    for name in ("file", "bids"):
        df = frames[name]
        assert reports[name]["rejected"] == 0
        assert list(df["label_name"]) == list(reference["label_name"]), name
        assert list(df["onset"]) == list(reference["onset"]), name
        assert list(df["start_seconds"]) == list(reference["start_seconds"])
        np.testing.assert_allclose(np.stack(df["eeg"]), np.stack(reference["eeg"]), atol=2e-8)
    assert frames["bids"]["valence"].notna().all()                 # events.tsv columns
    assert reference["valence"].isna().all()                      # EDF keeps no extras


def test_cli_bids_with_events_map(ray_cluster, sources, tmp_path, capsys):
    code = main(["ingest", str(sources / "bids"), "--out", str(tmp_path / "cli"),
                 "--layout", "bids", "--set",
                 "ingest.options.events.map={happy: happiness, sad: sadness, calm: calmness}",
                 "--set", "ingest.options.events.post=4", "--set", "ingest.segment_seconds=2",
                 "--set", "ingest.options.va_scale=[1, 9]"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "4 found = 4 ingested + 0 rejected" in out.out
    code = main(["ingest", str(sources / "bids"), "--out", str(tmp_path / "bad"),
                 "--layout", "bids", "--set", "ingest.options.events.pre=-1"])
    err = capsys.readouterr().err
    assert code == 2 and "events.pre" in err and "Traceback" not in err
    code = main(["ingest", str(sources), "--out", str(tmp_path / "nobids"), "--layout", "bids"])
    err = capsys.readouterr().err
    assert code == 2 and "expected a BIDS root" in err and "Traceback" not in err
