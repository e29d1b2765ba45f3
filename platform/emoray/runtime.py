"""Starting or joining Ray: the embedded local cluster emoray starts by default."""

from __future__ import annotations

import logging
import os

from emoray.config import RayConfig


def init_ray(cfg: RayConfig | None = None) -> None:
    """Connect to ``cfg.address`` or start an embedded local Ray (idempotent).

    The embedded Ray binds to 127.0.0.1 only. Worker processes get ``platform/`` on their
    path through the installed package, never through the repo root (see DESIGN.md).
    """
    import ray

    cfg = cfg or RayConfig()
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    kwargs: dict = {"logging_level": logging.WARNING, "log_to_driver": True}
    if cfg.address:
        ray.init(address=cfg.address, **kwargs)
        return
    if cfg.include_dashboard is not None:
        kwargs["include_dashboard"] = cfg.include_dashboard
        kwargs["dashboard_host"] = "127.0.0.1"
    if cfg.object_store_mb:
        kwargs["object_store_memory"] = cfg.object_store_mb * 1024 * 1024
    ray.init(num_cpus=cfg.num_cpus, **kwargs)


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
