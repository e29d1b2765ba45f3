"""IEMOCAP adapter against wavs + EmoEvaluation files written by its twin writer."""

from __future__ import annotations

import numpy as np
import pytest

from emoray.datasets import get_adapter
from emoray.datasets.iemocap import IEMOCAP_CLASSES, IEMOCAP_CODES, write_session
from emoray.errors import ConfigError, DataError
from emoray.types import Audio

CODES = ["neu", "hap", "exc", "sad", "ang", "fru", "xxx"]


def _utterances(session: int, rng: np.random.Generator) -> list[dict]:
    out = []
    for k, code in enumerate(CODES):
        dialog = f"Ses{session:02d}F_impro01" if k < 4 else f"Ses{session:02d}M_script02_1"
        speaker = "FM"[k % 2]
        out.append({"dialog": dialog, "name": f"{dialog}_{speaker}{k:03d}",
                    "audio": Audio(rng.uniform(-0.3, 0.3, 800 + 100 * k).astype(np.float32),
                                   16000),
                    "code": code, "vad": (1.0 + k * 0.5, 5.0 - k * 0.5, 3.0),
                    "start": 2.0 * k, "end": 2.0 * k + 1.25})
    return out


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    for session in (1, 2):
        write_session(tmp_path, session, _utterances(session, rng))
    return tmp_path


def test_layout_written(corpus):
    base = corpus / "IEMOCAP_full_release" / "Session1"
    txt = (base / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt").read_text()
    lines = txt.splitlines()
    assert lines[0] == "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]"
    assert lines[2] == "[0.0000 - 1.2500]\tSes01F_impro01_F000\tneu\t[1.0000, 5.0000, 3.0000]"
    assert lines[3].startswith("C-E1:\tNeutral;") and "A-E1:\tval 1; act 5; dom  3;" in txt
    wav = base / "sentences" / "wav" / "Ses01F_impro01" / "Ses01F_impro01_M001.wav"
    assert wav.is_file()


def test_four_classes(corpus):
    adapter = get_adapter("iemocap", str(corpus))
    info = adapter.info()
    assert info.label_names == list(IEMOCAP_CLASSES) and info.modalities == ["audio"]
    assert info.audio_rate == 16000
    specs, rejections = adapter.list_trials()
    assert len(specs) + len(rejections) == 2 * len(CODES)
    assert len(specs) == 2 * 5
    by_code = {s.extra["code"]: s for s in specs if s.session == "Session1"}
    assert by_code["neu"].label == 0 and by_code["sad"].label == 2 and by_code["ang"].label == 3
    assert by_code["hap"].label == by_code["exc"].label == 1          # exc merged into hap
    rejected = {r.trial_id.rsplit("/", 1)[1]: r for r in rejections if "/Session1/" in r.trial_id}
    fru = rejected["Ses01M_script02_1_M005"]
    assert fru.kind == "label" and "'fru'" in fru.reason and "4-class set" in fru.reason
    assert "'xxx'" in rejected["Ses01M_script02_1_F006"].reason


def test_ids_labels_and_audio(corpus):
    adapter = get_adapter("iemocap", str(corpus / "IEMOCAP_full_release"))
    specs, _ = adapter.list_trials()
    spec = next(s for s in specs if s.trial == "Ses02F_impro01_M001")
    assert spec.subject == "Ses02M" and spec.session == "Session2"    # speaker from last field
    assert spec.trial_id == "iemocap/Ses02M/Session2/Ses02F_impro01_M001"
    assert spec.valence == pytest.approx((1.5 - 3.0) / 2.0)
    assert spec.arousal == pytest.approx((4.5 - 3.0) / 2.0)
    assert spec.extra["dominance"] == 3.0 and spec.extra["improvised"] is True
    assert spec.extra["start"] == 2.0 and spec.extra["end"] == 3.25
    trial = adapter.load_trial(spec)
    assert trial.modalities() == ["audio"]
    assert trial.audio.sample_rate == 16000 and trial.audio.samples.shape == (900,)


def test_all_codes(corpus):
    adapter = get_adapter("iemocap", str(corpus), {"classes": "all"})
    names = adapter.info().label_names
    assert "frustration" in names and "other" not in names and len(names) == 9
    specs, rejections = adapter.list_trials()
    assert len(specs) == 2 * 6 and len(rejections) == 2                 # xxx in each session
    fru = next(s for s in specs if s.extra["code"] == "fru")
    assert names[fru.label] == IEMOCAP_CODES["fru"]
    hap = next(s for s in specs if s.extra["code"] == "hap")
    exc = next(s for s in specs if s.extra["code"] == "exc")
    assert hap.label != exc.label


def test_missing_wav_and_unlisted_wav(corpus):
    wav_dir = corpus / "IEMOCAP_full_release" / "Session1" / "sentences" / "wav"
    (wav_dir / "Ses01F_impro01" / "Ses01F_impro01_F000.wav").unlink()
    extra = wav_dir / "Ses01F_impro01" / "Ses01F_impro01_F099.wav"
    extra.write_bytes((wav_dir / "Ses01F_impro01" / "Ses01F_impro01_M001.wav").read_bytes())
    specs, rejections = get_adapter("iemocap", str(corpus)).list_trials()
    assert all(s.trial != "Ses01F_impro01_F099" for s in specs)       # no label line: not listed
    missing = [r for r in rejections if r.trial_id.endswith("Ses01F_impro01_F000")]
    assert len(missing) == 1 and missing[0].files[0].endswith("Ses01F_impro01_F000.wav")
    assert len(specs) == 2 * 5 - 1


def test_wrong_layout_and_options(tmp_path):
    with pytest.raises(DataError) as err:
        get_adapter("iemocap", str(tmp_path)).list_trials()
    assert err.value.kind == "layout" and "SessionN/dialog/EmoEvaluation" in str(err.value)
    with pytest.raises(ConfigError, match="classes"):
        get_adapter("iemocap", str(tmp_path), {"classes": "7"})
