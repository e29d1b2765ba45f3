"""Which address `emoray serve` reports: the router replicas' direct-ingress addresses only
where Ray's high-throughput mode (or direct ingress itself) is on; off, no Ray is asked (no
Ray runs in this test: asking would raise). On, the integration tests ask a real one."""

from __future__ import annotations

import pytest

from emoray.runtime import EMBEDDED_ENV
from emoray.serving.app import direct_ingress_urls


@pytest.mark.parametrize("env", [{"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"},
                                 {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
                                  "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"},
                                 {}])
def test_no_direct_address_without_direct_ingress(monkeypatch, env):
    for name in ("RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_ENABLE_DIRECT_INGRESS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert direct_ingress_urls("emoray", timeout_s=0.0) == []


def test_the_embedded_ray_serves_in_the_high_throughput_mode_with_a_short_drain():
    assert EMBEDDED_ENV["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert float(EMBEDDED_ENV["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"]) <= 5
