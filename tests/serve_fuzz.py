"""Malformed requests for the Serve fuzz test: every way a client can get a body wrong.

:func:`malformed_requests` builds a seeded list of ``(label, kwargs for requests.post)``
from one valid record: broken JSON, each field set to each bad value, signals too short,
NaN/inf, channel sets the model cannot use, base64 that is not a file, files that are
random bytes or cut short under every extension and field, wrong content types and keys,
bodies over the cap; and binary arrays (``.npy``, ``.npz``, raw bytes with
``<modality>_dtype``/``_shape``) of wrong dtypes, shapes and sizes, cut short, padded, with
NaN/inf, mislabelled metadata, or inflating past the cap. Every one of them must get a 4xx.
"""

from __future__ import annotations

import base64
import copy
import io
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
    out += _binary_cases(body, rng, key, cap_bytes)
    out += _hostile_cases(body, files, key)
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


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)          # the server must refuse what pickles
    return buf.getvalue()


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _binary_cases(body: dict, rng, key: str, cap_bytes: int) -> list[tuple[str, dict]]:
    """Array parts of ``body``'s signals, each broken one way (never a valid request)."""
    eeg = np.asarray(body["eeg"]["data"], dtype=np.float32)                  # (C, T)
    speech = np.asarray(body["speech"]["samples"], dtype=np.float32)        # (T,)
    frames = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)           # (N, H, W, 3)
    names, sfreq = body["eeg"]["ch_names"], str(body["eeg"]["sfreq"])
    rate = str(body["speech"]["sample_rate"])
    meta = {"eeg": {"eeg_sfreq": sfreq, "eeg_ch_names": json.dumps(names)},
            "speech": {"speech_sample_rate": rate}, "video": {"video_fps": "5"}}
    good = {"eeg": eeg, "speech": speech, "video": frames}

    def npy(m: str, blob: bytes, **fields) -> dict:
        return _files([(m, (f"{m}.npy", blob, "application/octet-stream"))], key,
                      {**meta[m], **fields})

    def raw(m: str, blob: bytes, dtype: str, shape: str | None, **fields) -> dict:
        form = {**meta[m], f"{m}_dtype": dtype, **fields}
        if shape is not None:
            form[f"{m}_shape"] = shape
        return _files([(m, (f"{m}.bin", blob, "application/octet-stream"))], key, form)

    out: list[tuple[str, dict]] = []
    for m, arr in good.items():
        blob = _npy(arr)
        for dtype in ("<f8", ">f4", "<c8", "<i8", "|u1", "<f2", "|b1"):
            if np.dtype(dtype) not in {"eeg": ["<f4"], "speech": ["<f4", "<i2"],
                                       "video": ["|u1"]}[m]:
                out.append((f"{m} npy {dtype}", npy(m, _npy(arr.astype(dtype)))))
        out.append((f"{m} npy object", npy(m, _npy(np.array([[1.0, None]], dtype=object)))))
        for cut in sorted(set(rng.integers(1, len(blob), 6).tolist())):
            out.append((f"{m} npy cut at {cut}", npy(m, blob[:cut])))
        out.append((f"{m} npy padded", npy(m, blob + rng.bytes(int(rng.integers(1, 64))))))
        out.append((f"{m} npy random", npy(m, rng.bytes(int(rng.integers(1, 3000))))))
        out.append((f"{m} npy one more dim", npy(m, _npy(arr[None]))))
        out.append((f"{m} npy empty", npy(m, _npy(arr[..., :0]))))
        if m != "video":
            bad = arr.copy()
            bad.flat[int(rng.integers(bad.size))] = rng.choice([np.nan, np.inf, -np.inf])
            out.append((f"{m} npy nan/inf", npy(m, _npy(bad))))
        other = {"eeg": "speech", "speech": "eeg", "video": "eeg"}[m]
        out.append((f"{m} npy under {other}", npy(other, blob)))
        # raw bytes: dtype and shape fields that do not fit the bytes
        data = arr.tobytes()
        shape = ",".join(map(str, arr.shape))
        want = {"eeg": "float32", "speech": "float32", "video": "uint8"}[m]
        out += [(f"{m} raw cut", raw(m, data[:-1], want, shape)),
                (f"{m} raw shape +1", raw(m, data, want, ",".join(
                    map(str, arr.shape[:-1] + (arr.shape[-1] + 1,))))),
                (f"{m} raw float64", raw(m, data, "float64", shape)),
                (f"{m} raw big-endian", raw(m, data, ">f4" if m != "video" else ">u2",
                                            shape)),
                (f"{m} raw object", raw(m, data, "O", shape)),
                (f"{m} raw dtype junk", raw(m, data, "float32; drop table", shape)),
                (f"{m} raw shape junk", raw(m, data, want, "(a, b)")),
                (f"{m} raw shape huge", raw(m, data, want, ",".join(["99999999999"] *
                                                                   arr.ndim))),
                (f"{m} raw empty", raw(m, b"", want, ",".join(["0"] * arr.ndim)))]
        if m != "speech":
            out.append((f"{m} raw no shape", raw(m, data, want, None)))
        # .npz: corrupt, unknown names, metadata twice, metadata of the wrong type
        signal = {"eeg": "data", "speech": "samples", "video": "frames"}[m]
        archive = _npz(**{signal: arr})
        for cut in sorted(set(rng.integers(1, len(archive), 4).tolist())):
            out.append((f"{m} npz cut at {cut}", _files([(m, (f"{m}.npz", archive[:cut]))],
                                                        key, meta[m])))
        out += [
            (f"{m} npz random", _files([(m, (f"{m}.npz", rng.bytes(500)))], key, meta[m])),
            (f"{m} npz unknown name", _files([(m, (f"{m}.npz", _npz(**{signal: arr,
                                                                       "x": arr})))], key,
                                             meta[m])),
            (f"{m} npz without {signal}", _files([(m, (f"{m}.npz", _npz(x=arr)))], key,
                                                 meta[m])),
        ]
        first_meta = next(iter(meta[m]))
        out.append((f"{m} npz {first_meta} twice", _files(
            [(m, (f"{m}.npz", _npz(**{signal: arr, first_meta.split("_", 1)[1]: 5.0})))],
            key, meta[m])))
        out.append((f"{m} npz {first_meta} as text", _files(
            [(m, (f"{m}.npz", _npz(**{signal: arr,
                                      first_meta.split("_", 1)[1]: np.array("fast")})))],
            key, {k: v for k, v in meta[m].items() if k != first_meta})))
    # metadata fields of arrays
    out += [
        ("eeg npy without sfreq", npy("eeg", _npy(eeg), eeg_sfreq="")),
        ("eeg npy sfreq text", npy("eeg", _npy(eeg), eeg_sfreq="fast")),
        ("eeg npy sfreq zero", npy("eeg", _npy(eeg), eeg_sfreq="0")),
        ("eeg npy names short", npy("eeg", _npy(eeg), eeg_ch_names=json.dumps(names[:-1]))),
        ("eeg npy names duplicate", npy("eeg", _npy(eeg),
                                        eeg_ch_names=",".join([names[0]] * len(names)))),
        ("eeg npy names broken json", npy("eeg", _npy(eeg), eeg_ch_names="[\"Fp1\", ")),
        ("eeg npy names not strings", npy("eeg", _npy(eeg), eeg_ch_names="[1, 2]")),
        ("speech npy rate fractional", npy("speech", _npy(speech),
                                           speech_sample_rate="16000.5")),
        ("speech npy too long", npy("speech", _npy(speech), speech_sample_rate="1")),
        ("speech npy too short", npy("speech", _npy(speech[:100]))),
        ("eeg npy too many channels", npy("eeg", _npy(np.zeros((300, 600), np.float32)),
                                          eeg_ch_names=",".join(f"c{i}" for i in range(300)))),
        ("video npy too many frames", npy("video", _npy(np.zeros((3001, 2, 2, 3), np.uint8)))),
        ("eeg_sfreq without eeg", npy("speech", _npy(speech), eeg_sfreq="500")),
        ("eeg as a form field", _files([], key, {"eeg": "1,2,3", **meta["eeg"]})),
        ("npy with jpeg frames", _files([("video", ("a.npy", _npy(frames))),
                                         ("video", ("b.jpg", b"\xff\xd8\xff" + bytes(64)))],
                                        key)),
        ("octets without dtype", _files([("eeg", ("eeg", eeg.tobytes(),
                                                  "application/octet-stream"))], key,
                                        meta["eeg"])),
        ("npz inflating past the cap", _files([("eeg", ("e.npz", _npz(data=np.zeros(
            (64, cap_bytes // 64), np.float32))))], key, meta["eeg"])),
        ("npy over the cap", npy("eeg", _npy(np.zeros((8, cap_bytes // 30), np.float32)))),
    ]
    return out


def _hostile_cases(body: dict, files: dict[str, bytes], key: str) -> list[tuple[str, dict]]:
    """What a hostile client sends: unpaired surrogates in keys and values, finite values
    no signal can hold, frames that are cheap to send and costly to decode, and requests
    the framework refuses (wrong path, method, path parameter); ``path``/``method`` in a
    case's kwargs replace POST /v1/predict."""
    import struct

    eeg, speech = body["eeg"], body["speech"]
    out = []
    surrogates = {
        "top key": b'{"\\ud800": 1}',
        "eeg key": b'{"eeg": {"\\udfff": [[1]], "sfreq": 1, "ch_names": ["a"]}}',
        # json.dumps writes lone surrogates as \\uXXXX escapes, as a hostile client would
        "channel name": json.dumps(_set(body, ("eeg", "ch_names", 0), "\ud800")).encode(),
        "sample rate": json.dumps(_set(body, ("speech", "sample_rate"),
                                       "\udbff\udc00x\ud800")).encode()}
    for where, text in surrogates.items():
        out.append((f"surrogate in {where}", _json_bytes(text, key)))
    for value in (1e308, -1.7e308, 3.4e38, 1e30, 5.0, 11.0):
        if value != 11.0:                   # 5 V: no EEG; 11: beyond a waveform's headroom
            out.append((f"eeg value {value:g}", _json(
                {"eeg": _set(eeg, ("data", 0, 0), value)}, key)))
        if value != 5.0:
            out.append((f"speech value {value:g}", _json(
                {"speech": _set(speech, ("samples", 3), value)}, key)))
    huge = np.full((len(eeg["data"]), len(eeg["data"][0])), 1e30, dtype="<f4")
    out.append(("eeg npy of 1e30", _files([("eeg", ("e.npy", _npy(huge)))], key, {
        "eeg_sfreq": str(eeg["sfreq"]), "eeg_ch_names": json.dumps(eeg["ch_names"])})))
    out.append(("speech npy of 1e30", _files([("speech", ("s.npy", _npy(np.full(
        len(speech["samples"]), 1e30, dtype="<f4"))))], key,
        {"speech_sample_rate": str(speech["sample_rate"])})))
    # a JPEG header declaring 8000 x 8000 (SOF0) on a tiny file: over the pixel budget of
    # a request long before any decoding (the per-frame cap allows 8000 x 8000)
    jpg = files["jpg"]
    sof = jpg.find(b"\xff\xc0")
    if sof > 0:
        big = jpg[:sof + 5] + struct.pack(">HH", 8000, 8000) + jpg[sof + 9:]
        out.append(("60 frames declaring 8000x8000", _files(
            [("video", (f"f{i}.jpg", big, "image/jpeg")) for i in range(60)], key,
            {"video_fps": "25"})))
    for path, method in [("/nope", "post"), ("/v1/predict", "get"), ("/v1/predict", "put"),
                         ("/v1/model", "delete"), ("/v1/subjects/%0A/calibration", "post"),
                         ("/v1/subjects//calibration", "post"), ("/v1/stream", "post"),
                         ("/openapi.json", "post"), ("/" + "a" * 5000, "get")]:
        out.append((f"{method.upper()} {path[:30]}", {"path": path, "method": method,
                                                      "headers": {"X-API-Key": key}}))
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


#: bytes that are not HTTP/1.1 a server can act on: Serve's HTTP server (uvicorn) refuses
#: them before any application code runs, with its own plain-text 400 (documented)
NOT_HTTP = {
    "garbage line": b"GARBAGE\r\n\r\n",
    "HTTP/9.9": b"GET /v1/health HTTP/9.9\r\nHost: x\r\n\r\n",
    "header without colon": b"GET /v1/health HTTP/1.1\r\nHost x\r\n\r\n",
    "NUL in a header": b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "byte 0xff in the path": b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
    "negative length": b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "two lengths": b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                   b"Content-Length: 7\r\n\r\n{}",
    "bad chunk size": b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
                      b"\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "TLS hello": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(64)),
}


def not_http(host: str, port: int, timeout: float = 10.0) -> dict[str, str | None]:
    """Send each of :data:`NOT_HTTP` on its own connection: the answer's status line, or
    None where the server closed the connection without one."""
    import socket

    answers = {}
    for label, data in NOT_HTTP.items():
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(data)
            got = b""
            while b"\r\n" not in got:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                got += chunk
        answers[label] = got.split(b"\r\n", 1)[0].decode("latin-1") or None
    return answers
