"""Malformed requests for the Serve API's decoders (no Ray): bad input only ever raises
:class:`DataError`, naming the right request field and never a temporary path.

A table of malformed JSON bodies, JSON values, base64 audio and multipart uploads (real
files truncated, mislabelled, patched or over the limits), then a seeded fuzz loop over
random JSON and mutated files. Well-formed round trips are in :mod:`test_serve_decode`.
"""

from __future__ import annotations

import base64
import copy
import gzip
import json
import struct
import tempfile

import numpy as np
import pytest

from emoray.errors import DataError
from emoray.io.video import encode_jpeg
from emoray.predict import EEGInput, SpeechInput, VideoInput
from emoray.serving.client import json_request
from emoray.serving.decode import DecodeLimits, Upload, decode_json, decode_multipart
from serve_media import CHANNELS, FPS, RATE, SFREQ, make_frames
from serve_media import media  # noqa: F401 (a pytest fixture, requested by name)


# -- malformed requests ---------------------------------------------------------------------

def _valid_body(media) -> dict:
    return json_request(EEGInput(media["eeg"][:, :64], SFREQ, CHANNELS),
                        SpeechInput(media["speech"][:400], RATE),
                        VideoInput(make_frames(n=4, h=16, w=16), FPS))


def _edit(path: str, value, delete: bool = False):
    """A body edit: set (or delete) the value at a dotted path like ``eeg.data.1.3``."""
    def apply(body):
        keys = path.split(".")
        node = body
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        last = int(keys[-1]) if isinstance(node, list) else keys[-1]
        if delete:
            del node[last]
        else:
            node[last] = value(node[last]) if callable(value) else value
        return body
    return apply


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _jpeg_with_size(width: int, height: int) -> bytes:
    """A real JPEG whose frame header is patched to declare ``width`` x ``height``."""
    blob = bytearray(encode_jpeg(make_frames(1, 16, 16))[0])
    at = next(i for i in range(2, len(blob)) if blob[i] == 0xFF and blob[i + 1] == 0xC0)
    blob[at + 5:at + 9] = struct.pack(">HH", height, width)
    return bytes(blob)


_RAW = {  # raw-body JSON cases: (id, body, field)
    "empty": (b"", "body"), "text": (b"not json", "body"), "array": (b"[1, 2]", "body"),
    "string": (b'"eeg"', "body"), "null": (b"null", "body"), "open": (b"{", "body"),
    "binary": (b"\xff\xfe\x00\x81garbage", "body"), "deep": (b"[" * 100000, "body"),
    "digits": (b'{"eeg": ' + b"9" * 5000 + b"}", "body"),
    "empty_object": (b"{}", "input"), "all_null": (b'{"eeg": null, "video": null}', "input"),
    "unknown_top": (b'{"eg": {}}', "eg"), "eeg_list": (b'{"eeg": [1, 2]}', "eeg"),
    "speech_str": (b'{"speech": "a.wav"}', "speech"),
}

_EDITS = {  # edits of a valid body: (id, edit, field)
    "eeg_unknown_key": (_edit("eeg.srate", 1), "eeg.srate"),
    "eeg_no_sfreq": (_edit("eeg.sfreq", None, delete=True), "eeg.sfreq"),
    "eeg_no_names": (_edit("eeg.ch_names", None, delete=True), "eeg.ch_names"),
    "eeg_no_data": (_edit("eeg.data", None), "eeg.data"),
    "eeg_ragged": (_edit("eeg.data.2", lambda r: r[:-1]), "eeg.data"),
    "eeg_string": (_edit("eeg.data.1.3", "0.1"), "eeg.data"),
    "eeg_bool": (_edit("eeg.data.0.0", True), "eeg.data"),
    "eeg_null": (_edit("eeg.data.3.5", None), "eeg.data"),
    "eeg_dict": (_edit("eeg.data.0.1", {"v": 1}), "eeg.data"),
    "eeg_3d": (_edit("eeg.data", lambda d: [[r] for r in d]), "eeg.data"),
    "eeg_3d_cell": (_edit("eeg.data.0.0", [1.0, 2.0]), "eeg.data"),
    "eeg_empty": (_edit("eeg.data", []), "eeg.data"),
    "eeg_empty_rows": (_edit("eeg.data", [[], [], [], []]), "eeg.data"),
    "eeg_1d": (_edit("eeg.data", [1.0, 2.0, 3.0, 4.0]), "eeg.data"),
    "eeg_huge_int": (_edit("eeg.data.0.0", 10 ** 400), "eeg.data"),
    "eeg_nan": (_edit("eeg.data.1.1", float("nan")), "eeg.data"),
    "eeg_inf": (_edit("eeg.data.1.1", float("-inf")), "eeg.data"),
    "eeg_sfreq_zero": (_edit("eeg.sfreq", 0), "eeg.sfreq"),
    "eeg_sfreq_negative": (_edit("eeg.sfreq", -128.0), "eeg.sfreq"),
    "eeg_sfreq_string": (_edit("eeg.sfreq", "128"), "eeg.sfreq"),
    "eeg_sfreq_bool": (_edit("eeg.sfreq", True), "eeg.sfreq"),
    "eeg_sfreq_nan": (_edit("eeg.sfreq", float("nan")), "eeg.sfreq"),
    "eeg_sfreq_huge": (_edit("eeg.sfreq", 10 ** 400), "eeg.sfreq"),
    "eeg_sfreq_list": (_edit("eeg.sfreq", [128]), "eeg.sfreq"),
    "eeg_names_ints": (_edit("eeg.ch_names", [1, 2, 3, 4]), "eeg.ch_names"),
    "eeg_names_dup": (_edit("eeg.ch_names.1", "FP1"), "eeg.ch_names"),
    "eeg_names_count": (_edit("eeg.ch_names", CHANNELS[:3]), "eeg.ch_names"),
    "eeg_names_string": (_edit("eeg.ch_names", "Fp1,Fp2,Cz,Pz"), "eeg.ch_names"),
    "eeg_names_blank": (_edit("eeg.ch_names.2", " "), "eeg.ch_names"),
    "eeg_too_long": (_edit("eeg.sfreq", 0.25), "eeg.data"),              # 64 / 0.25 > 120 s
    "eeg_too_wide": (_edit("eeg.data", lambda d: d * 80), "eeg.data"),   # 320 channels
    "speech_samples_str": (_edit("speech.samples", "0.1 0.2"), "speech.samples"),
    "speech_2d": (_edit("speech.samples", lambda s: [s]), "speech.samples"),
    "speech_empty": (_edit("speech.samples", []), "speech.samples"),
    "speech_null_item": (_edit("speech.samples.7", None), "speech.samples"),
    "speech_bool_item": (_edit("speech.samples.7", False), "speech.samples"),
    "speech_beyond_f32": (_edit("speech.samples.0", 1e39), "speech.samples"),
    "speech_rate_frac": (_edit("speech.sample_rate", 16000.5), "speech.sample_rate"),
    "speech_rate_bool": (_edit("speech.sample_rate", False), "speech.sample_rate"),
    "speech_rate_missing": (_edit("speech.sample_rate", None, delete=True),
                            "speech.sample_rate"),
    "speech_both": (_edit("speech.audio_base64", "UklGRg=="), "speech"),
    "speech_unknown_key": (_edit("speech.rate", 8000), "speech.rate"),
    "speech_too_long": (_edit("speech.sample_rate", 3), "speech.samples"),
    "video_not_list": (_edit("video.frames_base64", "abc"), "video.frames_base64"),
    "video_empty": (_edit("video.frames_base64", []), "video.frames_base64"),
    "video_number": (_edit("video.frames_base64.1", 5), "video.frames_base64[1]"),
    "video_bad_b64": (_edit("video.frames_base64.2", "***"), "video.frames_base64[2]"),
    "video_unicode": (_edit("video.frames_base64.0", "é"), "video.frames_base64[0]"),
    "video_wav": (_edit("video.frames_base64.1", _b64(b"RIFF\0\0\0\0WAVEfmt ")),
                  "video.frames_base64[1]"),
    "video_truncated": (_edit("video.frames_base64.3",
                              lambda s: _b64(base64.b64decode(s)[:40])),
                        "video.frames_base64[3]"),
    "video_garbage_jpeg": (_edit("video.frames_base64.0",
                                 _b64(b"\xff\xd8\xff" + bytes(range(256)) * 3)),
                           "video.frames_base64[0]"),
    "video_sizes": (_edit("video.frames_base64.2", _b64(encode_jpeg(make_frames(1, 8, 8))[0])),
                    "video.frames_base64[2]"),
    "video_bomb": (_edit("video.frames_base64",
                         lambda fr: [_b64(_jpeg_with_size(60000, 60000))] * len(fr)),
                   "video.frames_base64[0]"),
    "video_fps_zero": (_edit("video.fps", 0), "video.fps"),
    "video_fps_string": (_edit("video.fps", "5"), "video.fps"),
    "video_fps_tiny": (_edit("video.fps", 0.01), "video.frames_base64"),  # 400 s of frames
    "video_unknown_key": (_edit("video.fpss", 5), "video.fpss"),
    "video_too_many": (_edit("video.frames_base64", lambda fr: fr * 800),
                       "video.frames_base64"),
}

_AUDIO_B64 = {  # speech.audio_base64 values: (id, value builder from media, field)
    "b64_bang": (lambda m: "!!!", "speech.audio_base64"),
    "b64_empty": (lambda m: "", "speech.audio_base64"),
    "b64_number": (lambda m: 5, "speech.audio_base64"),
    "b64_jpeg": (lambda m: _b64(m["data"][".jpg"]), "speech.audio_base64"),
    "b64_edf": (lambda m: _b64(m["data"][".edf"]), "speech.audio_base64"),
    "b64_random": (lambda m: _b64(bytes(range(200))), "speech.audio_base64"),
    "b64_wav_head": (lambda m: _b64(m["data"][".wav"][:20]), "speech.audio_base64"),
    "b64_flac_head": (lambda m: _b64(m["data"][".flac"][:30]), "speech.audio_base64"),
}


def _assert_refused(call, field: str):
    with pytest.raises(DataError) as err:
        call()
    e = err.value
    assert e.field == field, f"field {e.field!r}, expected {field!r}: {e}"
    assert e.kind in DataError.KINDS and e.reason
    assert "emoray-decode" not in str(e) and tempfile.gettempdir() + "/" not in str(e)
    return e


@pytest.mark.parametrize("case", sorted(_RAW))
def test_malformed_json_body(case):
    body, field = _RAW[case]
    _assert_refused(lambda: decode_json(body), field)


@pytest.mark.parametrize("case", sorted(_EDITS))
def test_malformed_json_value(media, case):
    edit, field = _EDITS[case]
    body = json.dumps(edit(copy.deepcopy(_valid_body(media))))
    e = _assert_refused(lambda: decode_json(body), field)
    if case.endswith(("too_long", "too_wide", "too_many", "fps_tiny")):
        assert e.kind == "layout" and "limit" in e.reason


@pytest.mark.parametrize("case", sorted(_AUDIO_B64))
def test_malformed_audio_base64(media, case):
    value, field = _AUDIO_B64[case]
    body = json.dumps({"speech": {"audio_base64": value(media)}})
    _assert_refused(lambda: decode_json(body), field)


def _fif_with(data: bytes, patch) -> bytes:
    """The FIF file with the tag after the file-id/dir-pointer tags patched."""
    blob = bytearray(data)
    patch(blob)
    return bytes(blob)


# An MNE FIF file starts with the file-id tag (16-byte header + 20 bytes) and the
# directory pointer tag at byte 36 (header: kind, type, size, next; then the int32 position).
def _loop_fif(blob: bytearray) -> None:
    struct.pack_into(">i", blob, 52, -1)            # no directory: MNE walks the tag chain
    struct.pack_into(">i", blob, 48, 36)            # the pointer tag's next -> itself


def _split_fif(blob: bytearray) -> None:
    struct.pack_into(">i", blob, 56, 118)           # the next tag claims FIFF_REF_FILE_NAME


def _multipart_cases(media) -> dict:
    d, rnd = media["data"], np.random.default_rng(7).bytes(3000)
    jpg = d[".jpg"]
    small = DecodeLimits(max_seconds=0.5, max_channels=2, max_frames=3)
    U = Upload
    return {  # id: (files, fields, limits, field)
        "nothing": ([], {}, None, "input"),
        "only_fps": ([], {"video_fps": "5"}, None, "input"),
        "unknown_file_field": ([U("audio", "a.wav", d[".wav"])], {}, None, "audio"),
        "unknown_form_field": ([U("eeg", "r.edf", d[".edf"])], {"fps": "5"}, None, "fps"),
        "two_eeg": ([U("eeg", "a.edf", d[".edf"]), U("eeg", "b.bdf", d[".bdf"])], {}, None,
                    "eeg"),
        "two_speech": ([U("speech", "a.wav", d[".wav"]), U("speech", "b.wav", d[".wav"])],
                       {}, None, "speech"),
        "wav_as_eeg": ([U("eeg", "s.wav", d[".wav"])], {}, None, "eeg"),
        "edf_as_speech": ([U("speech", "r.edf", d[".edf"])], {}, None, "speech"),
        "jpg_as_eeg": ([U("eeg", "f.jpg", jpg)], {}, None, "eeg"),
        "edf_as_video": ([U("video", "r.edf", d[".edf"])], {}, None, "video"),
        "mp4_as_speech": ([U("speech", None, d[".mp4"])], {}, None, "speech"),
        "swapped": ([U("eeg", "s.wav", d[".wav"]), U("speech", "r.edf", d[".edf"])], {},
                    None, "eeg"),
        "mp4_and_jpg": ([U("video", "c.mp4", d[".mp4"]), U("video", "f.jpg", jpg)], {}, None,
                        "video"),
        "two_mp4": ([U("video", "a.mp4", d[".mp4"]), U("video", "b.mp4", d[".mp4"])], {},
                    None, "video"),
        "wav_among_jpgs": ([U("video", "f.jpg", jpg), U("video", "s.wav", d[".wav"])], {},
                           None, "video"),
        "fps_text": ([U("video", "f.jpg", jpg)], {"video_fps": "fast"}, None, "video_fps"),
        "fps_negative": ([U("video", "f.jpg", jpg)], {"video_fps": "-1"}, None, "video_fps"),
        "fps_nan": ([U("video", "f.jpg", jpg)], {"video_fps": "nan"}, None, "video_fps"),
        "fps_without_video": ([U("eeg", "r.edf", d[".edf"])], {"video_fps": "5"}, None,
                              "video_fps"),
        "fps_with_mp4": ([U("video", "c.mp4", d[".mp4"])], {"video_fps": "5"}, None,
                         "video_fps"),
        "half_edf": ([U("eeg", "r.edf", d[".edf"][:len(d[".edf"]) // 2])], {}, None, "eeg"),
        "header_bdf": ([U("eeg", "r.bdf", d[".bdf"][:200])], {}, None, "eeg"),
        "half_fif": ([U("eeg", "r.fif", d[".fif"][:len(d[".fif"]) // 2])], {}, None, "eeg"),
        "head_wav": ([U("speech", "s.wav", d[".wav"][:20])], {}, None, "speech"),
        "head_flac": ([U("speech", "s.flac", d[".flac"][:30])], {}, None, "speech"),
        "half_mp4": ([U("video", "c.mp4", d[".mp4"][:len(d[".mp4"]) // 2])], {}, None,
                     "video"),
        "half_jpg": ([U("video", "f.jpg", jpg[:len(jpg) // 2])], {}, None, "video"),
        "random_edf": ([U("eeg", "r.edf", rnd)], {}, None, "eeg"),
        "random_bdf": ([U("eeg", "r.bdf", rnd)], {}, None, "eeg"),
        "random_fif": ([U("eeg", "r.fif", rnd)], {}, None, "eeg"),
        "random_wav": ([U("speech", "s.wav", rnd)], {}, None, "speech"),
        "random_flac": ([U("speech", "s.flac", rnd)], {}, None, "speech"),
        "random_mp4": ([U("video", "c.mp4", rnd)], {}, None, "video"),
        "random_jpg": ([U("video", "f.jpg", rnd)], {}, None, "video"),
        "random_noext": ([U("eeg", None, rnd)], {}, None, "eeg"),
        "random_txt": ([U("speech", "notes.txt", rnd)], {}, None, "speech"),
        "gz_fif": ([U("eeg", "r.fif.gz", gzip.compress(d[".fif"]))], {}, None, "eeg"),
        "png_frame": ([U("video", "f.png", b"\x89PNG\r\n\x1a\n" + rnd[:100])], {}, None,
                      "video"),
        "empty_file": ([U("eeg", "r.edf", b"")], {}, None, "eeg"),
        "wav_named_edf": ([U("eeg", "r.edf", d[".wav"])], {}, None, "eeg"),
        "fif_loop": ([U("eeg", "r.fif", _fif_with(d[".fif"], _loop_fif))], {}, None, "eeg"),
        "fif_split": ([U("eeg", "r.fif", _fif_with(d[".fif"], _split_fif))], {}, None,
                      "eeg"),
        "frame_sizes": ([U("video", "a.jpg", jpg),
                         U("video", "b.jpg", encode_jpeg(make_frames(1, 8, 8))[0])], {}, None,
                        "video"),
        "limit_seconds": ([U("speech", "s.wav", d[".wav"])], {}, small, "speech"),
        "limit_edf_seconds": ([U("eeg", "r.edf", d[".edf"])], {},
                              DecodeLimits(max_seconds=1.5), "eeg"),
        "limit_channels": ([U("eeg", "r.fif", d[".fif"])], {},
                           DecodeLimits(max_channels=2), "eeg"),
        "limit_mp4_frames": ([U("video", "c.mp4", d[".mp4"])], {}, small, "video"),
        "limit_jpg_frames": ([U("video", "f.jpg", jpg)] * 4, {}, small, "video"),
        "limit_jpg_seconds": ([U("video", "f.jpg", jpg)] * 3, {"video_fps": "1"}, small,
                              "video"),
    }


_MULTIPART_IDS = sorted(_multipart_cases({"data": {k: b"\xff\xd8\xff" * 64 for k in (
    ".edf", ".bdf", ".fif", ".wav", ".flac", ".mp4", ".jpg")}}))


@pytest.mark.parametrize("case", _MULTIPART_IDS)
def test_malformed_multipart(media, case):
    files, fields, limits, field = _multipart_cases(media)[case]
    e = _assert_refused(lambda: decode_multipart(files, fields, limits or DecodeLimits()),
                        field)
    assert e.path == "request" or e.path.startswith("upload ")
    if case.startswith("limit_"):
        assert e.kind == "layout" and "limit" in e.reason


def test_malformed_table_is_large_enough():
    assert len(_RAW) + len(_EDITS) + len(_AUDIO_B64) + len(_MULTIPART_IDS) >= 100


# -- seeded fuzz: nothing but DataError escapes ---------------------------------------------

def _random_json(rng, depth: int = 0):
    pick = rng.integers(9 if depth < 3 else 6)
    if pick == 0:
        return None
    if pick == 1:
        return bool(rng.integers(2))
    if pick == 2:
        return [int(rng.integers(-5, 5)), 10 ** int(rng.integers(1, 400))][rng.integers(2)]
    if pick == 3:
        return float(rng.choice([0.0, -1.0, 1e-300, 3.5, 1e308, np.nan, np.inf]))
    if pick == 4:
        return rng.choice(["", "Fp1", "UklGRg==", "/9j/4AAQ", "é", "0"]).item()
    if pick == 5:
        return []
    if pick in (6, 7):
        return [_random_json(rng, depth + 1) for _ in range(rng.integers(1, 4))]
    keys = ["eeg", "speech", "video", "data", "sfreq", "ch_names", "samples", "sample_rate",
            "audio_base64", "frames_base64", "fps", "x"]
    return {str(rng.choice(keys)): _random_json(rng, depth + 1)
            for _ in range(rng.integers(1, 4))}


def _outcome(call) -> str:
    try:
        out = call()
    except DataError as err:
        assert err.field and err.kind in DataError.KINDS
        return "refused"
    assert any(v is not None for v in out.values())
    return "decoded"


def test_fuzz_only_data_error_escapes(media):
    rng = np.random.default_rng(2024)
    valid = json.dumps(_valid_body(media)).encode()
    outcomes = []
    for _ in range(120):                                  # JSON: structure and bytes
        obj = {str(rng.choice(["eeg", "speech", "video"])): _random_json(rng)}
        outcomes.append(_outcome(lambda: decode_json(json.dumps(obj))))
        cut = bytearray(valid)
        for _ in range(rng.integers(1, 6)):
            cut[rng.integers(len(cut))] = rng.integers(256)
        outcomes.append(_outcome(lambda: decode_json(bytes(cut))))
    exts = [".edf", ".bdf", ".fif", ".wav", ".flac", ".mp4", ".jpg", ".bin", ""]
    field_of = {".edf": "eeg", ".bdf": "eeg", ".fif": "eeg", ".wav": "speech",
                ".flac": "speech", ".mp4": "video", ".jpg": "video"}
    for i in range(180):                                  # files: mutated real ones, noise
        ext = exts[i % len(exts)]
        if ext in field_of and i % 2:
            data = bytearray(media["data"][ext])
            if rng.integers(2):
                data = data[:rng.integers(1, len(data))]
            for _ in range(rng.integers(1, 20)):
                data[rng.integers(min(len(data), 600))] = rng.integers(256)
            data = bytes(data)
        else:
            data = rng.bytes(int(rng.integers(1, 4000)))
        field = field_of.get(ext) or str(rng.choice(["eeg", "speech", "video"]))
        up = Upload(field, f"f{ext}" if ext else None, data)
        outcomes.append(_outcome(lambda: decode_multipart([up], {})))
    assert len(outcomes) == 420 and outcomes.count("refused") > 300


def test_json_eeg_travels_as_float32_and_values_beyond_its_range_are_refused():
    """EEG from JSON is float32 like the binary path's (compact between deployments); a
    finite number float32 cannot hold (1e308 V) is refused naming the field, not passed on
    to a model whose answer would not be finite."""
    from emoray.errors import DataError

    body = {"eeg": {"data": [[1e-5, -2e-5, 3e-5]] * 2, "sfreq": 2.0, "ch_names": ["Cz", "Pz"]}}
    assert decode_json(json.dumps(body).encode())["eeg"].data.dtype == np.float32
    body["eeg"]["data"][1] = [1e-5, 1e308, 0.0]
    with pytest.raises(DataError) as err:
        decode_json(json.dumps(body).encode())
    assert err.value.field == "eeg.data" and "out-of-range" in err.value.reason
