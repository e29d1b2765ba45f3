"""Malformed and hostile live streams (``/v1/stream``) for the stream tests, on uvicorn and
on Serve: every way a client can get a stream wrong.

:func:`malformed_streams` builds ``(label, steps, codes)`` cases from one valid first
message and one valid chunk per modality: a first message that is binary, not JSON, not an
object, with unknown keys, bad rates, channel sets, dtypes, windows, hops, subjects or
keys; chunks with unknown tags, undeclared modalities, wrong lengths, NaN/inf, too long,
text where binary belongs, modalities drifting apart; a frame cut short with the
connection dropped; silence before the first message. :func:`run_case` plays one against
a server and returns what came back; :func:`check_all` runs every case and then checks the
server still streams.
"""

from __future__ import annotations

import asyncio
import copy
import json
import struct
from typing import Any

import numpy as np

POLICY, UNSUPPORTED, INVALID = 1008, 1003, 1007
GONE = "gone"              # the client dropped the connection: nothing to read back


def _first(first: dict, **changes) -> str:
    out = copy.deepcopy(first)
    for path, value in changes.items():
        node, keys = out, path.split("__")
        for k in keys[:-1]:
            node = node[k]
        if value is _DROP:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    return json.dumps(out, allow_nan=True)


_DROP = object()


def _partial_frame(payload_len: int, sent: int) -> bytes:
    """A masked binary frame header declaring ``payload_len`` bytes, then ``sent`` of them."""
    header = bytes([0x82, 0x80 | 126]) + struct.pack(">H", payload_len) + b"\x01\x02\x03\x04"
    return header + b"\x00" * sent


def malformed_streams(first: dict, eeg_chunk: bytes, speech_chunk: bytes, key: str | None,
                      eeg_rate: float, speech_rate: float, n_chans: int,
                      first_timeout: float) -> list[tuple[str, list[tuple], set]]:
    """Cases ``(label, steps, allowed close codes)``; a step is ``("text", str)``,
    ``("bytes", bytes)``, ``("raw", bytes)`` (written to the socket as they are, then the
    connection dropped) or ``("wait", seconds)``. ``first`` declares eeg and speech."""
    ok = json.dumps(first)
    out: list[tuple[str, list[tuple], set]] = []

    def first_case(label: str, text: str, codes: set) -> None:
        out.append((f"first: {label}", [("text", text)], codes))

    out.append(("first: binary", [("bytes", b"e" + eeg_chunk[1:])], {INVALID}))
    for junk in ["", "{", "[]", "null", "1", '"eeg"', "{" * 3000, "[" * 100_000, "NaN",
                 '{"eeg": {"sfreq": 1e999}}']:
        first_case(f"junk {junk[:8]!r}", junk, {INVALID})
    first_case("empty object", "{}", {INVALID})
    first_case("unknown key", _first(first, extra=1), {INVALID})
    first_case("video", _first(first, video={"fps": 25}), {UNSUPPORTED})
    for bad in [None, "500", -1, 0, True, [500], float("inf"), 1e9]:
        first_case(f"eeg.sfreq={bad!r}", _first(first, eeg__sfreq=bad),
                   {INVALID, POLICY} if bad is not None else {INVALID})
    for bad in [None, "Fp1", [], [1, 2], ["", "Fp2"], ["Fp1", "fp1"], ["Fp1"],
                [f"X{i}" for i in range(300)]]:
        first_case(f"eeg.ch_names={str(bad)[:20]}", _first(first, eeg__ch_names=bad),
                   {INVALID, POLICY})
    for bad in [None, 16000.5, "16000", 0, 1e7]:
        first_case(f"speech.sample_rate={bad!r}", _first(first, speech__sample_rate=bad),
                   {INVALID, POLICY})
    for bad in ["float64", "int8", 16, ""]:
        first_case(f"speech.dtype={bad!r}", _first(first, speech__dtype=bad), {INVALID})
    first_case("speech extra key", _first(first, speech__channels=2), {INVALID})
    first_case("eeg not an object", _first(first, eeg=[1, 2]), {INVALID})
    for bad in [0, -1, 0.01, "1", 1e6]:
        first_case(f"hop_seconds={bad!r}", _first(first, hop_seconds=bad), {INVALID, POLICY})
    for bad in [0, 3600, "5"]:
        first_case(f"window_seconds={bad!r}", _first(first, window_seconds=bad),
                   {INVALID, POLICY})
    for bad in ["a/b", "", "x" * 200, 7, "\x00"]:
        first_case(f"subject={str(bad)[:10]!r}", _first(first, subject=bad), {INVALID})
    if key is not None:
        first_case("wrong api_key", _first(first, api_key=key + "x"), {POLICY})
        first_case("api_key not a string", _first(first, api_key=[key]), {POLICY})

    def chunk_case(label: str, steps: list[tuple], codes: set) -> None:
        out.append((f"chunk: {label}", [("text", ok), *steps], codes))

    chunk_case("empty", [("bytes", b"")], {INVALID})
    chunk_case("unknown tag", [("bytes", b"x" + eeg_chunk[1:])], {UNSUPPORTED})
    chunk_case("tag only", [("bytes", b"e")], {INVALID})
    chunk_case("eeg odd length", [("bytes", eeg_chunk[:-3])], {INVALID})
    chunk_case("eeg one sample short of a channel", [("bytes", eeg_chunk[:-4])], {INVALID})
    chunk_case("speech odd length", [("bytes", speech_chunk[:-1])], {INVALID})
    nan = np.full((4, n_chans), np.nan, dtype="<f4").tobytes()
    chunk_case("eeg NaN", [("bytes", b"e" + nan)], {INVALID})
    inf = np.array([0.1, np.inf], dtype="<f4").tobytes()
    chunk_case("speech inf", [("bytes", b"s" + inf)], {INVALID})
    long_eeg = np.zeros((int(11 * eeg_rate), n_chans), dtype="<f4").tobytes()
    chunk_case("eeg chunk of 11 s", [("bytes", b"e" + long_eeg)], {POLICY})
    six = np.zeros(int(6 * speech_rate), dtype="<f4").tobytes()
    chunk_case("speech 12 s ahead", [("bytes", b"s" + six), ("bytes", b"s" + six)], {POLICY})
    chunk_case("text chunk", [("text", "hello")], {UNSUPPORTED})
    chunk_case("json chunk", [("text", json.dumps({"eeg": [[1.0]]}))], {UNSUPPORTED})
    rng = np.random.default_rng(7)
    for i in range(6):          # garbage under a declared tag: a ragged length, or NaN/inf
        tag = b"es"[i % 2:i % 2 + 1]            # among thousands of random float32 values
        frame, rate = (4 * n_chans, eeg_rate) if tag == b"e" else (4, speech_rate)
        samples = int(rng.integers(max(1, int(rate)), int(4 * rate)))     # 1-4 s
        n = samples * frame + (int(rng.integers(1, frame)) if i < 3 else 0)
        chunk_case(f"garbage {tag!r} {n} bytes", [("bytes", tag + rng.bytes(n))], {INVALID})
    chunk_case("cut mid-frame, then dropped", [("bytes", eeg_chunk),
                                               ("raw", _partial_frame(4000, 100))], {GONE})
    out.append(("first: cut mid-frame, then dropped", [("raw", _partial_frame(300, 10))],
                {GONE}))
    out.append(("first: never sent", [("wait", first_timeout + 1.0)], {POLICY}))
    return out


async def run_case(url: str, steps: list[tuple], key: str | None, timeout: float = 30.0
                   ) -> tuple[Any, str, list[dict]]:
    """Play ``steps`` against ``url`` (ws://...); returns (close code or :data:`GONE`,
    close reason, JSON messages received)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    headers = {"X-API-Key": key} if key else {}
    got: list[dict] = []
    async with connect(url, additional_headers=headers, max_size=1 << 25,
                       close_timeout=2) as ws:
        try:
            for kind, value in steps:
                if kind == "raw":
                    ws.transport.write(value)
                    ws.transport.abort()
                    return GONE, "", got
                if kind == "wait":
                    await asyncio.sleep(value)
                    continue
                await ws.send(value)
        except ConnectionClosed:           # the server closed first: read what it said
            pass
        try:
            while True:
                got.append(json.loads(await asyncio.wait_for(ws.recv(), timeout)))
        except ConnectionClosed:
            pass
        rcvd = ws.close_code, ws.close_reason
    return rcvd[0], rcvd[1] or "", got


def check_all(url: str, cases: list[tuple[str, list[tuple], set]], key: str | None
              ) -> list[str]:
    """Every case against ``url``, 8 at a time; the failures (empty when every case got
    an allowed close code with a reason and an error body naming the problem)."""
    async def one(case, gate):
        label, steps, codes = case
        async with gate:
            try:
                code, reason, got = await run_case(url, steps, key)
            except Exception as err:           # a failed handshake is a failure too
                return f"{label}: {type(err).__name__}: {err}"
        if GONE in codes:
            return None if code == GONE else f"{label}: expected to drop, got {code}"
        if code not in codes:
            return f"{label}: close code {code} {reason!r}, expected {sorted(codes)}"
        errors = [m for m in got if m.get("type") == "error"]
        if not reason or not errors or not errors[-1]["error"]["message"]:
            return f"{label}: close {code} without a reason or an error body: {got[-2:]}"
        return None

    async def every():
        gate = asyncio.Semaphore(8)
        return await asyncio.gather(*(one(c, gate) for c in cases))

    return [f for f in asyncio.run(every()) if f]
