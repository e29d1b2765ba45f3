"""Replicas coming and going under load: autoscaling up and down under a burst, a killed
encoder replica, and a downscale that fails no request (graceful drain).
"""

from __future__ import annotations

import threading
import time

import pytest
import requests

from conftest import wait_for
from emoray.config import ServeConfig
from emoray.serving.client import json_request

from .served import post, replicas

pytestmark = pytest.mark.integration


def test_autoscaling_adds_a_speech_replica_under_a_burst_then_removes_it(served, record):
    url = served["url"]
    body = json_request(speech=record["speech"])
    assert replicas("fusion", "SpeechEncoder") == 1
    stop, codes = threading.Event(), []

    def client():
        while not stop.is_set():
            codes.append(post(url, body).status_code)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        t0 = time.monotonic()
        wait_for(lambda: replicas("fusion", "SpeechEncoder") >= 2, 90,
                 "a second SpeechEncoder replica under the burst", poll=0.5)
        print(f"scaled up after {time.monotonic() - t0:.1f} s of burst")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert codes and set(codes) == {200}
    t0 = time.monotonic()
    wait_for(lambda: replicas("fusion", "SpeechEncoder") == 1, 90,
             "the SpeechEncoder to scale back to one replica", poll=0.5)
    print(f"scaled down {time.monotonic() - t0:.1f} s after the burst")


def test_killed_encoder_replica_under_load(served, record):
    """One of the two EEG encoder replicas is killed while 4 clients send EEG + speech:
    under 1 % of requests fail, answers are whole again within 15 s, and Serve replaces the
    replica."""
    import ray

    url = served["url"]
    body = json_request(eeg=record["eeg"], speech=record["speech"])
    stop, log, lock = threading.Event(), [], threading.Lock()

    def client():
        while not stop.is_set():
            t = time.monotonic()
            try:
                ok = post(url, body).status_code == 200
            except requests.RequestException:
                ok = False
            with lock:
                log.append((t, ok))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(3)
        victims = [a for a in ray.util.list_named_actors(all_namespaces=True)
                   if "fusion#EEGEncoder" in a["name"]]
        assert len(victims) == 2, victims
        killed_at = time.monotonic()
        ray.kill(ray.get_actor(victims[0]["name"], namespace=victims[0]["namespace"]),
                 no_restart=True)
        wait_for(lambda: replicas("fusion", "EEGEncoder") < 2 or
                 time.monotonic() - killed_at > 5, 10, "Serve to notice the kill", poll=0.2)
        replaced = wait_for(lambda: replicas("fusion", "EEGEncoder") == 2 and
                            time.monotonic(), 120, "a replacement EEGEncoder replica", poll=0.5)
        time.sleep(2)
    finally:
        stop.set()
        for t in threads:
            t.join()
    failed = [t for t, ok in log if not ok]
    rate = len(failed) / len(log)
    last_failure = max(failed, default=killed_at) - killed_at
    print(f"{len(log)} requests, {len(failed)} failed ({100 * rate:.2f} %), last failure "
          f"{last_failure:.1f} s after the kill, replica replaced after "
          f"{replaced - killed_at:.1f} s")
    assert rate < 0.01
    assert last_failure < 15
    assert any(ok for t, ok in log if t > killed_at + last_failure)


def test_removing_a_replica_under_load_fails_no_request(served, record):
    """A downscale while requests run (the EEG encoder 2 -> 1 replica, by redeploying the
    application): the replica removed first finishes what it holds (graceful shutdown
    waits as long as a request may run), so every request answers 200."""
    from ray import serve

    from emoray.serving.app import build_app

    url = served["url"]
    body = json_request(eeg=record["eeg"], speech=record["speech"])
    # (a replica killed by an earlier test may still be coming back)
    wait_for(lambda: replicas("fusion", "EEGEncoder") == 2, 120, "two EEG replicas")
    stop, codes = threading.Event(), []

    def client():
        while not stop.is_set():
            try:
                codes.append(post(url, body).status_code)
            except requests.RequestException as err:       # a dropped connection fails too
                codes.append(type(err).__name__)

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(codes) >= 6, 60, "load to start")
        plain = served["fusion"].model_dump()
        plain["deployments"]["eeg"]["num_replicas"] = 1
        serve.run(build_app(ServeConfig.model_validate(plain)), name="fusion",
                  route_prefix="/")
        wait_for(lambda: replicas("fusion", "EEGEncoder") == 1, 120, "the downscale")
        seen = len(codes)
        wait_for(lambda: len(codes) >= seen + 6, 60, "requests after the downscale")
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    print(f"downscale under load: {len(codes)} requests, {codes.count(200)} answered 200")
    assert len(codes) >= 12 and set(codes) == {200}, [c for c in codes if c != 200][:10]
