"""What the session's cluster listens on, with the application deployed: loopback only, but
for Ray's own inter-deployment gRPC servers, which refuse calls without Ray's token.
"""

from __future__ import annotations

import os

import pytest

import sockets

pytestmark = pytest.mark.integration


def test_the_cluster_listens_on_loopback_and_ray_guards_its_one_exception(served):
    """Every listening socket of this session's Ray (GCS, raylet, agents, the proxy, the
    controller, every replica and worker, this driver) is on loopback, but for each Serve
    replica's inter-deployment gRPC server, which Ray 2.60 binds to ``[::]``: a call
    without Ray's token is refused (README "Security")."""
    import grpc

    found = sockets.listening(os.getpid())
    assert sockets.exposed(found) == [], sorted(map(str, found))
    assert any(s.port == int(served["url"].rsplit(":", 1)[1]) and s.loopback for s in found)
    wildcard = [s for s in found if not s.loopback]
    replicas = {s.pid for s in found if s.process.startswith(sockets.RAY_WILDCARD_PROCESS)}
    assert len(replicas) >= 4, sorted(map(str, found))     # router, EEG, speech, video
    assert {s.pid for s in wildcard} == replicas            # one each
    for listener in wildcard:
        with grpc.insecure_channel(f"127.0.0.1:{listener.port}") as channel:
            call = channel.unary_unary("/ray.serve.ASGIService/HandleRequest")
            with pytest.raises(grpc.RpcError) as refused:
                call(b"", timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, listener
    print(f"listening: {len(found)} sockets in {len({s.pid for s in found})} processes, "
          f"{len(found) - len(wildcard)} on loopback, {len(wildcard)} replica gRPC servers "
          f"on {sorted({s.ip for s in wildcard})} refusing calls without the token")
