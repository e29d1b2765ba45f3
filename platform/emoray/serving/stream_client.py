"""The client side of ``/v1/stream`` (:mod:`emoray.serving.stream`): replay a recording in
real time, as an amplifier and a microphone would send it.

:func:`replay` streams in-memory signals (``EEGInput``/``SpeechInput``) in chunks of
``chunk_seconds``, paced at ``speed`` times real time (0: as fast as the server takes
them), and collects the window answers with each window's latency: from the moment the
chunk completing the window left to the moment its answer arrived. :func:`stream_files`
does the same for files (``emoray predict --stream``). The benchmark runs many
:func:`replay` coroutines at once on one event loop.

Examples
--------
>>> stream_files("http://127.0.0.1:8000", ["rec.edf", "speech.wav"],
...              on_answer=print)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emoray.serving.client import API_KEY_HEADER, ClientError, _float_pcm, read_inputs

if TYPE_CHECKING:
    from emoray.predict import EEGInput, SpeechInput

STREAM_PATH = "/v1/stream"


@dataclass
class StreamResult:
    """What one replay got back."""

    ready: dict[str, Any]
    answers: list[dict[str, Any]] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)   # one per answered window
    seconds: float = 0.0              # signal sent
    wall_s: float = 0.0               # from the first chunk to the end answer
    started: float = 0.0              # perf_counter() at the first chunk

    @property
    def realtime_factor(self) -> float:
        """Signal answered per wall second (1.0: the stream kept pace with real time)."""
        answered = self.answers[-1]["end_s"] if self.answers else 0.0
        return answered / self.wall_s if self.wall_s > 0 else 0.0


def ws_url(url: str) -> str:
    """``http(s)://host:port[/prefix]`` -> ``ws(s)://host:port[/prefix]/v1/stream``."""
    base = url.rstrip("/")
    for http, ws in (("https://", "wss://"), ("http://", "ws://")):
        if base.startswith(http):
            return ws + base[len(http):] + STREAM_PATH
    if base.startswith(("ws://", "wss://")):
        return base if base.endswith(STREAM_PATH) else base + STREAM_PATH
    raise ClientError(f"server URL {url!r}: expected http://, https://, ws:// or wss://")


def first_message(eeg: EEGInput | None, speech: SpeechInput | None, *,
                  window_seconds: float | None = None, hop_seconds: float | None = None,
                  subject: str | None = None) -> dict[str, Any]:
    """The stream's first message for these signals."""
    msg: dict[str, Any] = {}
    if eeg is not None:
        msg["eeg"] = {"sfreq": float(eeg.sfreq), "ch_names": list(eeg.ch_names)}
    if speech is not None:
        msg["speech"] = {"sample_rate": int(speech.sample_rate), "dtype": "float32"}
    for key, value in (("window_seconds", window_seconds), ("hop_seconds", hop_seconds),
                       ("subject", subject)):
        if value is not None:
            msg[key] = value
    return msg


def chunks(eeg: EEGInput | None, speech: SpeechInput | None,
           chunk_seconds: float) -> Iterator[tuple[float, list[bytes]]]:
    """``(stream time reached, [binary messages])`` per step: each modality's next
    ``chunk_seconds`` of signal, tagged (``e``: EEG float32 (samples, channels); ``s``:
    speech float32), until the shorter modality ends."""
    parts = []
    if eeg is not None:
        data = np.asarray(eeg.data, dtype=np.float32).T                      # (T, C)
        parts.append((b"e", data, float(eeg.sfreq)))
    if speech is not None:
        parts.append((b"s", _float_pcm(speech.samples), float(speech.sample_rate)))
    if not parts:
        raise ClientError("nothing to stream: give an EEG and/or a speech recording")
    total = min(len(d) / rate for _, d, rate in parts)
    steps = int(np.ceil(total / chunk_seconds - 1e-9))
    for k in range(steps):
        t = min((k + 1) * chunk_seconds, total)
        msgs = []
        for tag, data, rate in parts:
            a, b = int(round(k * chunk_seconds * rate)), int(round(t * rate))
            if b > a:
                msgs.append(tag + np.ascontiguousarray(data[a:b]).tobytes())
        yield t, msgs


def _window_ends(ready: dict[str, Any], seconds: float) -> list[float]:
    window, hop = float(ready["window_seconds"]), float(ready["hop_seconds"])
    n = int(np.floor((seconds - window) / hop + 1e-9)) + 1 if seconds >= window else 0
    return [k * hop + window for k in range(n)]


async def replay(url: str, eeg: EEGInput | None = None, speech: SpeechInput | None = None,
                 *, api_key: str | None = None, subject: str | None = None,
                 window_seconds: float | None = None, hop_seconds: float | None = None,
                 speed: float = 1.0, chunk_seconds: float = 0.1, timeout: float = 60.0,
                 on_answer: Callable[[dict[str, Any]], None] | None = None) -> StreamResult:
    """Stream ``eeg`` and/or ``speech`` to ``{url}/v1/stream`` at ``speed`` x real time.

    Raises
    ------
    ClientError
        The server refused the stream (its message and field), closed it, or did not
        answer within ``timeout`` seconds.
    """
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

    if speed < 0 or chunk_seconds <= 0:
        raise ClientError(f"speed {speed} must be >= 0 and chunk_seconds {chunk_seconds} > 0")
    endpoint = ws_url(url)
    headers = {API_KEY_HEADER: api_key} if api_key else {}
    first = first_message(eeg, speech, window_seconds=window_seconds,
                          hop_seconds=hop_seconds, subject=subject)
    try:
        async with connect(endpoint, additional_headers=headers, max_size=1 << 24,
                           open_timeout=timeout, close_timeout=5) as ws:
            await ws.send(json.dumps(first))
            ready = _answer(await asyncio.wait_for(ws.recv(), timeout), endpoint)
            result = StreamResult(ready=ready)
            sent_at: dict[float, float] = {}
            sender = asyncio.create_task(_send_all(ws, eeg, speech, ready, speed,
                                                   chunk_seconds, sent_at, result))
            try:
                await _receive_all(ws, endpoint, result, sent_at, timeout, on_answer)
            finally:
                if not sender.done():
                    sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
            return result
    except (OSError, InvalidHandshake, InvalidURI) as exc:
        raise ClientError(f"cannot open the stream {endpoint} ({type(exc).__name__}: "
                          f"{exc}); is `emoray serve` running there?") from None
    except ConnectionClosed as exc:
        code, reason = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else ("?", "")
        raise ClientError(f"{endpoint} closed the stream: code {code} {reason}".rstrip()
                          ) from None
    except asyncio.TimeoutError:
        raise ClientError(f"no answer from {endpoint} within {timeout:g} s") from None


async def _send_all(ws: Any, eeg: Any, speech: Any, ready: dict[str, Any], speed: float,
                    chunk_seconds: float, sent_at: dict[float, float],
                    result: StreamResult) -> None:
    start = result.started = time.perf_counter()
    stamped = 0
    for t, msgs in chunks(eeg, speech, chunk_seconds):
        if speed > 0:
            delay = start + t / speed - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        for msg in msgs:
            await ws.send(msg)
        now = time.perf_counter()
        ends = _window_ends(ready, t)
        for end in ends[stamped:]:
            sent_at[round(end, 6)] = now
        stamped = len(ends)
        result.seconds = t
    await ws.send(json.dumps({"type": "end"}))


async def _receive_all(ws: Any, endpoint: str, result: StreamResult,
                       sent_at: dict[float, float], timeout: float,
                       on_answer: Callable[[dict[str, Any]], None] | None) -> None:
    while True:
        answer = _answer(await asyncio.wait_for(ws.recv(), timeout), endpoint)
        now = time.perf_counter()
        if answer.get("type") == "end":
            result.wall_s = now - result.started
            return
        sent = sent_at.get(round(float(answer["end_s"]), 6))
        if sent is not None:
            answer["latency_ms"] = (now - sent) * 1000
            result.latencies_ms.append(answer["latency_ms"])
        result.answers.append(answer)
        if on_answer is not None:
            on_answer(answer)


def _answer(message: Any, endpoint: str) -> dict[str, Any]:
    try:
        body = json.loads(message)
    except (TypeError, ValueError):
        raise ClientError(f"{endpoint} sent a message that is not JSON") from None
    if isinstance(body, dict) and body.get("type") == "error":
        err = body.get("error") or {}
        raise ClientError(f"{endpoint} refused the stream: {err.get('message')}",
                          status=err.get("status"), field=err.get("field"))
    if not isinstance(body, dict) or "type" not in body:
        raise ClientError(f"{endpoint} sent an unexpected message: {str(body)[:200]}")
    return body


def stream_files(url: str, paths: list[str | Path], **kwargs: Any) -> StreamResult:
    """Replay EEG (EDF/BDF/FIF) and/or speech (WAV/FLAC) files against ``{url}/v1/stream``
    (keyword arguments as :func:`replay`)."""
    inputs = read_inputs(paths)
    if inputs.get("video") is not None:
        raise ClientError("video is not streamed; send it to /v1/predict (emoray predict "
                          "without --stream)")
    return asyncio.run(replay(url, inputs.get("eeg"), inputs.get("speech"), **kwargs))


__all__ = ["StreamResult", "chunks", "first_message", "replay", "stream_files", "ws_url"]
