"""`emoray serve CHECKPOINT` as a user runs it: its own embedded Ray (a second cluster beside
the session's), the proxy's address and the router's direct-ingress address printed, both
answering, and Ctrl-C shutting it down."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests

from serve_checks import one_record
from sockets import free_port
from emoray.serving.client import json_request

pytestmark = pytest.mark.integration

DIRECT_LINE = "[serve] the router also answers directly"


def _lines(proc: subprocess.Popen) -> queue.Queue:
    out: queue.Queue = queue.Queue()

    def pump():
        for line in proc.stdout:
            out.put(line.rstrip("\n"))
        out.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return out


def test_emoray_serve_prints_the_proxy_and_the_direct_address_and_both_answer(
        fusion_run, eav_features, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-m", "emoray", "serve",
                             str(fusion_run["checkpoint"]), "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines, seen = _lines(proc), []
    try:
        deadline = time.monotonic() + 240
        while not any(s.startswith(DIRECT_LINE) for s in seen):
            line = lines.get(timeout=max(1.0, deadline - time.monotonic()))
            assert line is not None, "emoray serve ended:\n" + "\n".join(seen)
            seen.append(line)
        up = next(s for s in seen if s.startswith("[serve] ") and " up in " in s)
        assert f"http://127.0.0.1:{port}" in up
        direct = seen[-1].rsplit(": ", 1)[1].split(", ")[0]
        assert direct.startswith("http://127.0.0.1:") and not direct.endswith(f":{port}")
        body = json_request(speech=one_record(eav_features)["speech"])
        answers = [requests.post(url + "/v1/predict", json=body, timeout=60)
                   for url in (f"http://127.0.0.1:{port}", direct)]
        assert [a.status_code for a in answers] == [200, 200], answers[1].text
        assert answers[0].json()["probabilities"] == pytest.approx(
            answers[1].json()["probabilities"], abs=1e-6)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
    rest = []
    while (line := lines.get(timeout=10)) is not None:
        rest.append(line)
    assert "[serve] shutting down" in rest, "\n".join(seen + rest)
    print("\n".join(s for s in seen if s.startswith("[serve]")))
