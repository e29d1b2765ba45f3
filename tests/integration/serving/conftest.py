"""The fusion application on a real local Serve, deployed once for this package (real
HTTP): the session's tiny fusion bundle, API key on, a 4 MiB body cap, the speech encoder
autoscaled with short delays (the router keeps up to two batched calls in flight to it, so
a burst shows as more than one call per replica), the EEG encoder on two fixed replicas
(the replica-kill and downscale target). The fixture is package-scoped, so the package's modules share one
deployment and it is shut down after the last of them (the package has an ``__init__.py``
for that). The same API on a plain uvicorn server is tested in test_serve_plain.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from serve_checks import one_record
from sockets import free_port
from emoray.config import ServeConfig

from .served import FAST_SCALE, KEY, KEY_ENV, LEAN


@pytest.fixture(scope="package")
def record(eav_features):
    return one_record(eav_features)


@pytest.fixture(scope="package")
def served(ray_cluster, fusion_run):
    """The fusion application on Serve; shut down after the package."""
    from ray import serve

    from emoray.serving.app import build_app

    os.environ[KEY_ENV] = KEY
    port = free_port()
    deps = {"router": {"autoscaling": None, **LEAN},
            "eeg": {"autoscaling": None, "num_replicas": 2, **LEAN},
            "speech": {"autoscaling": FAST_SCALE, "max_batch_size": 4,
                       "max_inflight_batches": 2, **LEAN},
            "video": {"autoscaling": None, **LEAN}}
    fusion_cfg = ServeConfig(checkpoint=str(fusion_run["checkpoint"]), port=port,
                             api_key_env=KEY_ENV, max_body_mb=4.0, deployments=deps,
                             stream={"first_message_timeout_s": 2, "idle_timeout_s": 10})
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    t0 = time.monotonic()
    serve.run(build_app(fusion_cfg), name="fusion", route_prefix="/")
    print(f"application deployed in {time.monotonic() - t0:.1f} s")
    yield {"url": f"http://127.0.0.1:{port}", "fusion": fusion_cfg,
           "bundle": Path(fusion_run["checkpoint"])}
    serve.shutdown()
    os.environ.pop(KEY_ENV, None)
