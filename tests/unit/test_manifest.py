"""The manifest CSV adapter over real files: FIF/EDF EEG, WAV audio, MP4 and frame folders."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from emoray.datasets.base import DatasetInfo
from emoray.datasets.manifest import ManifestAdapter, write_manifest
from emoray.errors import ConfigError, DataError
from emoray.io.audio import write_audio
from emoray.io.eeg import write_eeg
from emoray.io.video import write_frames, write_mp4
from emoray.types import EEG, Audio

CHANNELS = ["Fp1", "Fp2", "Cz", "Pz"]
SFREQ = 128.0
RATE = 8000


def _eeg(order: list[str], seconds: float = 2.0) -> EEG:
    rng = np.random.default_rng(len(order))
    data = rng.standard_normal((len(order), int(SFREQ * seconds))) * 1e-5  # (C, T)
    data[:, 0] = [(CHANNELS + ["O1"]).index(n) * 1e-5 for n in order]   # marks the channel
    return EEG(data=data.astype(np.float32), sfreq=SFREQ, ch_names=list(order))


def _frames(n: int = 20) -> np.ndarray:
    frames = np.zeros((n, 32, 48, 3), dtype=np.uint8)  # (T, H, W, 3)
    for i in range(n):
        frames[i, 8:16, i:i + 6] = 255
    return frames


@pytest.fixture
def corpus(tmp_path):
    """A manifest of 4 good rows and 4 bad ones, over real files."""
    root = tmp_path / "corpus"
    write_eeg(root / "s1" / "t1_raw.fif", _eeg(CHANNELS))
    write_eeg(root / "s1" / "t2.edf", _eeg(["Pz", "Cz", "Fp2", "Fp1"]))   # other order
    write_eeg(root / "s2" / "t1_raw.fif", _eeg(CHANNELS + ["O1"]))          # extra channel
    t = np.arange(2 * RATE) / RATE
    write_audio(root / "s1" / "t1.wav", Audio((0.3 * np.sin(2 * np.pi * 220 * t))
                                               .astype(np.float32), RATE))
    write_mp4(root / "s1" / "t1.mp4", _frames(), 10.0)
    write_frames(root / "s2" / "frames", _frames(10), 5.0)
    rows = [
        {"subject": "s1", "session": "a", "trial": "1", "label": "Anger",
         "valence": 2.0, "arousal": 9.0, "eeg": root / "s1" / "t1_raw.fif",
         "audio": root / "s1" / "t1.wav", "video": root / "s1" / "t1.mp4", "task": "talk"},
        {"subject": "s1", "session": "a", "trial": "2", "label": 3,
         "eeg": root / "s1" / "t2.edf"},
        {"subject": "s2", "label": "neutral", "valence": 5.0,
         "eeg": root / "s2" / "t1_raw.fif", "video": root / "s2" / "frames"},
        {"subject": "s3", "arousal": 1.0, "audio": root / "s1" / "t1.wav"},
        # bad rows
        {"subject": "s3", "label": "surprise", "audio": root / "s1" / "t1.wav"},
        {"subject": "s3", "label": "anger", "eeg": root / "s3" / "gone.edf"},
        {"subject": "s3", "label": "anger", "valence": 10.0, "audio": root / "s1" / "t1.wav"},
        {"subject": "s4", "label": "calmness"},
    ]
    write_manifest(root / "manifest.csv", rows)
    return root


def _adapter(root, **kw) -> ManifestAdapter:
    return ManifestAdapter(str(root), va_scale=(1.0, 9.0), **kw)


def test_write_manifest_relative_paths(corpus):
    with open(corpus / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:9] == ["subject", "session", "trial", "label", "valence",
                                 "arousal", "eeg", "audio", "video"]
    assert rows[0]["eeg"] == "s1/t1_raw.fif" and rows[0]["task"] == "talk"
    assert rows[1]["audio"] == "" and rows[1]["label"] == "3"


def test_list_trials_good_and_rejected(corpus):
    specs, rejections = _adapter(corpus).list_trials()
    assert len(specs) + len(rejections) == 8
    assert [s.trial_id for s in specs] == ["manifest/s1/a/1", "manifest/s1/a/2",
                                           "manifest/s2/1/3", "manifest/s3/1/4"]
    first = specs[0]
    assert first.label == 2 and first.valence == pytest.approx(-0.75)
    assert first.arousal == pytest.approx(1.0)
    assert first.refs["eeg"]["path"] == str(corpus / "s1" / "t1_raw.fif")
    assert set(first.refs) == {"eeg", "audio", "video"}
    assert first.extra["task"] == "talk" and first.extra["valence_raw"] == 2.0
    assert specs[1].label == 3 and specs[1].valence is None
    assert specs[3].label is None and specs[3].arousal == pytest.approx(-1.0)
    kinds = {r.trial_id: r.kind for r in rejections}
    assert kinds == {"manifest/s3/1/5": "label", "manifest/s3/1/6": "unreadable",
                     "manifest/s3/1/7": "invalid_value", "manifest/s4/1/8": "invalid_value"}
    for rej in rejections:
        assert str(corpus / "manifest.csv") in rej.reason
    by_id = {r.trial_id: r for r in rejections}
    assert "manifest.csv:7:" in by_id["manifest/s3/1/6"].reason
    assert by_id["manifest/s3/1/6"].files == [str(corpus / "s3" / "gone.edf")]
    assert "surprise" in by_id["manifest/s3/1/5"].reason
    assert by_id["manifest/s3/1/7"].field == "valence"


def test_csv_path_as_root(corpus):
    specs, rejections = _adapter(corpus / "manifest.csv").list_trials()
    assert (len(specs), len(rejections)) == (4, 4)


def test_info(corpus):
    info = _adapter(corpus).info()
    assert isinstance(info, DatasetInfo)
    assert info.modalities == ["eeg", "audio", "video"]
    assert info.eeg_channels == CHANNELS and info.eeg_sfreq == SFREQ
    assert info.audio_rate == RATE and info.video_fps == pytest.approx(10.0)
    assert info.label_names == ["neutral", "sadness", "anger", "happiness", "calmness"]
    sampled = _adapter(corpus)
    sampled.video_sample_fps = 5.0
    assert sampled.info().video_fps == 5.0


def test_load_trial_shapes_and_channel_order(corpus):
    adapter = _adapter(corpus)
    adapter.video_sample_fps = 5.0
    adapter.video_max_size = 24
    specs, _ = adapter.list_trials()
    trial = adapter.load_trial(specs[0])
    assert trial.modalities() == ["eeg", "audio", "video"]
    assert trial.eeg.data.shape == (4, 256) and trial.eeg.ch_names == CHANNELS
    assert trial.audio.samples.shape == (2 * RATE,) and trial.audio.sample_rate == RATE
    assert trial.video.frames.shape == (10, 16, 24, 3) and trial.video.fps == 5.0
    # EDF stored in another order comes back in the dataset's order
    reordered = adapter.load_trial(specs[1])
    np.testing.assert_allclose(reordered.eeg.data[:, 0], [0, 1e-5, 2e-5, 3e-5], atol=1e-8)
    # the extra O1 channel is dropped; the frame folder has its own 5 fps
    third = adapter.load_trial(specs[2])
    assert third.eeg.ch_names == CHANNELS and third.video.frames.shape[0] == 10
    assert adapter.load_trial(specs[3]).modalities() == ["audio"]


def test_eeg_channels_option_and_missing_channel(corpus):
    adapter = _adapter(corpus, eeg_channels=["cz", "O1"])
    specs, _ = adapter.list_trials()
    assert adapter.info().eeg_channels == ["Cz", "O1"]
    assert adapter.load_trial(specs[2]).eeg.ch_names == ["Cz", "O1"]
    with pytest.raises(DataError) as err:
        adapter.load_trial(specs[0])
    assert err.value.kind == "missing_channel" and "O1" in err.value.reason


def test_custom_labels_and_dataset_name(tmp_path):
    write_audio(tmp_path / "a.wav", Audio(np.zeros(800, np.float32), 8000))
    write_manifest(tmp_path / "m.csv", [
        {"subject": "p1", "label": "POS", "audio": tmp_path / "a.wav"},
        {"subject": "p1", "label": "1", "audio": "a.wav"},
        {"subject": "p1", "label": "neutral", "audio": "a.wav"},
    ])
    adapter = ManifestAdapter(str(tmp_path / "m.csv"), label_names=["neg", "pos"],
                              dataset="mine")
    specs, rejections = adapter.list_trials()
    assert [s.label for s in specs] == [1, 1]
    assert specs[0].trial_id == "mine/p1/1/1"
    assert [r.kind for r in rejections] == ["label"]
    assert adapter.info().modalities == ["audio"] and adapter.info().eeg_channels is None


def test_duplicate_trial_and_non_numeric_rating(tmp_path):
    write_audio(tmp_path / "a.wav", Audio(np.zeros(800, np.float32), 8000))
    (tmp_path / "manifest.csv").write_text(
        "Subject,Trial,Valence,Audio\n"
        "p1,1,0.5,a.wav\n"
        "p1,1,0.2,a.wav\n"
        "p1,2,high,a.wav\n")
    specs, rejections = ManifestAdapter(str(tmp_path)).list_trials()
    assert len(specs) == 1 and specs[0].valence == 0.5
    assert [(r.kind, r.field) for r in rejections] == [("invalid_value", "trial"),
                                                        ("invalid_value", "valence")]
    assert "first at line 2" in rejections[0].reason


@pytest.mark.parametrize("header, missing", [
    ("label,eeg", "subject"), ("subject,eeg", "label|valence|arousal")])
def test_missing_columns(tmp_path, header, missing):
    (tmp_path / "manifest.csv").write_text(header + "\nx,y\n")
    with pytest.raises(DataError) as err:
        ManifestAdapter(str(tmp_path)).list_trials()
    assert err.value.kind == "layout" and missing in err.value.reason
    assert err.value.path == str(tmp_path / "manifest.csv")


def test_missing_or_unreadable_csv(tmp_path):
    with pytest.raises(DataError) as err:
        ManifestAdapter(str(tmp_path)).info()
    assert err.value.kind == "layout"
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"\xff\xfe\x00bad\x00\xff")
    with pytest.raises(DataError) as err:
        ManifestAdapter(str(bad)).list_trials()
    assert err.value.kind == "layout"


@pytest.mark.parametrize("options", [
    {"label_names": []}, {"label_names": ["a", "A"]}, {"va_scale": (5, 1)},
    {"va_scale": "x"}, {"eeg_channels": "Cz"}, {"dataset": "a/b"}, {"video_fps": 0},
])
def test_bad_options(tmp_path, options):
    with pytest.raises(ConfigError):
        ManifestAdapter(str(tmp_path), **options)


def test_registered_under_manifest(corpus):
    for module in ("eav", "deap", "seed", "dreamer", "iemocap"):
        pytest.importorskip(f"emoray.datasets.{module}")
    from emoray.datasets import get_adapter

    adapter = get_adapter("manifest", str(corpus), {"va_scale": [1, 9]})
    assert isinstance(adapter, ManifestAdapter) and adapter.va_scale == (1.0, 9.0)
    with pytest.raises(ConfigError):
        get_adapter("manifest", str(corpus), {"sfreq": 100})
