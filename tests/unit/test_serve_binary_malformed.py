"""Malformed binary request bodies of the Serve API (no Ray): each gets a 4xx naming its
part or field.

A table of real ``multipart/form-data`` bodies (see :mod:`serve_binary_io`) with wrong
dtypes, shapes and values, corrupt ``.npy``/``.npz`` files, bad raw-bytes form fields and
inputs over the limits; the answer must name the field and never leak a traceback or a
library's message. An ``.npz`` bomb is refused before it inflates. Well-formed binary
encodings are in :mod:`test_serve_binary`.
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from emoray.errors import DataError
from emoray.io.video import encode_jpeg
from emoray.serving.decode import DecodeLimits, decode_multipart
from serve_binary_io import CHANNELS, form_field, npz_bytes, parts_of, post


# -- malformed binary input -----------------------------------------------------------------

def _npy_of(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _npy_header(shape: tuple, descr: str = "<f4") -> bytes:
    """An .npy header alone, declaring ``shape`` (no data after it)."""
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


def _eeg_npy(data, names=CHANNELS, sfreq="128") -> list[tuple]:
    blob = data if isinstance(data, bytes) else _npy_of(np.asarray(data))
    return [("eeg", ("eeg.npy", blob)), form_field("eeg_sfreq", sfreq),
            form_field("eeg_ch_names", ",".join(names))]


def _speech_npy(samples, rate="8000") -> list[tuple]:
    blob = samples if isinstance(samples, bytes) else _npy_of(np.asarray(samples))
    return [("speech", ("speech.npy", blob)), form_field("speech_sample_rate", rate)]


def _video_npy(frames) -> list[tuple]:
    return [("video", ("video.npy", _npy_of(np.asarray(frames))))]


def _raw_eeg(data: bytes, dtype="float32", shape="4,256", **extra) -> list[tuple]:
    fields = {"eeg_dtype": dtype, "eeg_shape": shape, "eeg_sfreq": "128",
              "eeg_ch_names": ",".join(CHANNELS), **extra}
    return [("eeg", ("eeg.bin", data, "application/octet-stream"))] + [
        form_field(k, v) for k, v in fields.items() if v is not None]


def _zip_with(**members: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, blob in members.items():
            zf.writestr(name, blob)
    return buf.getvalue()


def _lying_zip(member: bytes, declared: int) -> bytes:
    """A one-member .npz whose entry declares ``declared`` bytes for ``member``."""
    blob = bytearray(_zip_with(**{"data.npy": member}))
    local, central = 0, blob.index(b"PK\x01\x02")
    blob[local + 22:local + 26] = declared.to_bytes(4, "little")   # uncompressed size
    blob[central + 24:central + 28] = declared.to_bytes(4, "little")
    return bytes(blob)


def _cases() -> dict:
    """id: (request files, status, field, words the message must hold)."""
    rng = np.random.default_rng(3)
    good = rng.normal(0, 1e-5, (4, 256)).astype(np.float32)               # (C, T)
    good_npy = _npy_of(good)
    raw = good.tobytes()
    speech = rng.uniform(-0.5, 0.5, 8000).astype(np.float32)
    frames = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    nan = good.copy()
    nan[1, 7] = np.nan
    inf = good.copy()
    inf[0, 0] = -np.inf
    bomb = npz_bytes(data=np.zeros((256, 65536), np.float32))          # 64 MB inflated, 64 KB sent
    return {
        # dtypes
        "npy_float64": (_eeg_npy(good.astype(np.float64)), 422, "eeg", ["float64", "float32"]),
        "npy_complex": (_eeg_npy(good.astype(np.complex64)), 422, "eeg", ["complex64"]),
        "npy_big_endian": (_eeg_npy(good.astype(">f4")), 422, "eeg", ["big-endian"]),
        "npy_int16_eeg": (_eeg_npy(good.astype(np.int16)), 422, "eeg", ["int16", "float32"]),
        "npy_pickled": (_eeg_npy(np.array([[1.0, None]], dtype=object)), 422, "eeg",
                        ["object array", "pickled"]),
        "npy_structured": (_eeg_npy(np.zeros(4, dtype=[("a", "<f4"), ("b", "<f4")])), 422,
                           "eeg", ["expected float32"]),
        "npy_speech_float64": (_speech_npy(speech.astype(np.float64)), 422, "speech",
                               ["float64", "int16"]),
        "npy_speech_uint8": (_speech_npy(speech.astype(np.uint8)), 422, "speech", ["uint8"]),
        "npy_speech_big_int16": (_speech_npy((speech * 1000).astype(">i2")), 422, "speech",
                                 ["big-endian"]),
        "npy_video_float": (_video_npy(frames.astype(np.float32)), 422, "video",
                            ["float32", "uint8"]),
        # shapes
        "npy_eeg_1d": (_eeg_npy(good[0]), 422, "eeg", ["2-D", "(channels, samples)"]),
        "npy_eeg_3d": (_eeg_npy(good[None]), 422, "eeg", ["2-D"]),
        "npy_speech_2d": (_speech_npy(speech[None]), 422, "speech", ["1-D"]),
        "npy_video_3d": (_video_npy(frames[0]), 422, "video", ["4-D"]),
        "npy_video_rgba": (_video_npy(np.zeros((2, 8, 8, 4), np.uint8)), 422, "video",
                           ["(frames, height, width, 3)"]),
        "npy_eeg_empty": (_eeg_npy(np.zeros((4, 0), np.float32)), 422, "eeg", ["empty"]),
        "npy_speech_empty": (_speech_npy(np.zeros(0, np.float32)), 422, "speech", ["empty"]),
        "npy_video_empty": (_video_npy(np.zeros((0, 8, 8, 3), np.uint8)), 422, "video",
                            ["empty"]),
        "names_short": (_eeg_npy(good, CHANNELS[:3]), 422, "eeg_ch_names",
                        ["3 names for 4 rows"]),
        "names_duplicate": (_eeg_npy(good, ["Fp1", "FP1", "Cz", "Pz"]), 422, "eeg_ch_names",
                            ["duplicate"]),
        "names_bad_json": (_eeg_npy(good)[:2] + [form_field("eeg_ch_names", "[Fp1, Fp2")], 422,
                           "eeg_ch_names", ["JSON array of strings"]),
        # values
        "npy_nan": (_eeg_npy(nan), 422, "eeg", ["NaN/inf"]),
        "npy_inf": (_eeg_npy(inf), 422, "eeg", ["NaN/inf"]),
        "npy_speech_nan": (_speech_npy(np.where(np.arange(8000) == 9, np.nan, speech)
                                       .astype(np.float32)), 422, "speech", ["NaN/inf"]),
        # corrupt .npy
        "npy_truncated": (_eeg_npy(good_npy[:len(good_npy) // 2]), 422, "eeg",
                          ["truncated", "4096 bytes"]),
        "npy_trailing": (_eeg_npy(good_npy + b"\0" * 8), 422, "eeg", ["4104 bytes follow"]),
        "npy_magic_only": (_eeg_npy(good_npy[:8]), 422, "eeg", [".npy"]),
        "npy_header_cut": (_eeg_npy(good_npy[:40]), 422, "eeg", ["corrupt or truncated"]),
        "npy_header_junk": (_eeg_npy(good_npy[:10] + b"{'descr': <f4, junk" +
                                     good_npy[29:]), 422, "eeg", ["header"]),
        "npy_version_9": (_eeg_npy(good_npy[:6] + b"\x09\x00" + good_npy[8:]), 422, "eeg",
                          ["version 9.0"]),
        "npy_huge_shape": (_eeg_npy(_npy_header((4, 10 ** 15)) + b"\0" * 64), 422, "eeg",
                           ["truncated", "declares shape (4, 1000000000000000)"]),
        "npy_negative_shape": (_eeg_npy(_npy_header((4, -1))), 422, "eeg", ["shape"]),
        "npy_named_not_npy": (_eeg_npy(b"RIFF1234WAVEfmt " * 4), 422, "eeg", [".npy"]),
        # form fields of arrays
        "sfreq_missing": (_eeg_npy(good)[:1] + _eeg_npy(good)[2:], 422, "eeg_sfreq",
                          ["missing"]),
        "sfreq_text": (_eeg_npy(good, sfreq="fast"), 422, "eeg_sfreq", ["number > 0"]),
        "sfreq_negative": (_eeg_npy(good, sfreq="-128"), 422, "eeg_sfreq", ["number > 0"]),
        "sfreq_nan": (_eeg_npy(good, sfreq="nan"), 422, "eeg_sfreq", ["number > 0"]),
        "rate_missing": (_speech_npy(speech)[:1], 422, "speech_sample_rate", ["missing"]),
        "rate_fraction": (_speech_npy(speech, "8000.5"), 422, "speech_sample_rate",
                          ["whole number"]),
        "eeg_as_form_field": ([form_field("eeg", "1,2,3")], 422, "eeg", ["filename"]),
        "sfreq_with_edf": ([("eeg", ("r.edf", b"0       " + bytes(248))),
                            form_field("eeg_sfreq", "128")], 422, "eeg_sfreq",
                           ["without an EEG array part", "a file carries its own"]),
        "sfreq_without_eeg": (_speech_npy(speech) + [form_field("eeg_sfreq", "128")], 422,
                              "eeg_sfreq", ["without an EEG array"]),
        "npy_among_jpegs": ([("video", ("a.npy", _npy_of(frames))),
                             ("video", ("b.jpg", encode_jpeg(frames[:1])[0]))], 422, "video",
                            ["one array"]),
        # raw bytes
        "raw_odd_bytes": (_raw_eeg(raw[:-3]), 422, "eeg", ["not a whole number", "4 bytes"]),
        "raw_shape_mismatch": (_raw_eeg(raw, shape="4,255"), 422, "eeg_shape",
                               ["1020 items", "1024 float32 items"]),
        "raw_shape_huge": (_raw_eeg(raw, shape="4,100000000000"), 422, "eeg_shape",
                           ["400000000000 items"]),
        "raw_shape_1d": (_raw_eeg(raw, shape="1024"), 422, "eeg_shape", ["2-D"]),
        "raw_shape_text": (_raw_eeg(raw, shape="four,256"), 422, "eeg_shape",
                           ["whole numbers"]),
        "raw_shape_negative": (_raw_eeg(raw, shape="-4,-256"), 422, "eeg_shape",
                               ["whole numbers"]),
        "raw_shape_missing": (_raw_eeg(raw, shape=None), 422, "eeg_shape", ["missing"]),
        "raw_dtype_float64": (_raw_eeg(raw, dtype="float64"), 422, "eeg_dtype",
                              ["float64", "float32"]),
        "raw_dtype_big_endian": (_raw_eeg(raw, dtype=">f4"), 422, "eeg_dtype",
                                 ["big-endian"]),
        "raw_dtype_object": (_raw_eeg(raw, dtype="O"), 422, "eeg_dtype", ["object"]),
        "raw_dtype_complex": (_raw_eeg(raw, dtype="complex64"), 422, "eeg_dtype",
                              ["complex64"]),
        "raw_dtype_unknown": (_raw_eeg(raw, dtype="floaty"), 422, "eeg_dtype",
                              ["unknown dtype"]),
        "raw_nan": (_raw_eeg(nan.tobytes()), 422, "eeg", ["NaN/inf"]),
        "raw_dtype_on_npy": ([("eeg", ("eeg.npy", good_npy))] + _raw_eeg(b"")[1:], 422,
                             "eeg_dtype", ["raw bytes", ".npy"]),
        "shape_without_dtype": (_eeg_npy(good) + [form_field("eeg_shape", "4,256")], 422,
                                "eeg_shape", ["without eeg_dtype"]),
        "raw_speech_odd": ([("speech", ("s.bin", b"\0" * 801)), form_field("speech_dtype", "int16"),
                            form_field("speech_sample_rate", "8000")], 422, "speech",
                           ["not a whole number", "int16"]),
        "raw_video_shape": ([("video", ("v.bin", frames.tobytes())),
                             form_field("video_dtype", "uint8"), form_field("video_shape", "3,8,8,4")],
                            422, "video_shape", ["holds 768 items"]),
        "raw_unknown_octets": ([("eeg", ("eeg", raw, "application/octet-stream"))], 422,
                               "eeg", ["eeg_dtype"]),
        # .npz
        "npz_random": ([("eeg", ("e.npz", rng.bytes(500)))], 422, "eeg", [".npz"]),
        "npz_truncated": ([("eeg", ("e.npz", npz_bytes(data=good)[:300]))], 422, "eeg",
                          ["corrupt or truncated"]),
        "npz_unknown_key": ([("eeg", ("e.npz", npz_bytes(data=good, srate=128)))], 422, "eeg",
                            ["unknown array 'srate'", "sfreq"]),
        "npz_no_data": ([("eeg", ("e.npz", npz_bytes(sfreq=128)))], 422, "eeg", ["data"]),
        "npz_sfreq_twice": ([("eeg", ("e.npz", npz_bytes(data=good, sfreq=128.0,
                                                     ch_names=np.array(CHANNELS)))),
                             form_field("eeg_sfreq", "128")], 422, "eeg_sfreq", ["twice"]),
        "npz_names_ints": ([("eeg", ("e.npz", npz_bytes(data=good, sfreq=128.0,
                                                    ch_names=np.arange(4))))], 422,
                           "eeg.ch_names", ["strings"]),
        "npz_sfreq_pair": ([("eeg", ("e.npz", npz_bytes(data=good, sfreq=[128, 256],
                                                    ch_names=np.array(CHANNELS))))], 422,
                           "eeg.sfreq", ["one number"]),
        "npz_sfreq_zero": ([("eeg", ("e.npz", npz_bytes(data=good, sfreq=0,
                                                    ch_names=np.array(CHANNELS))))], 422,
                           "eeg.sfreq", ["number > 0"]),
        "npz_data_float64": ([("eeg", ("e.npz", npz_bytes(data=good.astype(float), sfreq=128,
                                                      ch_names=np.array(CHANNELS))))], 422,
                             "eeg.data", ["float64"]),
        "npz_pickled": ([("speech", ("s.npz", _zip_with(**{
            "samples.npy": _npy_of(np.array([1.0, None], dtype=object))}))),
                         form_field("speech_sample_rate", "8000")], 422, "speech.samples",
                        ["object array"]),
        "npz_corrupt_member": ([("speech", ("s.npz", _zip_with(**{
            "samples.npy": b"\x93NUMPY\x01\x00garbage"}))),
                                form_field("speech_sample_rate", "8000")], 422, "speech.samples",
                               [".npy"]),
        "npz_lying_size": ([("eeg", ("e.npz", _lying_zip(
            _npy_header((256, 65536)) + bytes(256 * 65536 * 4), 4096))), form_field("eeg_sfreq",
                                                                                 "1e9"),
                            form_field("eeg_ch_names", ",".join(f"c{i}" for i in range(256)))],
                           422, "eeg.data", ["corrupt"]),
        "npz_bomb": ([("eeg", ("e.npz", bomb)), form_field("eeg_sfreq", "1e9"),
                      form_field("eeg_ch_names", ",".join(f"c{i}" for i in range(256)))], 422,
                     "eeg.data", ["limit", "bytes per request"]),
        # the limits
        "too_many_channels": (_eeg_npy(np.zeros((300, 4), np.float32),
                                       [f"c{i}" for i in range(300)]), 422, "eeg",
                              ["300 channels", "limit is 256"]),
        "too_long": (_eeg_npy(good, sfreq="0.5"), 422, "eeg", ["512.0 s", "limit"]),
        "speech_too_long": (_speech_npy(speech, rate="10"), 422, "speech", ["limit"]),
        "too_many_frames": (_video_npy(np.zeros((3001, 1, 1, 3), np.uint8)), 422, "video",
                            ["3001 frames", "limit is 3000"]),
        "video_too_long": (_video_npy(frames) + [form_field("video_fps", "0.01")], 422, "video",
                           ["300.0 s", "limit"]),
        "over_the_body_cap": (_eeg_npy(np.zeros((4, 300_000), np.float32)), 413, "body",
                              ["byte limit"]),
    }


_CASES = _cases()


@pytest.mark.parametrize("case", sorted(_CASES))
def test_malformed_binary_input_gets_a_4xx_naming_the_field(case):
    files, status, field, words = _CASES[case]
    got, answer = post(files)
    assert got == status, (case, got, answer)
    err = answer["error"]
    assert err["field"] == field, (case, err)
    for word in words:
        assert word in err["message"], (case, word, err["message"])
    text = json.dumps(answer)
    assert "Traceback" not in text and "emoray-decode" not in text
    for library in ("_format_impl", "literal_eval", "zlib", "Error -3", "magic string"):
        assert library not in text, (case, library, text)


def test_the_malformed_table_covers_every_kind_of_mistake():
    assert len(_CASES) >= 70
    fields = {field for _, _, field, _ in _CASES.values()}
    assert {"eeg", "speech", "video", "eeg_dtype", "eeg_shape", "eeg_sfreq", "eeg_ch_names",
            "speech_sample_rate", "video_shape", "eeg.data", "eeg.sfreq", "eeg.ch_names",
            "speech.samples", "body"} <= fields


@pytest.mark.parametrize("case,match", [("npz_bomb", "limit"), ("npz_lying_size", "corrupt")])
def test_an_npz_bomb_is_refused_before_it_inflates(case, match):
    """A 64 MB member (64 KB on the wire) is refused from its declared size, and one that
    declares 4 KB is inflated no further than that: memory stays far below 64 MB."""
    import tracemalloc

    parts = parts_of(_CASES[case][0])
    tracemalloc.start()
    with pytest.raises(DataError, match=match):
        decode_multipart(*parts, DecodeLimits(max_array_bytes=1 << 20))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8 << 20, peak
