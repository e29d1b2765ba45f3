"""Shared fixtures: one real local Ray per test session, small synthetic corpora."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import torch  # noqa: E402

# Tests run tiny models: one intra-op thread avoids OpenMP spin-waits fighting the Ray
# workers and the other core (measured: tiny matmuls up to 200x slower with 2 threads on a
# loaded 2-core machine).
torch.set_num_threads(1)
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "60")
# The Train controller polls its workers this often (Ray's default: 2 s); a run ends only
# when a poll sees the workers done, which took ~4.5 s after the last report at 2 s and
# ~0.5 s at 0.25 s (measured), on each of the suite's ~15 Train runs. A missed poll is
# no failure (Ray waits RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S, 10 min, for a hung one).
# Set before ray.init, so every worker, Tune trial and CLI driver of the session inherits it
# (Ray passes it on from each driver to its controller).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
# The session's Ray, and the Ray heads the cluster tests start, get what emoray's embedded
# Ray gets (emoray.runtime.EMBEDDED_ENV: no Train preemption watcher, Ray Data's V1 Parquet
# reader; the suite went from 18 min 17 s to 13.5-14.3 min). Ray's default V2 reader, which a
# joined cluster uses, is compared with V1 in test_features.py.
from emoray.runtime import embedded_defaults  # noqa: E402

embedded_defaults()


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray with 2 CPUs, shared by every integration test (RAY.md: share one).

    It listens on 127.0.0.1 only, as emoray's embedded Ray. The dashboard is on: without
    it each ASHA-stopped Tune trial leaks its Train placement group and the next trial
    hangs (RAY.md trap 3).
    """
    import ray

    from emoray.runtime import bound_to

    if not ray.is_initialized():
        with bound_to("127.0.0.1") as binding:      # as emoray's embedded Ray
            ray.init(num_cpus=2, include_dashboard=True, logging_level="ERROR",
                     log_to_driver=False, **binding)
    yield ray
    ray.shutdown()


def _synth(out: Path, **fields) -> Path:
    from emoray.synth.config import SynthConfig
    from emoray.synth.corpus import write_corpus

    base = dict(subjects=2, trials_per_class=1, seconds=4.0, seed=3, video_fps=10.0,
                video_size=48)
    base.update(fields)
    write_corpus(SynthConfig(**base), out, progress=False)
    return out


@pytest.fixture(scope="session")
def corpus_factory(tmp_path_factory):
    """Build (once per session, per parameter set) a small synthetic corpus."""
    cache: dict[tuple, Path] = {}

    def make(**fields) -> Path:
        key = tuple(sorted(fields.items()))
        if key not in cache:
            cache[key] = _synth(tmp_path_factory.mktemp("corpus"), **fields)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def model_features(ray_cluster, corpus_factory, tmp_path_factory) -> Path:
    """Feature shards of the model-behaviour corpus (3 subjects x 8 trials per class x 4 s,
    one 4 s segment per trial, video 4 frames of 32 x 32) through the Ray Data path."""
    from emoray.config import IngestConfig, PreprocessConfig
    from emoray.data.ingest import run_ingest
    from emoray.data.preprocess import run_preprocess

    corpus = corpus_factory(subjects=3, trials_per_class=8, seconds=4.0, seed=11)
    out = tmp_path_factory.mktemp("modelfeatures")
    run_ingest(IngestConfig(source=str(corpus), output=str(out / "rec"), segment_seconds=4.0),
               echo=lambda *_: None)
    cfg = PreprocessConfig(input=str(out / "rec"), output=str(out / "feat"))
    cfg.contract.video.size, cfg.contract.video.n_frames = 32, 4
    run_preprocess(cfg, echo=lambda *_: None)
    return out / "feat"


@pytest.fixture(scope="session")
def native_corpus(corpus_factory) -> Path:
    """Parallel native corpus: 2 subjects x 5 trials x 4 s, EEG FIF + WAV + MP4."""
    return corpus_factory()


@pytest.fixture(scope="session")
def eav_features(ray_cluster, corpus_factory, tmp_path_factory) -> Path:
    """Record and feature shards (``rec/``, ``feat/``) of a small EAV-layout corpus.

    2 subjects x 10 trials (both tasks, so listening trials lack speech) x 4 s, cut into
    2 s segments (40 records); video in the contract as 4 frames of 32 x 32.
    """
    from emoray.config import IngestConfig, PreprocessConfig
    from emoray.data.ingest import run_ingest
    from emoray.data.preprocess import run_preprocess

    corpus = corpus_factory(layout="eav", subjects=2, trials_per_class=2, seconds=4.0)
    out = tmp_path_factory.mktemp("eavfeatures")
    run_ingest(IngestConfig(source=str(corpus), output=str(out / "rec"), layout="eav",
                            segment_seconds=2.0, options={"task": "both"}), echo=lambda *_: None)
    cfg = PreprocessConfig(input=str(out / "rec"), output=str(out / "feat"))
    cfg.contract.video.size, cfg.contract.video.n_frames = 32, 4
    run_preprocess(cfg, echo=lambda *_: None)
    return out


#: the tiny fusion stage the fusion, inference and tuning tests share (2 workers, 2 epochs)
FUSION_FAST = dict(epochs=2, batch_size=8, dim=32, heads=2, layers=1, num_workers=2,
                   cpus_per_worker=0.25, controller_failure_limit=0, max_failures=0,
                   materialize=True, subject_norm=["eeg", "logmel", "video"])


@pytest.fixture(scope="session")
def fusion_run(eav_features, tmp_path_factory) -> dict:
    """One fusion run on ``eav_features`` (``train_fusion``'s result); tests only read it.
    ``result["listening"]``: the sockets this process tree listened on meanwhile (its two
    Train workers' process group included; :mod:`sockets`)."""
    import sockets
    from emoray.config import FusionStageConfig
    from emoray.train.stages.fusion import train_fusion

    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "15")
    watcher = sockets.Watcher(os.getpid(), every=0.25)
    try:
        result = train_fusion(eav_features / "feat", tmp_path_factory.mktemp("fusion_run"),
                              FusionStageConfig(**FUSION_FAST))
    finally:
        mp.undo()
        seen = watcher.stop()
    return dict(result, listening=seen)


@pytest.fixture(scope="session")
def jmml_run(eav_features, tmp_path_factory):
    """The tiny JMML plan (configs/train/jmml-tiny.yaml: intra -> inter -> classifier) on
    ``eav_features/feat``, run once per session; tests only read it.

    Returns ``(result, lines)``: ``result`` is :func:`~emoray.train.plan.run_plan`'s
    ``{"run_dir", "stages": {stage: {"status", "bundle", "metrics", "curves",
    "seconds"}}}`` and ``lines`` the progress lines it echoed. Each ``bundle`` is the
    stage's last Ray Train checkpoint folder (``<run_dir>/<stage>/checkpoint_*``, a str);
    the final, servable one is ``result["stages"]["classifier"]["bundle"]``.
    """
    from emoray.config import resolve
    from emoray.train.plan import run_plan

    tiny = Path(__file__).resolve().parents[1] / "configs" / "train" / "jmml-tiny.yaml"
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "15")
    root = tmp_path_factory.mktemp("jmmlruns")
    cfg = resolve(tiny, {"train.features": str(eav_features / "feat"), "train.output": str(root),
                         "train.name": "tiny"})
    lines: list[str] = []
    try:
        result = run_plan(cfg, echo=lines.append)
    finally:
        mp.undo()
    return result, lines


def wait_for(condition, timeout: float, what: str, alive=lambda: True, poll: float = 0.1,
             detail=lambda: ""):
    """Poll ``condition()`` until it is truthy (returned); fail after ``timeout`` seconds or
    as soon as ``alive()`` turns false (the run under test ended early)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if not alive():
            pytest.fail(f"the run ended while waiting for {what}\n{detail()}")
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{detail()}")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module of tiny-tensor tests (``pytestmark =
    pytest.mark.usefixtures("one_torch_thread")``): two OpenMP threads on a busy 2-core
    machine are up to ~100x slower on tensors this small."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@contextmanager
def plain_server(backend, log_level: str = "warning"):
    """The API over ``backend`` on a real uvicorn server in a thread (no Ray), on a free
    loopback port; yields its base URL and stops it after."""
    import socket
    import threading

    import uvicorn

    from emoray.serving.api import make_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(make_app(backend), host="127.0.0.1", port=port,
                                           log_level=log_level))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 30, "uvicorn to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
