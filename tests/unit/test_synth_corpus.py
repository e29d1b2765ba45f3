"""Writing the synthetic corpus in every layout, read back with the real readers."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import yaml

from emoray.io.audio import read_audio
from emoray.io.eeg import read_eeg
from emoray.io.video import read_video
from emoray.labels import EAV_CLASSES
from emoray.synth.config import SynthConfig
from emoray.synth.corpus import read_ground_truth, write_corpus

TINY = dict(subjects=2, trials_per_class=1, seconds=2.0, video_size=48, audio_rate=22050)


def _write(tmp_path: Path, **values) -> tuple[SynthConfig, Path, dict]:
    base = {k: v for k, v in TINY.items()
            if not (k == "audio_rate" and values.get("layout") == "iemocap")}   # 16 kHz
    cfg = SynthConfig(**{**base, **values})
    out = tmp_path / "corpus"
    return cfg, out, write_corpus(cfg, out, progress=False)


def _common_checks(cfg: SynthConfig, out: Path, summary: dict):
    gt = read_ground_truth(out)
    assert len(gt) == sum(summary["trials"].values())
    for column in ("subject", "trial", "felt", "displayed", "label", "valence", "arousal",
                   "acted", "task", "record_id", "eeg", "audio", "video"):
        assert column in gt.columns
    for path in [p for col in ("eeg", "audio", "video") for p in gt[col] if p]:
        assert (out / path).exists(), path
    saved = yaml.safe_load((out / "synth_config.yaml").read_text())
    assert SynthConfig(**saved) == cfg
    return gt


@pytest.mark.parametrize("eeg_format, video_format",
                         [("fif", "mp4"), ("edf", "frames"), ("vhdr", "mp4")])
def test_native_parallel(tmp_path, eeg_format, video_format):
    cfg, out, summary = _write(tmp_path, eeg_format=eeg_format, video_format=video_format)
    assert summary["files"] == {"eeg": 10, "audio": 10, "video": 10}
    gt = _common_checks(cfg, out, summary)
    manifest = (out / "manifest.csv").read_text().splitlines()
    assert manifest[0].split(",")[:9] == ["subject", "session", "trial", "label", "valence",
                                         "arousal", "eeg", "audio", "video"]
    assert len(manifest) == 11
    row = gt.iloc[0]
    assert row["eeg"].endswith(f".{eeg_format}")
    eeg = read_eeg(out / row["eeg"])
    assert eeg.data.shape == (30, 1000) and eeg.sfreq == 500.0
    assert eeg.ch_names == cfg.eeg_channels
    assert 2e-6 < np.median(eeg.data.std(axis=1)) < 1e-4              # volts, tens of uV
    audio = read_audio(out / row["audio"])
    assert audio.sample_rate == 22050 and audio.samples.shape == (44100,)
    video = read_video(out / row["video"])
    assert video.frames.shape == (20, 48, 48, 3)
    if video_format == "frames":
        assert (out / row["video"]).is_dir()


def test_eav_layout(tmp_path):
    cfg, out, summary = _write(tmp_path, layout="eav")
    gt = _common_checks(cfg, out, summary)
    for sid, var in ((1, "seg"), (2, "seg1")):                    # the seg/seg1 trap
        folder = out / f"subject{sid:02d}"
        mat = scipy.io.loadmat(folder / "EEG" / f"subject{sid:02d}_eeg.mat")
        assert var in mat and mat[var].shape == (1000, 30, 5)     # (T, C, trials), uV
        assert 2.0 < np.median(mat[var].std(axis=0)) < 100.0
        label = scipy.io.loadmat(folder / "EEG" / f"subject{sid:02d}_eeg_label.mat")["label"]
        assert label.shape == (10, 5) and (label.sum(axis=0) == 1).all()
        rows = gt[gt.subject == sid]
        assert [EAV_CLASSES[r // 2] for r in label.argmax(axis=0)] == list(rows.label)
        speaking = rows[rows.task == "speaking"]
        assert len(list((folder / "Audio").glob("*.wav"))) == len(speaking) == 2
        assert len(list((folder / "Video").glob("*.mp4"))) == 5
        assert (rows.audio != "").sum() == 2
    from emoray.datasets import get_adapter

    specs, rejected = get_adapter("eav", str(out), {"task": "both"}).list_trials()
    assert len(specs) == 10 and not rejected
    assert {s.trial_id for s in specs} == set(gt.record_id)


def test_native_nonparallel(tmp_path):
    cfg, out, summary = _write(tmp_path, mode="nonparallel")
    assert summary["trials"] == {"eeg": 10, "speech": 10}
    assert summary["files"] == {"eeg": 10, "audio": 10, "video": 0}
    gt = _common_checks(cfg, out, summary)
    assert (out / "eeg" / "manifest.csv").exists() and (out / "speech" / "manifest.csv").exists()
    eeg_rows, speech_rows = gt[gt.corpus == "eeg"], gt[gt.corpus == "speech"]
    assert (eeg_rows.audio == "").all() and (speech_rows.eeg == "").all()
    assert not set(eeg_rows.subject_id) & set(speech_rows.subject_id)   # other people
    eeg_csv = (out / "eeg" / "manifest.csv").read_text().splitlines()[1].split(",")
    assert eeg_csv[6].startswith("eeg-01/")                     # relative to its own folder


def test_deap_layout(tmp_path):
    cfg, out, summary = _write(tmp_path, mode="nonparallel", layout="deap")
    gt = _common_checks(cfg, out, summary)
    with open(out / "data_preprocessed_python" / "s01.dat", "rb") as f:
        with pytest.raises(UnicodeDecodeError):                 # the latin1 trap
            pickle.load(f)
    with open(out / "data_preprocessed_python" / "s01.dat", "rb") as f:
        content = pickle.load(f, encoding="latin1")
    data, ratings = content["data"], content["labels"]
    assert data.shape == (5, 40, int(5.0 * 128))                 # 3 s baseline + 2 s
    assert ratings.shape == (5, 4) and (ratings >= 1).all() and (ratings <= 9).all()
    assert 2.0 < np.median(data[:, :32].std(axis=2)) < 100.0     # EEG in microvolts
    rows = gt[gt.subject == 1]
    np.testing.assert_allclose((ratings[:, 0] - 5) / 4, rows.label_valence, atol=1e-6)


def test_iemocap_layout(tmp_path):
    cfg, out, summary = _write(tmp_path, mode="nonparallel", layout="iemocap")
    gt = _common_checks(cfg, out, summary)
    assert summary["excluded"] == 2 and set(gt[gt.excluded].code) == {"fru", "xxx"}
    session = out / "IEMOCAP_full_release" / "Session1"
    wavs = sorted(session.glob("sentences/wav/*/*.wav"))
    assert len(wavs) == 10
    audio = read_audio(wavs[0])
    assert audio.sample_rate == 16000 and 2.0 <= audio.seconds <= 6.0
    text = "".join(p.read_text() for p in session.glob("dialog/EmoEvaluation/*.txt"))
    assert "\tfru\t" in text and "\txxx\t" in text and "calmness" not in text
    assert {n[:7] for n in gt.record_id} == {"iemocap"}


def test_same_seed_same_bytes(tmp_path):
    def build(name, seed):
        cfg = SynthConfig(**{**TINY, "layout": "eav", "seed": seed})
        write_corpus(cfg, tmp_path / name, progress=False)
        wavs = sorted((tmp_path / name).glob("subject*/Audio/*.wav"))
        mats = [scipy.io.loadmat(tmp_path / name / f"subject{s:02d}/EEG/subject{s:02d}_eeg.mat")
                for s in (1, 2)]
        return [w.read_bytes() for w in wavs], mats

    wav_a, mat_a = build("a", 3)
    wav_b, mat_b = build("b", 3)
    wav_c, mat_c = build("c", 4)
    assert wav_a == wav_b
    np.testing.assert_array_equal(mat_a[0]["seg"], mat_b[0]["seg"])
    np.testing.assert_array_equal(mat_a[1]["seg1"], mat_b[1]["seg1"])
    assert wav_a != wav_c
    assert not np.array_equal(mat_a[0]["seg"], mat_c[0]["seg"])
    assert (read_ground_truth(tmp_path / "a").equals(read_ground_truth(tmp_path / "b")))


def test_same_seed_same_videos(tmp_path):
    """A seeded corpus's MP4s are the same bytes twice (libx264's lookahead made them differ
    from one write to the next, in decoded pixels too)."""
    cfg = SynthConfig(**{**TINY, "seconds": 4.0, "video_size": 96, "seed": 0})
    videos = []
    for name in ("a", "b", "c"):
        write_corpus(cfg, tmp_path / name, progress=False)
        videos.append({p.name: p.read_bytes() for p in (tmp_path / name).rglob("*.mp4")})
    assert len(videos[0]) == 10 and videos[0] == videos[1] == videos[2]
