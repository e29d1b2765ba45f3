"""Live streams: ``/v1/stream``, a WebSocket answering once per window of a continuous
EEG and/or audio stream (online monitoring, as affective interfaces consume a model).

Protocol (one stream per connection)
    1. Connect, with the ``X-API-Key`` header when the server requires a key (a browser,
       which cannot set headers on a WebSocket, puts ``"api_key"`` in the first message).
    2. The first message, text JSON, says what the stream holds::

           {"eeg": {"sfreq": 500, "ch_names": ["Fp1", ...]},
            "speech": {"sample_rate": 16000, "dtype": "int16"},
            "window_seconds": 5, "hop_seconds": 1, "subject": "s01"}

       Any non-empty subset of ``eeg`` and ``speech`` (video is not streamed: send frames
       to ``/v1/predict``); ``dtype`` ``float32`` (default) or ``int16``; the window
       defaults to the contract's ``segment_seconds``, the hop to ``serve.stream``'s.
       The server answers ``{"type": "ready", ...}`` with what it settled.
    3. Chunks, binary messages: one tag byte, ``e`` (EEG) or ``s`` (speech), then
       little-endian samples: EEG float32 ``(samples, channels)`` sample-major (each
       sample's channels together, in the first message's order, as an amplifier sends
       them), speech float32 or int16 mono. Chunks may have any length up to
       ``serve.stream.max_chunk_seconds``; the modalities need not arrive in step (up to
       ``max_skew_seconds`` apart).
    4. Window ``k`` covers stream time ``[k * hop, k * hop + window)``. As soon as every
       declared modality holds it, the server answers ``{"type": "window", "index",
       "start_s", "end_s", "lag_s", "compute_ms", ...}`` with the same prediction as
       ``POST /v1/predict`` of that signal (the router's predict path, so Serve and the
       in-process server answer alike). ``lag_s``: signal received beyond the window when
       the answer left (a client that falls behind sees it grow).
    5. ``{"type": "end"}`` (text) ends the stream: ``{"type": "end", "windows", "seconds"}``
       and close code 1000. A client may also just disconnect.

Bounded state
    Each modality's buffer keeps the signal from the next window's start on: at most a
    window, plus one chunk, plus the skew between modalities. Windows are answered in
    order, one model pass at a time per stream; while one runs, the stream's chunks wait
    in the socket, so a client sending faster than the server answers is slowed
    (backpressure), never dropped and never buffered without bound. A router replica
    holds at most ``max_streams`` streams.

Errors
    ``{"type": "error", "error": {"status", "field", "kind", "message"}}``, then a close
    code with the reason: 1008 (policy: API key, a limit, the first-message or idle
    timeout), 1003 (unsupported: a text message where a chunk was expected, an unknown
    tag, video), 1007 (invalid: a first message or chunk that does not parse or holds
    NaN/inf, a window the model refuses), 1013 (the replica holds ``max_streams``
    streams: try again later), 1011 (an unexpected server error; logged).

Written here: WebSocket serving of windowed multimodal model answers has no library in
this field (MNE-LSL and LSL stream to local processes, not to an HTTP model server).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emoray.config import StreamConfig
from emoray.errors import ConfigError, DataError

log = logging.getLogger(__name__)

STREAM_PATH = "/v1/stream"
#: the first byte of a binary chunk -> its modality
TAGS = {ord("e"): "eeg", ord("s"): "speech"}
DTYPES = {"float32": np.dtype("<f4"), "int16": np.dtype("<i2")}
_INT16_SCALE = np.float32(1 / 32768)
_MAX_RATE = {"eeg": 20_000.0, "speech": 192_000.0}

# close codes (RFC 6455 section 7.4.1)
NORMAL, POLICY, UNSUPPORTED, INVALID, TRY_LATER, SERVER_ERROR = 1000, 1008, 1003, 1007, \
    1013, 1011
_STATUS = {POLICY: 403, UNSUPPORTED: 415, INVALID: 422, TRY_LATER: 503, SERVER_ERROR: 500}


class StreamError(Exception):
    """A stream refused: the close code, the message (also the close reason) and field."""

    def __init__(self, code: int, message: str, field: str | None = None,
                 kind: str | None = None):
        super().__init__(message)
        self.code, self.message, self.field, self.kind = code, message, field, kind

    def body(self) -> dict[str, Any]:
        return {"type": "error", "error": {"status": _STATUS.get(self.code, 400),
                                           "field": self.field, "kind": self.kind,
                                           "message": self.message}}


class _Gone(Exception):
    """The client disconnected."""


def _number(obj: dict, key: str, where: str, default: Any = None) -> float:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise StreamError(INVALID, f"{where}: expected a number > 0, got {value!r:.40}",
                          where, "invalid_value")
    return float(value)


@dataclass
class _Buffer:
    """One modality's signal from absolute sample ``origin`` on (bounded by the windows)."""

    rate: float
    n_chans: int | None                 # EEG channels; None: mono speech
    dtype: np.dtype
    origin: int = 0
    chunks: list[np.ndarray] = field(default_factory=list)
    received: int = 0                   # samples since the stream began

    @property
    def seconds(self) -> float:
        return self.received / self.rate


@dataclass
class Window:
    """One window ready to answer: its index, stream-time span and the model inputs."""

    index: int
    start_s: float
    end_s: float
    inputs: dict[str, Any]


class StreamState:
    """The protocol's state of one stream, without the socket (unit-testable): what the
    first message declared, each modality's buffer, and the next window.

    Parameters
    ----------
    first : dict
        The parsed first message.
    info : dict
        The model's ``info()`` (modalities, EEG channels, ``segment_seconds``).
    settings : StreamConfig
        The server's stream defaults and bounds.
    """

    def __init__(self, first: Any, info: dict[str, Any], settings: StreamConfig):
        if not isinstance(first, dict):
            raise StreamError(INVALID, "first message: expected a JSON object with eeg "
                              "and/or speech", "first", "layout")
        unknown = sorted(set(first) - {"eeg", "speech", "video", "window_seconds",
                                        "hop_seconds", "subject", "api_key"})
        if unknown:
            raise StreamError(INVALID, f"first message: unknown key {unknown[0]!r:.40}; "
                              "expected eeg, speech, window_seconds, hop_seconds, subject, "
                              "api_key", unknown[0], "layout")
        if "video" in first:
            raise StreamError(UNSUPPORTED, "video is not streamed; send frames to "
                              "/v1/predict", "video", "layout")
        declared = [m for m in ("eeg", "speech") if first.get(m) is not None]
        if not declared:
            raise StreamError(INVALID, "first message: declare eeg and/or speech",
                              "first", "layout")
        usable = [m for m in declared if m in info["modalities"]]
        if not usable:
            raise StreamError(INVALID, f"the model has no encoder for {declared}; it takes "
                              f"{info['modalities']}", "first", "layout")
        self.settings = settings
        self.subject = self._subject(first.get("subject"))
        self.window_s = _number(first, "window_seconds", "window_seconds",
                                settings.window_seconds or info["segment_seconds"])
        self.hop_s = _number(first, "hop_seconds", "hop_seconds", settings.hop_seconds)
        if self.hop_s < settings.min_hop_seconds:
            raise StreamError(POLICY, f"hop_seconds {self.hop_s:g} is below this server's "
                              f"{settings.min_hop_seconds:g} s (serve.stream.min_hop_seconds)",
                              "hop_seconds", "layout")
        if self.hop_s > self.window_s:
            raise StreamError(INVALID, f"hop_seconds {self.hop_s:g} is longer than the "
                              f"{self.window_s:g} s window: the signal between windows "
                              "would go unanswered", "hop_seconds", "layout")
        if self.window_s > 60:
            raise StreamError(POLICY, f"window_seconds {self.window_s:g} is over 60 s",
                              "window_seconds", "layout")
        self.ch_names: list[str] = []
        self.buffers: dict[str, _Buffer] = {}
        for m in declared:
            self.buffers[m] = self._declare(m, first[m], info)
        self.ignored = [m for m in declared if m not in usable]
        self.index = 0                   # the next window

    @staticmethod
    def _subject(value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not 0 < len(value) <= 128 \
                or not value.isprintable() or "/" in value:
            raise StreamError(INVALID, "subject: expected 1-128 printable characters "
                              "without '/'", "subject", "layout")
        return value

    def _declare(self, m: str, spec: Any, info: dict[str, Any]) -> _Buffer:
        if not isinstance(spec, dict):
            raise StreamError(INVALID, f"{m}: expected an object", m, "layout")
        if m == "eeg":
            extra = set(spec) - {"sfreq", "ch_names"}
            rate = _number(spec, "sfreq", "eeg.sfreq")
            names = spec.get("ch_names")
            if not isinstance(names, list) or not names \
                    or not all(isinstance(n, str) and n.strip() for n in names):
                raise StreamError(INVALID, "eeg.ch_names: expected a non-empty array of "
                                  "channel names", "eeg.ch_names", "layout")
            keys = [n.strip().lower() for n in names]
            if len(set(keys)) != len(keys):
                raise StreamError(INVALID, "eeg.ch_names: duplicate names (compared "
                                  "case-insensitively)", "eeg.ch_names", "layout")
            if len(names) > 256:
                raise StreamError(POLICY, f"eeg.ch_names: {len(names)} channels; the limit "
                                  "is 256", "eeg.ch_names", "layout")
            need = [c for c in (info.get("eeg") or {}).get("channels") or []
                    if c.strip().lower() not in keys]
            if m in info["modalities"] and need:
                raise StreamError(INVALID, f"eeg.ch_names: the model needs channel(s) "
                                  f"{need[:5]} not in the stream", "eeg.ch_names",
                                  "missing_channel")
            self.ch_names = list(names)
            dtype, n_chans = DTYPES["float32"], len(names)
        else:
            extra = set(spec) - {"sample_rate", "dtype"}
            rate = _number(spec, "sample_rate", "speech.sample_rate")
            name = spec.get("dtype", "float32")
            if name not in DTYPES:
                raise StreamError(INVALID, f"speech.dtype: expected float32 or int16, got "
                                  f"{name!r:.40}", "speech.dtype", "layout")
            dtype, n_chans = DTYPES[name], None
        if extra:
            raise StreamError(INVALID, f"{m}: unknown key {sorted(extra)[0]!r:.40}", m,
                              "layout")
        if rate > _MAX_RATE[m]:
            raise StreamError(POLICY, f"{m}: {rate:g} Hz is over the {_MAX_RATE[m]:g} Hz "
                              "this server takes", m, "sample_rate")
        if m == "speech" and rate != int(rate):
            raise StreamError(INVALID, f"speech.sample_rate: expected a whole number, got "
                              f"{rate:g}", "speech.sample_rate", "sample_rate")
        return _Buffer(rate=rate, n_chans=n_chans, dtype=dtype)

    def ready(self) -> dict[str, Any]:
        """The ``ready`` answer to the first message."""
        return {"type": "ready", "modalities": list(self.buffers), "ignored": self.ignored,
                "window_seconds": self.window_s, "hop_seconds": self.hop_s,
                "subject": self.subject,
                "chunks": {m: {"tag": m[0], "dtype": str(b.dtype.name),
                               "layout": "(samples, channels)" if m == "eeg" else "(samples,)"}
                           for m, b in self.buffers.items()}}

    def feed(self, data: bytes) -> None:
        """Append one binary chunk to its modality's buffer (checked)."""
        if not data:
            raise StreamError(INVALID, "empty chunk; expected a tag byte and samples",
                              "chunk", "layout")
        m = TAGS.get(data[0])
        if m is None or m not in self.buffers:
            expected = " or ".join(repr(k[0]) for k in self.buffers)
            raise StreamError(UNSUPPORTED, f"chunk tag {bytes(data[:1])!r}; expected "
                              f"{expected} (the modalities the first message declared)",
                              "chunk", "layout")
        buf = self.buffers[m]
        frame = buf.dtype.itemsize * (buf.n_chans or 1)
        payload = memoryview(data)[1:]
        if len(payload) == 0 or len(payload) % frame:
            raise StreamError(INVALID, f"{m} chunk of {len(payload)} bytes; expected a "
                              f"whole number of {frame}-byte samples ("
                              + (f"{buf.n_chans} channels x " if buf.n_chans else "")
                              + f"{buf.dtype.name})", m, "layout")
        n = len(payload) // frame
        if n / buf.rate > self.settings.max_chunk_seconds:
            raise StreamError(POLICY, f"{m} chunk of {n / buf.rate:.1f} s; the limit is "
                              f"{self.settings.max_chunk_seconds:g} s "
                              "(serve.stream.max_chunk_seconds)", m, "layout")
        arr = np.frombuffer(payload, dtype=buf.dtype)
        if buf.dtype.kind == "i":
            arr = arr.astype(np.float32) * _INT16_SCALE
        elif not np.isfinite(arr).all():
            raise StreamError(INVALID, f"{m} chunk holds NaN/inf; expected finite numbers",
                              m, "invalid_value")
        buf.chunks.append(arr.reshape(n, buf.n_chans) if buf.n_chans else arr)
        buf.received += n
        seconds = [b.seconds for b in self.buffers.values()]
        if max(seconds) - min(seconds) > self.settings.max_skew_seconds:
            ahead = max(self.buffers, key=lambda k: self.buffers[k].seconds)
            raise StreamError(POLICY, f"{ahead} is {max(seconds) - min(seconds):.1f} s ahead "
                              f"of the other modality (limit {self.settings.max_skew_seconds:g}"
                              " s, serve.stream.max_skew_seconds): send each modality's "
                              "chunks as they are recorded", ahead, "layout")

    @property
    def seconds(self) -> float:
        """Stream time every declared modality has reached."""
        return min(b.seconds for b in self.buffers.values())

    def windows(self) -> list[Window]:
        """The windows every modality now holds, in order; their signal leaves the
        buffers (but what the next window needs)."""
        out = []
        while self.seconds >= self.index * self.hop_s + self.window_s - 1e-9:
            start_s = self.index * self.hop_s
            inputs: dict[str, Any] = {"subject": self.subject}
            for m, buf in self.buffers.items():
                start = int(round(start_s * buf.rate))
                stop = start + int(round(self.window_s * buf.rate))
                next_start = int(round((self.index + 1) * self.hop_s * buf.rate))
                data = np.concatenate(buf.chunks) if len(buf.chunks) > 1 else buf.chunks[0]
                piece = data[start - buf.origin:stop - buf.origin]
                keep = min(next_start, buf.received) - buf.origin
                buf.chunks, buf.origin = [data[keep:]], buf.origin + keep
                inputs[m] = self._input(m, piece, buf.rate)
            out.append(Window(self.index, start_s, start_s + self.window_s, inputs))
            self.index += 1
        return out

    def _input(self, m: str, piece: np.ndarray, rate: float) -> Any:
        from emoray.predict import EEGInput, SpeechInput

        if m == "eeg":
            return EEGInput(np.ascontiguousarray(piece.T), rate, self.ch_names)   # (C, T)
        return SpeechInput(np.ascontiguousarray(piece), int(rate))                # (T,)


class StreamSlots:
    """How many streams a replica holds (bounded by ``max_streams``)."""

    def __init__(self, most: int):
        self.most, self.open = most, 0

    def acquire(self) -> bool:
        if self.open >= self.most:
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1


async def _close(ws: Any, err: StreamError) -> None:
    """Send the error body and close with its code (the reason cut to the protocol's 123
    bytes); a client already gone is no error."""
    try:
        await ws.send_text(json.dumps(err.body()))
        reason = err.message.encode("utf-8")[:120].decode("utf-8", "ignore")
        await ws.close(err.code, reason)
    except Exception:          # the peer left: nothing to tell it
        pass


async def _receive(ws: Any, timeout: float, what: str) -> dict[str, Any]:
    try:
        msg = await asyncio.wait_for(ws.receive(), timeout)
    except asyncio.TimeoutError:
        raise StreamError(POLICY, f"no {what} within {timeout:g} s "
                          "(serve.stream)", what, "timeout") from None
    if msg["type"] == "websocket.disconnect":
        raise _Gone
    return msg


def _authorised(backend: Any, ws: Any, first: dict[str, Any]) -> None:
    from emoray.serving import api

    if backend.api_key_digest is None:
        return
    key = first.get("api_key") if isinstance(first, dict) else None
    if isinstance(key, str) and key and api.hmac.compare_digest(
            api.key_digest(key), backend.api_key_digest):
        return
    try:
        api.check_key(backend, ws)
    except api.Refused:
        raise StreamError(POLICY, f"missing or wrong API key; send it in the "
                          f"{api.API_KEY_HEADER} header or as api_key in the first message",
                          api.API_KEY_HEADER, "auth") from None


def _first_message(msg: dict[str, Any]) -> Any:
    text = msg.get("text")
    if text is None:
        raise StreamError(INVALID, "the first message must be text JSON describing the "
                          "stream (eeg and/or speech), not a binary chunk", "first", "layout")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:
        raise StreamError(INVALID, f"first message: not JSON ({str(err)[:60]})", "first",
                          "layout") from None


async def run_stream(backend: Any, ws: Any) -> None:
    """Serve one stream on an accepted-to-be WebSocket ``ws`` (Starlette) with ``backend``
    (a router: ``settings``, ``api_key_digest``, ``info()``, ``predict()``,
    ``stream_slots``), until the client ends it, leaves, or breaks the protocol."""
    settings: StreamConfig = backend.settings.stream
    await ws.accept()
    if not backend.stream_slots.acquire():
        await _close(ws, StreamError(TRY_LATER, f"this replica already holds "
                                     f"{settings.max_streams} streams "
                                     "(serve.stream.max_streams); try again later",
                                     "stream", "capacity"))
        return
    try:
        await _serve(backend, ws, settings)
    except _Gone:
        pass
    except StreamError as err:
        await _close(ws, err)
    except Exception:                        # never a stuck replica: log, tell, close
        log.exception("stream failed")
        await _close(ws, StreamError(SERVER_ERROR, "internal error; see the server log",
                                     None, "server"))
    finally:
        backend.stream_slots.release()


async def _serve(backend: Any, ws: Any, settings: StreamConfig) -> None:
    from emoray.serving.api import Refused, Timings

    first = _first_message(await _receive(ws, settings.first_message_timeout_s,
                                          "first message"))
    _authorised(backend, ws, first)
    state = StreamState(first, backend.info(), settings)
    await ws.send_text(json.dumps(state.ready()))
    answered = 0
    while True:
        msg = await _receive(ws, settings.idle_timeout_s, "chunk")
        if msg.get("bytes") is not None:
            state.feed(msg["bytes"])
        else:
            _control(msg.get("text"))
            await ws.send_text(json.dumps({"type": "end", "windows": answered,
                                           "seconds": round(state.seconds, 6)}))
            await ws.close(NORMAL)
            return
        for window in state.windows():
            t0 = time.perf_counter()
            try:
                pred = await backend.predict(window.inputs, Timings())
            except (Refused, DataError, ConfigError) as err:
                field_ = getattr(err, "field", None)
                reason = getattr(err, "reason", None) or getattr(err, "message", str(err))
                raise StreamError(INVALID, f"window {window.index}: {field_ or 'input'}: "
                                  f"{reason}", field_, getattr(err, "kind", None)) from None
            answered += 1
            await ws.send_text(json.dumps({
                "type": "window", "index": window.index, "start_s": window.start_s,
                "end_s": window.end_s, "lag_s": round(state.seconds - window.end_s, 6),
                "compute_ms": round((time.perf_counter() - t0) * 1000, 2), **pred}))


def _control(text: str | None) -> None:
    """A text message after the first: only ``{"type": "end"}``."""
    try:
        body = json.loads(text or "")
    except (ValueError, RecursionError):
        body = None
    if not (isinstance(body, dict) and body.get("type") == "end"):
        raise StreamError(UNSUPPORTED, 'a text message other than {"type": "end"}; chunks '
                          "are binary (a tag byte, then samples)", "chunk", "layout")


__all__ = ["STREAM_PATH", "StreamError", "StreamSlots", "StreamState", "Window",
           "run_stream"]
