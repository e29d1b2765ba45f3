"""Ray Train's process group with emoray's backend (:mod:`emoray.train.process_group`): the
ranks reduce together, and its rendezvous store listens on the node's address (loopback on
the test session's Ray), not on every interface as torch's own would."""

from __future__ import annotations

import json
import os

import pytest

import sockets

pytestmark = pytest.mark.integration


def test_two_ranks_reduce_through_a_store_on_the_node_address(ray_cluster, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from emoray.train.process_group import NodeStoreConfig, loopback_interface

    def loop(config: dict) -> None:      # by value: workers cannot import this module
        import json
        import time
        from pathlib import Path

        import torch
        import torch.distributed as dist

        t = torch.ones(3) * (dist.get_rank() + 1)
        dist.all_reduce(t)
        time.sleep(config["hold_s"])          # the group stays up while the test looks
        seen = {"sum": float(t[0]), "gloo_ifname": os.environ.get("GLOO_SOCKET_IFNAME"),
                "master": os.environ["MASTER_ADDR"]}
        Path(config["out"], f"rank{dist.get_rank()}.json").write_text(json.dumps(seen))

    watcher = sockets.Watcher(os.getpid(), every=0.2)
    try:
        TorchTrainer(
            loop, train_loop_config={"hold_s": 3.0, "out": str(tmp_path)},
            torch_config=NodeStoreConfig(),
            scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
            run_config=RunConfig(name="pg", storage_path=str(tmp_path))).fit()
    finally:
        seen = watcher.stop()
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got == {"sum": 3.0, "master": "127.0.0.1",        # 1 + 2: both ranks joined
                       "gloo_ifname": loopback_interface()}
    workers = [s for s in seen if s.process.startswith("ray::RayTrainWorker")]
    assert workers, sorted(map(str, seen))                   # the store and gloo's pairs
    assert sockets.exposed(seen) == [], sorted(map(str, sockets.exposed(seen)))
