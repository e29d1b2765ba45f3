"""EEG readers/writers on real files written through MNE (FIF, EDF, BDF, BrainVision, EEGLAB)."""

from __future__ import annotations

import numpy as np
import pytest

from emoray.errors import DataError
from emoray.io.eeg import (SUPPORTED_EEG_EXTENSIONS, eeg_header, normalize_channel_name,
                           pick_channels, read_eeg, resample_eeg, write_eeg)
from emoray.types import EEG

NAMES = ["Fp1", "Fp2", "Cz", "O1", "CB1"]


def _eeg(n_times: int = 1000, sfreq: float = 250.0, seed: int = 0) -> EEG:
    rng = np.random.default_rng(seed)
    data = (rng.standard_normal((len(NAMES), n_times)) * 20e-6).astype(np.float32)  # (C, T)
    return EEG(data=data, sfreq=sfreq, ch_names=list(NAMES))


@pytest.mark.parametrize("ext, atol", [
    (".fif", 1e-12), (".fif.gz", 1e-12),
    (".edf", 2e-9),          # 16 bit over the data range (~200 uV) -> ~3 nV steps
    (".bdf", 5e-11),         # 24 bit
    (".vhdr", 1e-10), (".set", 1e-10),
])
def test_round_trip(tmp_path, ext, atol):
    eeg = _eeg()
    path = tmp_path / f"rec{ext}"
    write_eeg(path, eeg)
    back = read_eeg(path)
    assert back.ch_names == NAMES
    assert back.sfreq == pytest.approx(250.0)
    assert back.data.dtype == np.float32
    assert back.data.shape == eeg.data.shape
    np.testing.assert_allclose(back.data, eeg.data, atol=atol)
    assert back.source == str(path)
    names, sfreq, n_times = eeg_header(path)
    assert (names, sfreq, n_times) == (NAMES, 250.0, 1000)


def test_supported_extensions():
    assert set(SUPPORTED_EEG_EXTENSIONS) == {".edf", ".bdf", ".gdf", ".fif", ".fif.gz",
                                             ".vhdr", ".set", ".cnt"}


@pytest.mark.parametrize("raw, expected", [
    ("EEG FP1-REF", "Fp1"), ("FPZ", "Fpz"), ("CZ", "Cz"), ("af3", "AF3"), ("POZ", "POz"),
    ("T3", "T7"), ("t4", "T8"), ("EEG T5-A1", "P7"), ("T6-Ref", "P8"), ("Fz-LE", "Fz"),
    ("Pz-avg", "Pz"), ("O2-M2", "O2"), ("CB1", "CB1"), ("EEG CB1-REF", "CB1"),
    ("fcz", "FCz"), ("M1", "M1"),
])
def test_normalize_channel_name(raw, expected):
    assert normalize_channel_name(raw) == expected


def test_read_normalises_names_and_drops_non_eeg(tmp_path):
    import mne

    names = ["EEG FP1-REF", "EEG CZ-REF", "T3", "EOG1", "STI 014"]
    info = mne.create_info(names, 200.0, ch_types=["eeg", "eeg", "eeg", "eog", "stim"])
    data = np.random.default_rng(1).standard_normal((5, 400)) * 1e-5  # (C, T)
    path = tmp_path / "mixed_raw.fif"
    mne.io.RawArray(data, info, verbose="error").save(path, verbose="error")
    eeg = read_eeg(path)
    assert eeg.ch_names == ["Fp1", "Cz", "T7"]
    np.testing.assert_allclose(eeg.data, data[:3], rtol=1e-6)
    assert eeg_header(path) == (["Fp1", "Cz", "T7"], 200.0, 400)


def test_only_non_eeg_channels_keeps_all(tmp_path):
    import mne

    info = mne.create_info(["A", "B"], 100.0, ch_types="misc")
    path = tmp_path / "misc_raw.fif"
    mne.io.RawArray(np.ones((2, 50)), info, verbose="error").save(path, verbose="error")
    assert read_eeg(path).ch_names == ["A", "B"]


def test_unknown_extension(tmp_path):
    path = tmp_path / "rec.xyz"
    path.write_bytes(b"abc")
    with pytest.raises(DataError) as err:
        read_eeg(path)
    assert err.value.kind == "unknown_format"
    assert str(path) in str(err.value) and ".vhdr" in str(err.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.edf"
    with pytest.raises(DataError) as err:
        read_eeg(path)
    assert err.value.kind == "unreadable" and "file not found" in str(err.value)
    with pytest.raises(DataError):
        eeg_header(path)


@pytest.mark.parametrize("ext", [".edf", ".bdf", ".fif"])
def test_corrupt_file(tmp_path, ext):
    path = tmp_path / f"junk{ext}"
    path.write_bytes(np.random.default_rng(2).bytes(4096))
    with pytest.raises(DataError) as err:
        read_eeg(path)
    assert err.value.kind == "unreadable"
    assert err.value.path == str(path)
    assert "Traceback" not in str(err.value) and len(err.value.reason) < 300


def test_corrupt_bdf_is_read_as_bdf(tmp_path):
    path = tmp_path / "junk.bdf"
    path.write_bytes(b"\x00" * 512)
    with pytest.raises(DataError, match="as BDF"):
        read_eeg(path)


def test_nan_rejected(tmp_path):
    import mne

    data = np.zeros((2, 100))
    data[1, 5] = np.nan
    info = mne.create_info(["Cz", "Pz"], 100.0, ch_types="eeg")
    path = tmp_path / "nan_raw.fif"
    mne.io.RawArray(data, info, verbose="error").save(path, verbose="error")
    with pytest.raises(DataError) as err:
        read_eeg(path)
    assert err.value.kind == "invalid_value" and err.value.field == "eeg"


def test_write_rejects_nan_and_unknown_format(tmp_path):
    eeg = _eeg(50)
    with pytest.raises(DataError) as err:
        write_eeg(tmp_path / "x.cnt", eeg)
    assert err.value.kind == "unknown_format"
    eeg.data[0, 0] = np.inf
    with pytest.raises(DataError) as err:
        write_eeg(tmp_path / "x.fif", eeg)
    assert err.value.kind == "invalid_value"


def test_pick_channels_reorders_and_normalises():
    eeg = _eeg(20)
    picked = pick_channels(eeg, ["cz", "FP1", "O1"])
    assert picked.ch_names == ["Cz", "Fp1", "O1"]
    np.testing.assert_array_equal(picked.data, eeg.data[[2, 0, 3]])
    assert picked.sfreq == eeg.sfreq


def test_pick_channels_missing():
    eeg = _eeg(20)
    eeg.source = "subj1.fif"
    with pytest.raises(DataError) as err:
        pick_channels(eeg, ["Cz", "Pz", "T7"])
    assert err.value.kind == "missing_channel" and err.value.field == "eeg"
    assert "Pz" in err.value.reason and "T7" in err.value.reason
    assert err.value.path == "subj1.fif"


def test_resample_eeg():
    sfreq = 500.0
    t = np.arange(1000) / sfreq
    data = np.stack([np.sin(2 * np.pi * 10 * t), np.cos(2 * np.pi * 7 * t)])  # (2, 1000)
    out = resample_eeg(data.astype(np.float32), sfreq, 200.0)
    assert out.shape == (2, 400) and out.dtype == np.float32
    t2 = np.arange(400) / 200.0
    expected = np.stack([np.sin(2 * np.pi * 10 * t2), np.cos(2 * np.pi * 7 * t2)])
    np.testing.assert_allclose(out[:, 40:-40], expected[:, 40:-40], atol=0.02)
    assert resample_eeg(data, 250.0, 250.0).shape == data.shape
