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
import time
from typing import Any

from emoray.config import StreamConfig
from emoray.errors import ConfigError, DataError
from emoray.serving.guard import (API_KEY_HEADER, Refused, Timings, check_answer,
                                  check_key, key_digest)
from emoray.serving.stream_state import (INVALID, NORMAL, POLICY, SERVER_ERROR, TRY_LATER,
                                         UNSUPPORTED, StreamError, StreamSlots, StreamState,
                                         Window)

log = logging.getLogger(__name__)

STREAM_PATH = "/v1/stream"


class _Gone(Exception):
    """The client disconnected."""


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
    import hmac

    if backend.api_key_digest is None:
        return
    key = first.get("api_key") if isinstance(first, dict) else None
    if isinstance(key, str) and key and hmac.compare_digest(
            key_digest(key), backend.api_key_digest):
        return
    try:
        check_key(backend, ws)
    except Refused:
        raise StreamError(POLICY, f"missing or wrong API key; send it in the "
                          f"{API_KEY_HEADER} header or as api_key in the first message",
                          API_KEY_HEADER, "auth") from None


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
                check_answer(pred)
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
