"""Where the embedded Ray listens (``ray.host``, :func:`emoray.runtime.bound_to`): what a
run's processes inherit while it starts, and what is restored afterwards. The sockets
themselves are listed on a real cluster in tests/integration/serving/test_sockets.py and test_quickstart_console.py."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from emoray.config import RayConfig
from emoray.runtime import LOOPBACK_SWITCH, bound_to


def test_the_embedded_ray_is_loopback_by_default_and_takes_an_address():
    assert RayConfig().host == "127.0.0.1"
    assert RayConfig(host="localhost").host == "127.0.0.1"
    assert RayConfig(host="0.0.0.0").host == "0.0.0.0"
    assert RayConfig(host="::1").host == "::1"
    with pytest.raises(ValidationError, match="expected an IP address"):
        RayConfig(host="my-laptop")


def test_a_loopback_node_while_ray_starts_then_the_environment_as_it_was(monkeypatch):
    from ray._private import ray_constants, services

    monkeypatch.delenv(LOOPBACK_SWITCH, raising=False)
    before = ray_constants.ENABLE_RAY_CLUSTER
    with bound_to("127.0.0.1") as kwargs:
        assert kwargs == {"dashboard_host": "127.0.0.1"}
        assert os.environ[LOOPBACK_SWITCH] == "0"             # the processes Ray starts
        # the node's own address (a Ray running in this process answers with its node's:
        # the test session's is a loopback node too)
        assert services.get_node_ip_address() == "127.0.0.1"
    assert LOOPBACK_SWITCH not in os.environ
    assert ray_constants.ENABLE_RAY_CLUSTER == before
    monkeypatch.setenv(LOOPBACK_SWITCH, "1")
    with bound_to("127.0.0.1"):
        assert os.environ[LOOPBACK_SWITCH] == "0"
    assert os.environ[LOOPBACK_SWITCH] == "1"


def test_an_opened_node_is_at_the_address_given():
    with bound_to("10.1.2.3") as kwargs:
        assert kwargs == {"dashboard_host": "10.1.2.3", "_node_ip_address": "10.1.2.3"}
        assert LOOPBACK_SWITCH not in os.environ or os.environ[LOOPBACK_SWITCH] != "0"
    with bound_to("0.0.0.0") as kwargs:                   # Ray's default: the machine's
        assert kwargs == {"dashboard_host": "0.0.0.0"}


@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1:6379", True), ("localhost:6379", True), ("ray://127.0.0.1:10001", True),
    ("[::1]:6379", True), ("10.0.0.5:6379", False), ("head.example:6379", False),
    ("auto", False)])
def test_joining_a_loopback_head_is_done_as_a_loopback_node(address, loopback, monkeypatch):
    from emoray.runtime import joining

    monkeypatch.delenv(LOOPBACK_SWITCH, raising=False)
    with joining(address):
        assert (os.environ.get(LOOPBACK_SWITCH) == "0") == loopback
    assert LOOPBACK_SWITCH not in os.environ
