"""Ingest on a real local Ray over synthetic corpora in every layout, and bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from emoray.config import IngestConfig
from emoray.data.ingest import format_report, run_ingest
from emoray.data.shards import read_metadata, shard_files
from emoray.labels import EAV_CLASSES

pytestmark = pytest.mark.integration


def _ingest(source, out, **kw):
    cfg = IngestConfig(source=str(source), output=str(out), **kw)
    return run_ingest(cfg, echo=lambda *_: None)


def _records(out) -> pd.DataFrame:
    df = pd.concat([pq.read_table(f).to_pandas() for f in shard_files(out)], ignore_index=True)
    df["trial_id"] = df["record_id"].str.rsplit("/", n=1).str[0]
    return df


def _per_trial(df: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """One row per ingested trial joined with its ground truth (by the adapter's trial id)."""
    first = df.drop_duplicates("trial_id")
    merged = first.merge(truth, left_on="trial_id", right_on="record_id",
                         suffixes=("", "_truth"))
    assert len(merged) == len(first), "every ingested trial has its ground-truth row"
    return merged


def test_native_parallel_corpus(ray_cluster, native_corpus, tmp_path):
    report = _ingest(native_corpus, tmp_path / "rec", segment_seconds=2.0)
    truth = pd.read_csv(native_corpus / "ground_truth.csv")
    assert report["found"] == len(truth) == 10 and report["ingested"] == 10
    assert report["rejected"] == 0 and report["reconciled"]
    df = _records(tmp_path / "rec")
    assert len(df) == report["records"] == 10 * 2            # 4 s trials -> two 2 s segments
    assert df["record_id"].is_unique
    for col in ("eeg", "audio", "video"):
        assert df[col].notna().all()
    saved = yaml.safe_load((tmp_path / "rec" / "config.yaml").read_text())
    assert saved["ingest"]["segment_seconds"] == 2.0          # the resolved config travels
    meta = read_metadata(tmp_path / "rec")
    assert meta["dataset"]["eeg_sfreq"] == 500.0 and meta["dataset"]["audio_rate"] == 44100
    assert meta["label_names"] == list(EAV_CLASSES)
    assert meta["emoray_version"] and meta["source"] == str(Path(native_corpus).resolve())
    n_ch = len(meta["dataset"]["eeg_channels"])
    assert {tuple(s) for s in df["eeg_shape"]} == {(n_ch, 1000)}
    assert set(df["audio"].map(len)) == {88200}
    assert set(df["video"].map(len)) == {10}                    # 2 s at 5 fps
    # labels: the recorded label of the ground truth, per trial
    merged = _per_trial(df, truth)
    assert len(merged) == 10
    assert (merged["label_name"] == merged["label_truth"]).all()


def test_rerun_skips_then_overwrites_without_duplicates(ray_cluster, native_corpus, tmp_path):
    out = tmp_path / "rec"
    first = _ingest(native_corpus, out)
    messages = []
    again = run_ingest(IngestConfig(source=str(native_corpus), output=str(out)),
                       echo=messages.append)
    assert again["action"] == "skipped" and "up to date" in messages[0]
    changed = run_ingest(IngestConfig(source=str(native_corpus), output=str(out),
                                      segment_seconds=1.0), echo=messages.append)
    assert changed["action"].startswith("overwrote")
    assert any("overwriting" in m for m in messages)
    df = _records(out)
    assert df["record_id"].is_unique and len(df) == changed["records"] == 4 * first["records"]
    assert not list(out.glob(".staging-*")) and not list(out.glob(".old-*"))


def test_eav_layout_round_trip(ray_cluster, corpus_factory, tmp_path):
    corpus = corpus_factory(layout="eav", seconds=4.0)
    truth = pd.read_csv(corpus / "ground_truth.csv")
    report = _ingest(corpus, tmp_path / "rec", layout="eav", segment_seconds=2.0,
                     options={"task": "both"})
    assert report["found"] == report["ingested"] == len(truth)
    df = _records(tmp_path / "rec")
    speaking = df["extra"].str.contains('"speaking"')
    assert df.loc[speaking, "audio"].notna().all()
    assert df.loc[~speaking, "audio"].isna().all()       # listening trials: audio is null
    assert df["eeg"].notna().all() and df["video"].notna().all()
    merged = _per_trial(df, truth)
    assert len(merged) == len(truth)
    assert (merged["label_name"] == merged["label_truth"]).all()
    assert any("parity" in n for n in report["dataset"]["notes"])


def test_deap_layout_round_trip(ray_cluster, corpus_factory, tmp_path):
    corpus = corpus_factory(layout="deap", mode="nonparallel", seconds=6.0)
    truth = pd.read_csv(corpus / "ground_truth.csv")
    report = _ingest(corpus, tmp_path / "rec", layout="deap", segment_seconds=3.0)
    assert report["found"] == report["ingested"] == len(truth)
    df = _records(tmp_path / "rec")
    assert df["audio"].isna().all() and df["video"].isna().all()
    assert df["label"].isna().all()                      # DEAP has ratings, not classes
    assert df["valence"].between(-1, 1).all()
    meta = read_metadata(tmp_path / "rec")
    assert meta["dataset"]["eeg_sfreq"] == 128.0 and len(meta["dataset"]["eeg_channels"]) == 32
    # high/low valence follows the recorded label's position for most trials (rating noise)
    merged = _per_trial(df, truth)
    agree = merged["valence_high"] == (merged["label_valence"] > 0).astype(int)
    assert agree.mean() >= 0.8


def test_iemocap_layout_round_trip(ray_cluster, corpus_factory, tmp_path):
    corpus = corpus_factory(layout="iemocap", mode="nonparallel")
    truth = pd.read_csv(corpus / "ground_truth.csv")
    report = _ingest(corpus, tmp_path / "rec", layout="iemocap")
    excluded = truth["excluded"].astype(bool)
    assert report["found"] == len(truth)
    assert report["ingested"] == int((~excluded).sum())
    assert report["rejected_by_kind"].get("label", 0) == int(excluded.sum())
    df = _records(tmp_path / "rec")
    assert df["eeg"].isna().all() and df["audio"].notna().all()
    assert set(df["label_name"]) <= {"neutral", "happiness", "sadness", "anger"}
    merged = _per_trial(df, truth)
    assert (merged["label_name"] == merged["label_truth"]).all()   # exc merged into happiness
    assert (df["valid_seconds"] <= 5.0).all()            # short utterances padded to 5 s


def _break_corpus(src: Path, dst: Path) -> dict[tuple[str, str], str]:
    """Copy a native corpus and break five trials, one per kind of bad input."""
    shutil.copytree(src, dst)
    manifest = pd.read_csv(dst / "manifest.csv", keep_default_na=False)
    rows = manifest.to_dict("records")
    broken = {}
    # 1. a corrupt EEG file
    (dst / rows[0]["eeg"]).write_bytes(b"this is not a FIF file" * 50)
    broken[(str(rows[0]["subject"]), str(rows[0]["trial"]))] = "unreadable"
    # 2. a WAV at the wrong sample rate
    import soundfile as sf
    data, rate = sf.read(dst / rows[1]["audio"])
    sf.write(dst / rows[1]["audio"], data[::2], rate // 2)
    broken[(str(rows[1]["subject"]), str(rows[1]["trial"]))] = "sample_rate"
    # 3. an EEG file missing a channel
    from emoray.io.eeg import read_eeg, write_eeg
    eeg = read_eeg(dst / rows[2]["eeg"])
    eeg.data, eeg.ch_names = eeg.data[1:], eeg.ch_names[1:]
    write_eeg(dst / rows[2]["eeg"], eeg)
    broken[(str(rows[2]["subject"]), str(rows[2]["trial"]))] = "missing_channel"
    # 4. a label outside the label space
    rows[3]["label"] = "euphoria"
    broken[(str(rows[3]["subject"]), str(rows[3]["trial"]))] = "label"
    # 5. a truncated recording
    sf.write(dst / rows[4]["audio"], data[: len(data) // 3], rate)
    broken[(str(rows[4]["subject"]), str(rows[4]["trial"]))] = "truncated"
    pd.DataFrame(rows).to_csv(dst / "manifest.csv", index=False)
    return broken


def test_bad_input_is_reported_and_the_rest_goes_through(ray_cluster, native_corpus, tmp_path):
    broken = _break_corpus(native_corpus, tmp_path / "corpus")
    report = _ingest(tmp_path / "corpus", tmp_path / "rec", segment_seconds=2.0)
    assert report["found"] == 10 and report["rejected"] == 5 and report["ingested"] == 5
    assert report["reconciled"]
    assert report["rejected_by_kind"] == {k: 1 for k in broken.values()}
    text = format_report(report)
    for r in report["rejections"]:
        assert r["files"] and r["reason"]
        assert r["reason"] in text
    df = _records(tmp_path / "rec")
    assert len(df) == 5 * 2
    assert not set(zip(df["subject"], df["trial"])) & set(broken)
    assert {tuple(r["trial_id"].split("/")[1:4:2]) for r in report["rejections"]} == set(broken)


def test_nonparallel_native_corpora(ray_cluster, corpus_factory, tmp_path):
    corpus = corpus_factory(mode="nonparallel", layout="native")
    truth = pd.read_csv(corpus / "ground_truth.csv")
    eeg = _ingest(corpus / "eeg", tmp_path / "eeg", segment_seconds=2.0)
    speech = _ingest(corpus / "speech", tmp_path / "speech", segment_seconds=2.0)
    assert eeg["found"] + speech["found"] == len(truth)
    assert eeg["rejected"] == speech["rejected"] == 0
    eeg_df, speech_df = _records(tmp_path / "eeg"), _records(tmp_path / "speech")
    assert eeg_df["audio"].isna().all() and eeg_df["eeg"].notna().all()
    assert speech_df["eeg"].isna().all() and speech_df["audio"].notna().all()
    assert not set(eeg_df["subject"]) & set(speech_df["subject"])   # different people
    for df in (eeg_df, speech_df):                                    # shared label space
        assert set(df["valence_high"].dropna()) == {0, 1}


@pytest.mark.parametrize("layout", ["seed", "dreamer"])
def test_seed_and_dreamer_fakes_through_ingest(ray_cluster, tmp_path, layout):
    rng = np.random.default_rng(0)
    if layout == "seed":
        from emoray.datasets.seed import write_fake
        write_fake(tmp_path / "src", n_subjects=2, n_sessions=1, n_clips=3, seconds=4.0, rng=rng)
        n_trials, n_ch = 2 * 3, 62
    else:
        from emoray.datasets.dreamer import write_fake
        write_fake(tmp_path / "src", n_subjects=2, n_clips=3, seconds=4.0, rng=rng)
        n_trials, n_ch = 2 * 3, 14
    report = _ingest(tmp_path / "src", tmp_path / "rec", layout=layout, segment_seconds=2.0)
    assert report["found"] == report["ingested"] == n_trials and report["reconciled"]
    df = _records(tmp_path / "rec")
    assert len(df) == n_trials * 2
    assert {s[0] for s in df["eeg_shape"]} == {n_ch}
    assert df["valence"].notna().all()
