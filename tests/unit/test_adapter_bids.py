"""The ``bids`` layout over trees written by mne_bids.write_raw_bids: entities, events.tsv,
channels.tsv bad channels, participants.tsv, and the audio/video-beside-the-EEG convention."""

from __future__ import annotations

import datetime
import warnings

import mne
import numpy as np
import pytest

from emoray.config import IngestConfig
from emoray.data.ingest import run_ingest, run_tasks_local
from emoray.datasets import get_adapter
from emoray.errors import ConfigError, DataError
from emoray.io.audio import write_audio
from emoray.io.video import write_mp4
from emoray.types import Audio

SFREQ = 100.0
CHANNELS = ["Fp1", "Fp2", "Cz", "Pz", "O1"]
SECONDS = 20.0
RATE = 8000
FPS = 5.0


def _raw(seed: int, events: list[tuple[float, str, float]] | None, bads=()):
    rng = np.random.default_rng(seed)
    data = 1e-5 * rng.standard_normal((len(CHANNELS), int(SFREQ * SECONDS)))   # (C, T)
    raw = mne.io.RawArray(data, mne.create_info(CHANNELS, SFREQ, "eeg"), verbose="error")
    raw.set_meas_date(datetime.datetime(2024, 5, 1, tzinfo=datetime.timezone.utc))
    raw.info["subject_info"] = {"sex": 2, "hand": 1,
                                "birthday": datetime.date(1990, 1, 2)}
    raw.info["bads"] = list(bads)
    if events:
        raw.set_annotations(mne.Annotations(
            [e[0] for e in events], [3.0] * len(events), [e[1] for e in events],
            extras=[{"valence": e[2], "arousal": 10 - e[2]} for e in events]))
    return raw


def _write(raw, root, **entities):
    from mne_bids import BIDSPath, write_raw_bids

    path = BIDSPath(root=root, datatype="eeg", **entities)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_raw_bids(raw, path, allow_preload=True, format="BrainVision",
                       overwrite=True, verbose="error")
    return path


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "bids"
    _write(_raw(1, [(1.0, "joy", 8.0), (6.0, "fear", 2.0), (12.0, "joy", 7.0)]), root,
           subject="01", session="1", task="film", run=1)
    _write(_raw(2, [(2.0, "fear", 3.0), (19.0, "joy", 6.0)]), root,    # post 3 s: 22 > 20 s
           subject="01", session="1", task="film", run=2)
    beside = _write(_raw(3, [(4.0, "joy", 9.0), (10.0, "rest", 5.0)], bads=["O1"]), root,
                    subject="02", session="1", task="film", run=1)
    _write(_raw(4, None), root, subject="03", session="1", task="film", run=1)  # no events
    _write(_raw(5, [(1.0, "joy", 5.0)]), root, subject="02", session="1", task="rest", run=1)
    # emoray's convention: the participant's audio and video beside the EEG
    stem = beside.copy().update(suffix=None, extension=None).basename
    folder = beside.directory
    ramp = np.arange(int(RATE * SECONDS), dtype=np.float32) / (RATE * SECONDS)   # t / 20 s
    write_audio(folder / f"{stem}_audio.wav", Audio(ramp, RATE))
    frames = np.zeros((int(FPS * SECONDS), 16, 16, 3), np.uint8)                 # (T, H, W, 3)
    frames[:] = (np.arange(len(frames)) * 2)[:, None, None, None]                # frame i: 2i
    write_mp4(folder / f"{stem}_video.mp4", frames, FPS)
    return root


MAP = {"joy": "happiness", "fear": "anger"}
OPTIONS = {"va_scale": [1, 9], "events": {"map": MAP, "post": 3.0}}


def test_entities_labels_and_rejections(tree):
    adapter = get_adapter("bids", str(tree), OPTIONS)
    specs, rejections = adapter.list_trials()
    ids = [s.trial_id for s in specs]
    assert ids == ["bids/01/1/task-film_run-1-001", "bids/01/1/task-film_run-1-002",
                   "bids/01/1/task-film_run-1-003", "bids/01/1/task-film_run-2-001",
                   "bids/02/1/task-film_run-1-001", "bids/02/1/task-rest_run-1-001"]
    assert [adapter.label_names[s.label] for s in specs] == [
        "happiness", "anger", "happiness", "anger", "happiness", "happiness"]
    # valence/arousal columns written by mne-bids from the annotations' extras
    assert specs[0].extra["valence_raw"] == 8.0
    assert specs[0].arousal == pytest.approx(-0.75)              # 2 on 1-9
    assert specs[0].extra["task"] == "film" and specs[0].extra["run"] == "1"
    assert specs[0].extra["participant"]["sex"] == "F"
    assert specs[0].extra["participant"]["age"] == "34"
    kinds = {r.trial_id: r.kind for r in rejections}
    assert kinds == {"bids/01/1/task-film_run-2-002": "truncated",
                     "bids/03/1/sub-03_ses-1_task-film_run-1_eeg.vhdr": "layout"}
    missing = next(r for r in rejections if r.kind == "layout")
    assert "sub-03_ses-1_task-film_run-1_events.tsv" in missing.reason
    info = adapter.info()
    assert any("'rest' x1" in n for n in info.notes)          # not in the map: no trial
    assert any("['O1']" in n for n in info.notes)


def test_bad_channels_left_out_and_media_cut_by_the_window(tree):
    adapter = get_adapter("bids", str(tree), OPTIONS)
    info = adapter.info()
    assert info.eeg_channels == ["Fp1", "Fp2", "Cz", "Pz"]     # O1 is bad in sub-02
    assert info.modalities == ["eeg", "audio", "video"] and info.audio_rate == RATE
    specs, _ = adapter.list_trials()
    trial = adapter.load_trial(specs[4])                        # sub-02, joy at 4 s
    assert trial.eeg.ch_names == ["Fp1", "Fp2", "Cz", "Pz"]
    assert trial.eeg.data.shape == (4, 300)
    assert trial.audio.samples.shape == (3 * RATE,)
    assert trial.audio.samples[0] == pytest.approx(4.0 / SECONDS, abs=1e-4)
    assert trial.video.frames.shape[0] == 15                    # 3 s at 5 fps
    assert trial.video.frames[0].mean() == pytest.approx(2 * 4.0 * FPS, abs=3)
    other = adapter.load_trial(specs[0])                        # sub-01 has no media
    assert other.audio is None and other.video is None
    assert other.eeg.ch_names == CHANNELS                        # ingest picks info's


def test_eeg_values_match_the_written_recording(tree):
    adapter = get_adapter("bids", str(tree),
                          {"va_scale": [1, 9], "events": {"map": MAP, "pre": 0.5}})
    specs, _ = adapter.list_trials()
    truth = _raw(1, None).get_data()
    trial = adapter.load_trial(specs[1])                         # fear at 6 s, -0.5 s
    assert trial.eeg.data.shape == (5, 350)
    np.testing.assert_allclose(trial.eeg.data, truth[:, 550:900], atol=1e-9)


def test_tasks_option_label_column_and_ingest(tree, tmp_path):
    adapter = get_adapter("bids", str(tree), dict(OPTIONS, tasks=["rest"]))
    assert [s.trial_id for s in adapter.list_trials()[0]] == ["bids/02/1/task-rest_run-1-001"]
    cfg = IngestConfig(layout="bids", source=str(tree), output=str(tmp_path / "out"),
                       segment_seconds=1.5, options=OPTIONS)
    report = run_ingest(cfg, runner=run_tasks_local, echo=lambda *_: None)
    assert report["found"] == 8 and report["ingested"] == 6 and report["reconciled"]
    assert report["records"] == 6 * 2 and report["records_per_modality"]["audio"] == 2
    # another column as the label: mne-bids's "value" codes (per recording: fear 1, joy 2)
    coded = get_adapter("bids", str(tree), {"tasks": ["film"], "va_scale": [1, 9], "events": {
        "label_column": "value", "map": {1: "anger", 2: "happiness"}, "post": 3.0}})
    specs, rejections = coded.list_trials()
    assert [(s.trial, s.label) for s in specs if s.subject == "01"][:3] == [
        ("task-film_run-1-001", 3), ("task-film_run-1-002", 2), ("task-film_run-1-003", 3)]
    assert specs[0].extra["trial_type"] == "joy"           # the other columns stay in extra


def test_bad_channels_stay_out_of_an_intersection_channel_set(tree, tmp_path):
    cfg = IngestConfig(layout="bids", source=str(tree), output=str(tmp_path / "out"),
                       channels="intersection", options=OPTIONS)
    report = run_ingest(cfg, runner=run_tasks_local, echo=lambda *_: None)
    assert report["channels"]["picked"] == ["Fp1", "Fp2", "Cz", "Pz"]   # O1 bad in sub-02
    assert report["ingested"] == 6 and report["rejected"] == 2


def test_bad_root_and_options(tmp_path):
    with pytest.raises(DataError) as err:
        get_adapter("bids", str(tmp_path), {}).list_trials()
    assert err.value.kind == "layout" and "BIDS root" in err.value.reason
    with pytest.raises(ConfigError):
        get_adapter("bids", str(tmp_path), {"tasks": "film"})
    with pytest.raises(ConfigError):
        get_adapter("bids", str(tmp_path), {"events": {"post": -9}})
