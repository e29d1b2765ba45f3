"""Audio reading/writing with real WAV/FLAC files; torchaudio resampling."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from emoray.errors import DataError
from emoray.io.audio import (SUPPORTED_AUDIO_EXTENSIONS, audio_header, read_audio,
                             resample_audio, write_audio)
from emoray.types import Audio


def _sine(freq: float, rate: int, seconds: float = 0.5, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)  # (T,)


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


def test_supported_extensions():
    assert set(SUPPORTED_AUDIO_EXTENSIONS) == {".wav", ".flac", ".ogg"}


@pytest.mark.parametrize("ext", [".wav", ".flac"])
@pytest.mark.parametrize("rate", [44100, 16000, 8000])
def test_round_trip(tmp_path, ext, rate):
    x = _sine(440.0, rate)
    path = tmp_path / f"a{ext}"
    write_audio(path, Audio(x, rate))
    audio = read_audio(path)
    assert audio.sample_rate == rate
    assert audio.samples.dtype == np.float32 and audio.samples.shape == x.shape
    np.testing.assert_allclose(audio.samples, x, atol=1.0 / 2**14)  # 16-bit PCM
    assert audio.source == str(path)
    assert audio_header(path) == (rate, len(x))


def test_write_clips(tmp_path):
    x = np.array([-3.0, -0.5, 0.0, 0.5, 2.0], dtype=np.float32)
    write_audio(tmp_path / "c.wav", Audio(x, 8000))
    back = read_audio(tmp_path / "c.wav").samples
    assert back.min() >= -1.0 and back.max() <= 1.0
    np.testing.assert_allclose(back, [-1.0, -0.5, 0.0, 0.5, 1.0], atol=1e-4)


def test_stereo_mixed_to_mono(tmp_path):
    left, right = _sine(300.0, 16000), _sine(500.0, 16000, amp=0.25)
    stereo = np.stack([left, right], axis=1)  # (T, 2)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, 16000, subtype="FLOAT")
    audio = read_audio(path)
    assert audio.samples.ndim == 1
    np.testing.assert_allclose(audio.samples, (left + right) / 2, atol=1e-6)


def test_ogg_reads(tmp_path):
    path = tmp_path / "a.ogg"
    sf.write(path, _sine(440.0, 16000), 16000, format="OGG", subtype="VORBIS")
    audio = read_audio(path)
    assert audio.sample_rate == 16000
    assert abs(_peak_hz(audio.samples, 16000) - 440.0) < 5


@pytest.mark.parametrize("sr_from, sr_to", [(44100, 16000), (8000, 16000), (16000, 16000)])
def test_resample_length_and_frequency(sr_from, sr_to):
    x = _sine(440.0, sr_from, seconds=1.0)
    y = resample_audio(x, sr_from, sr_to)
    assert y.dtype == np.float32
    assert abs(len(y) - sr_to) <= 1
    assert abs(_peak_hz(y, sr_to) - 440.0) < 2.0


def test_missing_file(tmp_path):
    with pytest.raises(DataError) as err:
        read_audio(tmp_path / "nope.wav")
    assert err.value.kind == "unreadable" and "file not found" in str(err.value)


def test_unknown_extension(tmp_path):
    path = tmp_path / "a.mp3"
    path.write_bytes(b"ID3")
    with pytest.raises(DataError) as err:
        read_audio(path)
    assert err.value.kind == "unknown_format" and ".flac" in err.value.reason


def test_corrupt_file(tmp_path):
    path = tmp_path / "junk.wav"
    path.write_bytes(np.random.default_rng(0).bytes(2000))
    for fn in (read_audio, audio_header):
        with pytest.raises(DataError) as err:
            fn(path)
        assert err.value.kind == "unreadable" and err.value.path == str(path)
        assert err.value.field == "audio"


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(DataError) as err:
        read_audio(path)
    assert err.value.kind == "truncated"


def test_non_finite(tmp_path):
    x = _sine(440.0, 8000)
    x[10] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, x, 8000, subtype="FLOAT")
    with pytest.raises(DataError) as err:
        read_audio(path)
    assert err.value.kind == "invalid_value"
