"""Ray Train's torch process group, with its rendezvous store on the rank-0 node's address.

Written here because neither Ray nor torch has a setting for it: Ray Train's
:class:`~ray.train.torch.TorchConfig` sets ``MASTER_ADDR``/``MASTER_PORT`` and calls
``init_process_group("env://")``, and torch's rank 0 then starts a ``TCPStore`` server that
listens on every interface (``[::]``) whatever ``MASTER_ADDR`` says, without
authentication, for the whole run. torch's ``TCPStore`` does accept an already listening
socket (``master_listen_fd``): here rank 0 binds one to its node's address (127.0.0.1 on
the embedded Ray) and every rank joins through it. On a loopback node gloo's and NCCL's own
sockets go on the loopback interface too (``GLOO_SOCKET_IFNAME``, ``NCCL_SOCKET_IFNAME``,
unless set). Everything else is Ray's backend as it is (its shutdown, its environment).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from datetime import timedelta
from typing import Any

from ray.train._internal.worker_group import WorkerGroup as V1WorkerGroup
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend

#: the store rank 0 opened, until its own rank joins the group (one per worker process)
_OPEN: dict[str, Any] = {}


class NodeStoreConfig(TorchConfig):
    """:class:`~ray.train.torch.TorchConfig` whose rendezvous store listens on the rank-0
    node's address only (gloo or NCCL, ``init_method="env"``; others as Ray does)."""

    @property
    def backend_cls(self):
        return _NodeStoreBackend


class _NodeStoreBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: TorchConfig) -> None:
        import ray

        backend = backend_config.backend
        if backend is None:
            gpus = worker_group.get_resources_per_worker().get("GPU", 0)
            backend = "nccl" if gpus > 0 else "gloo"
        if backend not in ("gloo", "nccl") or backend_config.init_method != "env":
            return super().on_start(worker_group, backend_config)
        if not isinstance(worker_group, V1WorkerGroup):    # V1 sets them at training start
            worker_group.execute(_set_torch_distributed_env_vars)
        size, timeout = len(worker_group), backend_config.timeout_s
        addr, port = worker_group.execute_single(0, _open_store, size, timeout)
        ray.get([worker_group.execute_single_async(rank, _join, backend, rank, size, addr,
                                                   port, timeout) for rank in range(size)])


def loopback_interface() -> str | None:
    """The name of the network interface that holds 127.0.0.1 (``lo``, ``lo0``)."""
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == "127.0.0.1" for a in addrs):
            return name
    return None


def _open_store(world_size: int, timeout_s: float) -> tuple[str, int]:
    """On rank 0: a ``TCPStore`` server listening on this node's address; ``(addr, port)``."""
    import ray
    import torch.distributed as dist

    addr = ray.util.get_node_ip_address()
    family = socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((addr, 0))
    sock.listen(max(128, world_size))
    port = sock.getsockname()[1]
    _OPEN["store"] = dist.TCPStore(addr, port, world_size, is_master=True,
                                   master_listen_fd=sock.detach(), wait_for_workers=False,
                                   timeout=timedelta(seconds=timeout_s))
    return addr, port


def _join(backend: str, rank: int, world_size: int, addr: str, port: int,
          timeout_s: float) -> None:
    """On every rank: join the process group through the store at ``addr:port``."""
    import torch.distributed as dist

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = addr, str(port)
    if ipaddress.ip_address(addr).is_loopback and (name := loopback_interface()):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", name)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", name)
    if backend == "nccl":         # as Ray does: fail a timed-out collective, do not hang
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    timeout = timedelta(seconds=timeout_s)
    store = (_OPEN.pop("store") if rank == 0 else
             dist.TCPStore(addr, port, world_size, is_master=False, timeout=timeout))
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                            timeout=timeout)
