"""The protocol state of one live stream (:mod:`emoray.serving.stream`), without the
socket: what the first message declared, each modality's bounded buffer, the windows
ready to answer, the close codes of every refusal, and a replica's stream slots."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emoray.config import StreamConfig

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


__all__ = ["DTYPES", "StreamError", "StreamSlots", "StreamState", "TAGS", "Window"]
