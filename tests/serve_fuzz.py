"""Malformed requests for the Serve fuzz test: every way a client can get a body wrong.

:func:`malformed_requests` builds a seeded list of ``(label, kwargs for requests.post)``
from one valid record: broken JSON, each field set to each bad value, signals too short,
NaN/inf, channel sets the model cannot use, base64 that is not a file, files that are
random bytes or cut short under every extension and field, wrong content types and keys,
bodies over the cap. Every one of them must get a 4xx.
"""

from __future__ import annotations

import base64
import copy
import json

import numpy as np

BAD_VALUES = [None, True, -1, 0, 1e308, "x", "", [], {}, [[]], [1, "a"], [[1, 2], [3]],
              {"a": 1}, [None], 10 ** 400, float("nan")]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _json(body, key: str) -> dict:
    return {"data": json.dumps(body, allow_nan=True).encode(),
            "headers": {"content-type": "application/json", "X-API-Key": key}}


def _set(body: dict, path: tuple, value) -> dict:
    out = copy.deepcopy(body)
    node = out
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return out


def _files(parts: list[tuple], key: str, data: dict | None = None) -> dict:
    return {"files": parts, "data": data or {}, "headers": {"X-API-Key": key}}


def malformed_requests(body: dict, files: dict[str, bytes], key: str, cap_bytes: int,
                       seed: int = 0) -> list[tuple[str, dict]]:
    """``body``: a valid JSON request with eeg, speech (samples) and video; ``files``: valid
    file bytes by extension (``edf``, ``fif``, ``wav``, ``flac``, ``mp4``, ``jpg``)."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str, dict]] = []
    raw = json.dumps(body).encode()
    # broken or mistyped JSON
    for cut in rng.integers(1, len(raw) - 1, 170):
        out.append((f"json cut at {cut}", _json_bytes(raw[:cut], key)))
    for junk in [b"{", b"[]", b"null", b"1", b'"eeg"', b"\xff\xfe\x00", b"{" * 5000,
                 b'{"eeg": }', b"NaN", b'{"speech": {"samples": [1e999], "sample_rate": 8000}}']:
        out.append((f"junk {junk[:12]!r}", _json_bytes(junk, key)))
    for n in range(60):
        out.append((f"random bytes {n}", _json_bytes(rng.bytes(int(rng.integers(1, 4000))), key)))
    # every field x every bad value
    fields = [("eeg",), ("eeg", "data"), ("eeg", "sfreq"), ("eeg", "ch_names"),
              ("speech",), ("speech", "samples"), ("speech", "sample_rate"),
              ("video",), ("video", "frames_base64"), ("video", "fps")]
    for path in fields:
        for value in BAD_VALUES:
            if path in (("eeg",), ("speech",), ("video",)) and value is None:
                continue                       # a modality given as null is just absent
            if path == ("video", "fps") and value is None:
                continue                       # fps null is valid
            out.append((f"{'.'.join(path)}={value!r:.20}", _json(_set(body, path, value), key)))
    # values the model cannot use
    eeg, speech = body["eeg"], body["speech"]
    short = dict(eeg, data=[row[:10] for row in eeg["data"]])
    cases = {
        "eeg too short": {"eeg": short},
        "speech too short": {"speech": dict(speech, samples=speech["samples"][:100])},
        "eeg nan": {"eeg": _set(eeg, ("data", 0, 3), float("nan"))},
        "eeg inf": {"eeg": _set(eeg, ("data", 1, 0), float("inf"))},
        "speech nan": {"speech": _set(speech, ("samples", 5), float("nan"))},
        "missing channel": {"eeg": dict(eeg, ch_names=["X" + n for n in eeg["ch_names"]])},
        "duplicate channel": {"eeg": dict(eeg, ch_names=[eeg["ch_names"][0]] *
                                          len(eeg["ch_names"]))},
        "one name short": {"eeg": dict(eeg, ch_names=eeg["ch_names"][:-1])},
        "rows ragged": {"eeg": dict(eeg, data=[eeg["data"][0], eeg["data"][1][:-5]])},
        "1-D eeg": {"eeg": dict(eeg, data=eeg["data"][0])},
        "2-D speech": {"speech": dict(speech, samples=[speech["samples"][:50]] * 2)},
        "rate as string": {"speech": dict(speech, sample_rate="16000")},
        "fractional rate": {"speech": dict(speech, sample_rate=16000.5)},
        "too long": {"speech": dict(speech, sample_rate=1)},
        "empty": {}, "all null": {"eeg": None, "speech": None, "video": None},
        "unknown modality": {"ecg": eeg}, "extra key": {"eeg": dict(eeg, extra=1)},
        "bad base64 audio": {"speech": {"audio_base64": "!!!not base64!!!"}},
        "base64 random audio": {"speech": {"audio_base64": _b64(rng.bytes(3000))}},
        "base64 jpeg as audio": {"speech": {"audio_base64": _b64(files["jpg"])}},
        "both samples and file": {"speech": dict(speech, audio_base64=_b64(files["wav"]))},
        "frame not base64": {"video": {"frames_base64": ["@@@"]}},
        "frame not jpeg": {"video": {"frames_base64": [_b64(rng.bytes(500))]}},
        "frame is wav": {"video": {"frames_base64": [_b64(files["wav"])]}},
        "no frames": {"video": {"frames_base64": []}},
        "frame cut": {"video": {"frames_base64": [_b64(files["jpg"][:200])]}},
        "fps zero": {"video": dict(body["video"], fps=0)},
    }
    for label, case in cases.items():
        out.append((label, _json(case, key)))
    # multipart: garbage and truncated files under every field and extension
    for ext, blob in files.items():
        for field in ("eeg", "speech", "video"):
            out.append((f"random .{ext} as {field}",
                        _files([(field, (f"x.{ext}", rng.bytes(int(rng.integers(0, 3000)))))],
                               key)))
            cut = blob[: max(1, len(blob) // int(rng.integers(3, 9)))]
            out.append((f"cut .{ext} as {field}", _files([(field, (f"x.{ext}", cut))], key)))
        out.append((f"no name .{ext}", _files([("eeg", ("", rng.bytes(64)))], key)))
        # cut files as base64, short of the 1 s minimum (a WAV cut later still holds a
        # readable, shorter recording, which readers rightly decode)
        for n, cut in enumerate(rng.integers(1, max(2, len(blob) // 4), 4)):
            where = ("speech", {"audio_base64": _b64(blob[:cut])}) if ext != "jpg" else \
                ("video", {"frames_base64": [_b64(blob[:cut])]})
            out.append((f"base64 .{ext} cut at {cut}", _json(dict([where]), key)))
    wrong = [("eeg", "wav"), ("speech", "edf"), ("video", "wav"), ("speech", "mp4"),
             ("eeg", "jpg")]
    for field, ext in wrong:
        out.append((f"{ext} under {field}", _files([(field, (f"x.{ext}", files[ext]))], key)))
    out += [
        ("two eeg files", _files([("eeg", ("a.edf", files["edf"])),
                                  ("eeg", ("b.fif", files["fif"]))], key)),
        ("mp4 and jpeg", _files([("video", ("a.mp4", files["mp4"])),
                                 ("video", ("b.jpg", files["jpg"]))], key)),
        ("unknown file field", _files([("ecg", ("a.edf", files["edf"]))], key)),
        ("unknown form field", _files([("speech", ("a.wav", files["wav"]))], key,
                                      {"colour": "blue"})),
        ("bad video_fps", _files([("video", ("a.jpg", files["jpg"]))], key,
                                 {"video_fps": "fast"})),
        ("negative video_fps", _files([("video", ("a.jpg", files["jpg"]))], key,
                                      {"video_fps": "-3"})),
        ("only a form field", _files([], key, {"video_fps": "5"})),
        ("broken multipart", {"data": b"--xyz\r\ngarbage", "headers": {
            "content-type": "multipart/form-data; boundary=xyz", "X-API-Key": key}}),
        ("multipart without boundary", {"data": b"abc", "headers": {
            "content-type": "multipart/form-data", "X-API-Key": key}}),
    ]
    # transport: content type, auth, size
    out += [
        ("text/plain", {"data": raw, "headers": {"content-type": "text/plain",
                                                 "X-API-Key": key}}),
        ("xml", {"data": b"<a/>", "headers": {"content-type": "application/xml",
                                               "X-API-Key": key}}),
        ("no key", {"data": raw, "headers": {"content-type": "application/json"}}),
        ("wrong key", _json_bytes(raw, key + "x")),
        ("empty body", _json_bytes(b"", key)),
        ("over the cap (json)", _json_bytes(b"[" + b"0," * (cap_bytes // 2) + b"0]", key)),
        ("over the cap (file)", _files([("speech", ("a.wav", b"\0" * (cap_bytes + 10)))], key)),
        ("chunked over the cap", {"data": _chunks(cap_bytes + 1000),
                                  "headers": {"content-type": "application/json",
                                              "X-API-Key": key}}),
    ]
    return out


def _json_bytes(data: bytes, key: str) -> dict:
    return {"data": data, "headers": {"content-type": "application/json", "X-API-Key": key}}


def _chunks(total: int):
    """A generator body: requests sends it chunked, without a Content-Length."""
    def gen():
        sent = 0
        while sent < total:
            piece = b" " * min(65536, total - sent)
            sent += len(piece)
            yield piece
    return gen()


def file_bytes(record: dict, tmp) -> dict[str, bytes]:
    """Valid files of every accepted format from one record's inputs."""
    from emoray.io.audio import write_audio
    from emoray.io.eeg import write_eeg
    from emoray.io.video import encode_jpeg, write_mp4
    from emoray.types import EEG, Audio

    eeg, speech, video = record["eeg"], record["speech"], record["video"]
    write_eeg(tmp / "r.edf", EEG(data=eeg.data, sfreq=eeg.sfreq, ch_names=list(eeg.ch_names),
                                 source="fuzz"))
    write_eeg(tmp / "r.fif", EEG(data=eeg.data, sfreq=eeg.sfreq, ch_names=list(eeg.ch_names),
                                 source="fuzz"))
    for ext in ("wav", "flac"):
        write_audio(tmp / f"r.{ext}", Audio(samples=speech.samples,
                                            sample_rate=speech.sample_rate, source="fuzz"))
    write_mp4(tmp / "r.mp4", video.frames, video.fps)
    out = {ext: (tmp / f"r.{ext}").read_bytes() for ext in ("edf", "fif", "wav", "flac", "mp4")}
    out["jpg"] = encode_jpeg(video.frames[:1])[0]
    return out


__all__ = ["file_bytes", "malformed_requests"]
