"""What the tests of the deployed application share: the API key, the deployments'
settings, and small helpers to post, count replicas and name the live routers."""

from __future__ import annotations

import requests

KEY_ENV, KEY = "EMORAY_TEST_API_KEY", "s3cret-test-key"
FAST_SCALE = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
              "upscale_delay_s": 0.5, "downscale_delay_s": 3, "metrics_interval_s": 0.5,
              "look_back_period_s": 2}
LEAN = {"num_cpus": 0.05}


def replicas(app: str, deployment: str) -> int:
    from ray import serve

    status = serve.status().applications[app].deployments[deployment]
    return int(status.replica_states.get("RUNNING", 0))


def router_actors() -> set[str]:
    """Ids of the live router replicas' actors (the health answer shows no pid): a router
    that crashed and was replaced changes the set."""
    import ray
    from ray.util.state import list_actors

    here = ray.get_runtime_context().gcs_address       # this session's Ray, not another's
    return {a.actor_id for a in list_actors(address=here, filters=[("state", "=", "ALIVE")],
                                            limit=1000)
            if "FusionRouter" in (a.class_name or "") or "FusionRouter" in (a.name or "")}


def post(url: str, body: dict, key: str | None = KEY, path: str = "/v1/predict"):
    headers = {"X-API-Key": key} if key else {}
    return requests.post(url + path, json=body, headers=headers, timeout=60)

