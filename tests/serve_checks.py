"""What the serving integration tests share: one raw trial of the test corpus as model
inputs, the ``Server-Timing`` of an answer checked for sense, and probabilities compared
within a tolerance."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import requests

from emoray.data.shards import read_metadata, shard_files, unflatten
from emoray.io.video import decode_jpeg
from emoray.predict import EEGInput, SpeechInput, VideoInput


def one_record(features) -> dict:
    """One raw trial segment of ``features/rec`` with all three modalities, as inputs."""
    rec = pq.read_table(shard_files(features / "rec"))
    rows = rec.to_pylist()
    row = next(r for r in rows if r["audio"] is not None and r["eeg"] is not None
               and r["video"] is not None)
    names = list(read_metadata(features / "rec")["dataset"]["eeg_channels"])
    return {"eeg": EEGInput(unflatten(row["eeg"], row["eeg_shape"]), row["eeg_sfreq"], names),
            "speech": SpeechInput(np.asarray(row["audio"], np.float32), row["audio_rate"]),
            "video": VideoInput(decode_jpeg(row["video"]), row["video_fps"])}


def server_steps(answer: requests.Response) -> dict[str, float]:
    """The answer's Server-Timing steps (ms), checked for sense."""
    from benchmarks.serve import parse_server_timing

    steps = parse_server_timing(answer.headers["server-timing"])
    assert all(v >= 0 for v in steps.values()), steps
    assert steps["total"] >= steps["decode"] + steps["prepare"] + steps["combine"], steps
    assert steps["total"] <= answer.elapsed.total_seconds() * 1000 + 1, steps
    return steps


def close(a: dict, b: dict, tol: float = 2e-4) -> None:
    """Two ``{class: probability}`` answers equal within ``tol``."""
    assert a.keys() == b.keys()
    for k in a:
        assert abs(a[k] - b[k]) < tol, (k, a[k], b[k])
