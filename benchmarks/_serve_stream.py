"""The live-stream part of ``benchmarks/serve.py``: N concurrent real-time streams against a
server's ``/v1/stream`` (:mod:`emoray.serving.stream`).

Each stream replays EEG (30 channels at 500 Hz, the channels the model takes, in their
order) and 16 kHz audio of noise in 0.1 s chunks, paced at real time, from one event loop
in this process (:func:`emoray.serving.stream_client.replay`), with the server's window
(the contract's segment) and hop. Per N: the window latency p50/p99 (from the moment the
chunk completing a window left to its answer), the sustained real-time factor (seconds of
signal answered, summed over the streams, per wall second: N means every stream kept
pace) and whether p99 stays under the hop. One more row sends 8 streams as fast as the
server takes them (speed 0): the seconds of signal per wall second the server can answer.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from benchmarks._runner import percentile

EEG_RATE, AUDIO_RATE, CHUNK_S = 500.0, 16000, 0.1
STREAM_TARGET = 8            # concurrent real-time streams with p99 under the hop
STREAM_COLUMNS = ["system", "streams", "speed", "windows", "p50 ms", "p99 ms", "hop ms",
                  "signal s / wall s", "min per stream", "p99 < hop"]


def stream_signals(info: dict[str, Any], seconds: float, seed: int = 0):
    """EEG noise on the model's channels at 500 Hz and audio noise at 16 kHz."""
    import numpy as np

    from emoray.predict import EEGInput, SpeechInput

    rng = np.random.default_rng(seed)
    names = list(info["eeg"]["channels"]) if "eeg" in info["modalities"] else []
    eeg = EEGInput(rng.normal(0, 20e-6, (len(names), int(EEG_RATE * seconds))).astype(
        "float32"), EEG_RATE, names) if names else None                       # (C, T)
    speech = SpeechInput(rng.uniform(-0.1, 0.1, int(AUDIO_RATE * seconds)).astype("float32"),
                         AUDIO_RATE) if "speech" in info["modalities"] else None
    return eeg, speech


async def _streams(url: str, n: int, eeg: Any, speech: Any, speed: float) -> dict[str, Any]:
    from emoray.serving.stream_client import replay

    t0 = time.perf_counter()
    results = await asyncio.gather(*(replay(url, eeg, speech, speed=speed,
                                            chunk_seconds=CHUNK_S, timeout=120)
                                      for _ in range(n)), return_exceptions=True)
    wall = time.perf_counter() - t0
    good = [r for r in results if not isinstance(r, BaseException)]
    errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    lat = [x for r in good for x in r.latencies_ms]
    hop = float(good[0].ready["hop_seconds"]) if good else float("nan")
    answered = sum(r.answers[-1]["end_s"] for r in good if r.answers)
    p99 = percentile(lat, 99)
    return {"streams": n, "speed": speed, "windows": len(lat), "errors": errors,
            "p50_ms": percentile(lat, 50), "p99_ms": p99, "hop_ms": hop * 1000,
            "realtime_factor": answered / wall if wall > 0 else float("nan"),
            "min_stream_rtf": min((r.realtime_factor for r in good), default=0.0),
            "window_s": float(good[0].ready["window_seconds"]) if good else None,
            "keeps_up": bool(good and not errors and p99 < hop * 1000)}


def measure_streams(url: str, info: dict[str, Any], counts: tuple[int, ...],
                    seconds: float) -> list[dict[str, Any]]:
    """One warm-up stream, then ``counts`` concurrent real-time streams of ``seconds``
    each, then 8 streams at speed 0; a row per run."""
    eeg, speech = stream_signals(info, seconds)
    short = stream_signals(info, 6.0, seed=1)
    asyncio.run(_streams(url, 1, *short, speed=0))                     # warm-up
    rows = []
    for n in counts:
        rows.append(asyncio.run(_streams(url, n, eeg, speech, speed=1.0)))
        _print(rows[-1])
    rows.append(asyncio.run(_streams(url, STREAM_TARGET, eeg, speech, speed=0)))
    _print(rows[-1])
    return rows


def _print(row: dict[str, Any]) -> None:
    print(f"  stream x{row['streams']:<3} speed {row['speed']:g}: {row['windows']} windows, "
          f"p50 {row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms (hop "
          f"{row['hop_ms']:.0f} ms), {row['realtime_factor']:.2f} s of signal per s"
          + (f", {len(row['errors'])} errors: {row['errors'][:1]}" if row["errors"] else ""),
          flush=True)


def stream_rows(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, str]]:
    """Table rows of every system's stream runs."""
    out = []
    for system, runs in results.items():
        for r in runs:
            out.append({"system": system, "streams": str(r["streams"]),
                        "speed": "real time" if r["speed"] else "max",
                        "windows": str(r["windows"]), "p50 ms": f"{r['p50_ms']:.0f}",
                        "p99 ms": f"{r['p99_ms']:.0f}", "hop ms": f"{r['hop_ms']:.0f}",
                        "signal s / wall s": f"{r['realtime_factor']:.2f}",
                        "min per stream": f"{r['min_stream_rtf']:.2f}",
                        "p99 < hop": ("yes" if r["keeps_up"] else "NO") if r["speed"]
                        else "-"})
    return out


def stream_target(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The most concurrent real-time streams whose window p99 stayed under the hop
    (every smaller count too), against :data:`STREAM_TARGET`."""
    most = 0
    for r in sorted((r for r in runs if r["speed"]), key=lambda r: r["streams"]):
        if not r["keeps_up"]:
            break
        most = r["streams"]
    return {"streams_kept_up": most, "target": STREAM_TARGET,
            "pass": most >= STREAM_TARGET}


def stream_line(system: str, t: dict[str, Any]) -> str:
    return (f"streams: {system} kept {t['streams_kept_up']} concurrent real-time streams "
            f"with window p99 under the hop (target >= {t['target']}) -> "
            f"{'PASS' if t['pass'] else 'FAIL'}")
