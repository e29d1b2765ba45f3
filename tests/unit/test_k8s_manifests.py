"""The KubeRay manifests under k8s/ and the image's Dockerfile, checked offline.

Every manifest validates against the KubeRay CRDs (k8s/crds) made strict;
broken copies are refused with the path of the bad field (so the strictness itself is
tested); serveConfigV2 is serve/config.yaml in substance; versions, images, entrypoints,
configs and the Serve import path agree with the repo. No cluster, no Ray started.
"""

from __future__ import annotations

import copy
import fnmatch
import importlib
import re
import shlex
import sys
from pathlib import Path
from typing import Iterator

import pytest
import ray
import yaml

from emoray.cluster import kuberay
from emoray.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
MANIFESTS = ["raycluster.yaml", "rayjob-train.yaml", "rayjob-tune.yaml", "rayservice.yaml",
             "storage.yaml"]
MOUNT = "/mnt/emoray"


def _doc(name: str) -> dict:
    (doc,) = kuberay.load_documents(K8S / name)
    return doc


def _ray_docs() -> list[dict]:
    return [_doc(n) for n in MANIFESTS if n != "storage.yaml"]


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _dockerfile() -> str:
    return (K8S / "Dockerfile").read_text()


def _cluster_spec(doc: dict) -> tuple[list, dict]:
    """(path, RayCluster spec) of a RayCluster, RayJob or RayService."""
    key = {"RayCluster": None, "RayJob": "rayClusterSpec",
           "RayService": "rayClusterConfig"}[doc["kind"]]
    return (["spec"], doc["spec"]) if key is None else (["spec", key], doc["spec"][key])


def _pod_templates(doc: dict) -> Iterator[tuple[str, dict]]:
    """(path, pod template) of the head, every worker group and a RayJob's submitter."""
    base, spec = _cluster_spec(doc)
    yield kuberay.format_path(base + ["headGroupSpec"]), spec["headGroupSpec"]["template"]
    for i, group in enumerate(spec["workerGroupSpecs"]):
        yield kuberay.format_path(base + ["workerGroupSpecs", i]), group["template"]
    if "submitterPodTemplate" in doc["spec"]:
        yield "spec.submitterPodTemplate", doc["spec"]["submitterPodTemplate"]


def _containers(doc: dict) -> Iterator[tuple[str, dict]]:
    """(path, container) of every container a Ray resource starts, the autoscaler's
    sidecar (its ``autoscalerOptions``) included."""
    for path, template in _pod_templates(doc):
        for i, c in enumerate(template["spec"]["containers"]):
            yield f"{path}.containers[{i}]", c
    base, spec = _cluster_spec(doc)
    if spec.get("enableInTreeAutoscaling"):
        yield kuberay.format_path(base + ["autoscalerOptions"]), spec["autoscalerOptions"]


# -- schema validation ----------------------------------------------------------------------

def test_every_manifest_validates_strictly():
    assert sorted(p.name for p in K8S.glob("*.yaml")) == sorted(MANIFESTS)
    for name in MANIFESTS:
        assert kuberay.validate_manifest(K8S / name) == [], name
    kinds = {d["kind"] for d in _ray_docs()}
    assert kinds == {"RayCluster", "RayJob", "RayService"}
    assert all(d["apiVersion"] == "ray.io/v1" for d in _ray_docs())


def _problems(doc: dict) -> list[str]:
    return kuberay.validate_documents([doc], "k8s/raycluster.yaml")


def test_broken_copies_are_refused_naming_the_path():
    good = _doc("raycluster.yaml")
    where = "k8s/raycluster.yaml (document 1, RayCluster emoray): "

    bad = copy.deepcopy(good)                                  # wrong type
    bad["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    assert _problems(bad) == [where + "spec.headGroupSpec.rayStartParams.num-cpus: "
                              "expected string, got int"]

    bad = copy.deepcopy(good)                                  # unknown field, deep down
    bad["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["resource"] = {}
    (msg,) = _problems(bad)
    assert msg.startswith(where + "spec.workerGroupSpecs[1].template.spec.containers[0]."
                          "resource: unknown field") and "'resources'" in msg

    bad = copy.deepcopy(good)                                  # missing required field
    del bad["spec"]["workerGroupSpecs"][0]["maxReplicas"]
    assert _problems(bad) == [where + "spec.workerGroupSpecs[0].maxReplicas: missing "
                              "required field"]

    bad = copy.deepcopy(good)           # pod template metadata, CRD metadata, quantities
    bad["spec"]["headGroupSpec"]["template"]["metadata"]["lables"] = {}
    bad["metadata"]["label"] = {}
    bad["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["resources"][
        "limits"]["nvidia.com/gpu"] = 0.5
    bad["spec"]["autoscalerOptions"]["version"] = "v3"
    paths = [p.split(": ")[1] for p in _problems(bad)]
    assert paths == ["metadata.label", "spec.autoscalerOptions.version",
                     "spec.headGroupSpec.template.metadata.lables",
                     'spec.workerGroupSpecs[1].template.spec.containers[0].resources.limits'
                     '["nvidia.com/gpu"]']

    bad = copy.deepcopy(good)                                  # list-map keys are unique
    bad["spec"]["headGroupSpec"]["template"]["spec"]["volumes"].append({"name": "dshm",
                                                                        "emptyDir": {}})
    (msg,) = _problems(bad)
    assert "spec.headGroupSpec.template.spec.volumes[2]: duplicate entry (name=dshm)" in msg

    job = _doc("rayjob-train.yaml")                            # inside a RayJob's cluster
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    job["spec"]["runtimeEnvYAML"] = "- not a mapping"
    assert [p.split(": ")[1] for p in kuberay.validate_documents([job], "j.yaml")] == [
        "spec.rayClusterSpec.headGroupSpec.rayStartParams.num-cpus", "spec.runtimeEnvYAML"]


def test_strict_schema_and_odd_inputs(tmp_path):
    schema = {"type": "object", "properties": {
        "a": {"type": "object", "properties": {"b": {"type": "string"}}},
        "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                 "properties": {"c": {"type": "string"}}},
        "map": {"type": "object", "additionalProperties": {"type": "string"}},
        "list": {"type": "array", "items": {"properties": {"d": {"type": "integer"}}}}}}
    strict = kuberay.strict_schema(schema)
    assert strict["additionalProperties"] is False
    assert strict["properties"]["a"]["additionalProperties"] is False
    assert "additionalProperties" not in strict["properties"]["open"]
    assert strict["properties"]["map"]["additionalProperties"] == {"type": "string"}
    assert strict["properties"]["list"]["items"]["additionalProperties"] is False
    assert "additionalProperties" not in schema                 # the input is untouched

    dup = tmp_path / "dup.yaml"
    dup.write_text("apiVersion: ray.io/v1\nkind: RayCluster\nkind: RayJob\n")
    with pytest.raises(ConfigError, match="duplicate key 'kind'"):
        kuberay.load_documents(dup)
    other = tmp_path / "other.yaml"
    other.write_text("apiVersion: ray.io/v1\nkind: RayCron\nmetadata: {name: x}\n---\n"
                     "apiVersion: v1\nkind: Secret\nmetadata: {nam: x}\n")
    problems = kuberay.validate_manifest(other)
    assert "unknown KubeRay resource ray.io/v1 RayCron" in problems[0]
    assert "(document 2, Secret ?): metadata.nam: unknown field" in problems[1]
    assert problems[2].endswith("metadata.name: missing required field (or generateName)")
    with pytest.raises(ConfigError, match="3 problem"):
        kuberay.check_manifest(other)
    with pytest.raises(ConfigError, match="no \\*.yaml"):
        kuberay.load_crds(tmp_path / "nowhere")


# -- serveConfigV2 ------------------------------------------------------------------------

def test_serve_config_v2_is_serve_config_yaml_in_substance():
    spec = _doc("rayservice.yaml")["spec"]
    ours = kuberay.check_serve_config(spec["serveConfigV2"])
    local = kuberay.check_serve_config((REPO / "serve" / "config.yaml").read_text(),
                                       "serve/config.yaml")
    assert ours.proxy_location == local.proxy_location
    assert ours.http_options.host == "0.0.0.0" and ours.http_options.port == 8000
    assert [a.name for a in ours.applications] == [a.name for a in local.applications]
    for mine, theirs in zip(ours.applications, local.applications):
        assert (mine.import_path, mine.route_prefix) == (theirs.import_path,
                                                         theirs.route_prefix)
        module, _, attr = mine.import_path.partition(":")
        assert callable(getattr(importlib.import_module(module), attr))
        keep = {"checkpoint", "api_key_env"}                 # the cluster's own settings
        assert ({k: v for k, v in mine.args.items() if k not in keep}
                == {k: v for k, v in theirs.args.items() if k not in keep})
        assert mine.args["checkpoint"].startswith(MOUNT + "/")
        got = {d.name: d.model_dump(exclude_unset=True) for d in mine.deployments}
        assert got == {d.name: d.model_dump(exclude_unset=True) for d in theirs.deployments}
        assert all("autoscaling_config" in d for d in got.values())
    key = ours.applications[0].args["api_key_env"]           # every container gets the key
    for path, c in _containers(_doc("rayservice.yaml")):
        if "autoscalerOptions" not in path:
            assert key in {e["name"] for e in c.get("env", [])}, path


def test_serve_config_check_refuses_what_serve_would_drop():
    text = yaml.safe_dump({"applications": [{
        "name": "emoray", "import_path": "emoray.serving.app:build",
        "args": {"checkpoint": "/x", "batchin": True},
        "deployments": [{"name": "EEGEncoder", "max_ongoing_request": 4,
                         "autoscaling_config": {"min_replicas": "many"}}]}]})
    with pytest.raises(ConfigError) as err:
        kuberay.check_serve_config(text)
    msg = str(err.value)
    assert "applications[0].deployments[0].max_ongoing_request: unknown field" in msg
    assert "applications[0].deployments[0].autoscaling_config.min_replicas" in msg
    assert "applications[0].args.batchin" in msg
    with pytest.raises(ConfigError, match="expected a Serve config mapping"):
        kuberay.check_serve_config("- a list")


# -- the image ------------------------------------------------------------------------------

def test_ray_version_image_and_pins_agree():
    docker = _dockerfile()
    base = re.search(r"^ARG BASE=(\S+)$", docker, re.M).group(1)
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert base == f"rayproject/ray:{ray.__version__}-{py}"
    assert re.search(r"^FROM \$\{BASE\}$", docker, re.M)
    assert f"BASE=rayproject/ray:{ray.__version__}-{py}-gpu" in docker
    assert re.search(r"^WORKDIR /app$", docker, re.M)
    pins = [d.replace(" ", "") for d in _pyproject()["project"]["dependencies"]
            if re.match(r"torch(vision|audio)?==", d)]
    assert len(pins) == 3 and all(p in docker.split() for p in pins)
    assert f"ray.__version__ == '{ray.__version__}'" in docker

    version = _pyproject()["project"]["version"]
    cpu, gpu = f"emoray:{version}", f"emoray:{version}-gpu"
    assert f"-t {cpu} ." in docker and f"-t {gpu}" in docker
    for doc in _ray_docs():
        assert _cluster_spec(doc)[1]["rayVersion"] == ray.__version__
        for path, c in _containers(doc):
            if "autoscalerOptions" in path:
                continue
            wants_gpu = "nvidia.com/gpu" in c["resources"]["limits"]
            assert c["image"] == (gpu if wants_gpu else cpu), path

    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert {".git", ".venv", "runs", "data"} <= set(ignored)
    for needed in ("pyproject.toml", "README.md", "platform", "jobs", "configs", "serve"):
        assert (REPO / needed).exists()
        assert not any(fnmatch.fnmatch(needed, pat.removeprefix("**/")) for pat in ignored)


# -- what the manifests name exists ---------------------------------------------------------

@pytest.mark.parametrize("name", ["rayjob-train.yaml", "rayjob-tune.yaml"])
def test_entrypoints_name_real_scripts_and_configs(name, monkeypatch):
    from emoray.cli import build_parser
    from emoray.config import resolve

    spec = _doc(name)["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "python" and (REPO / argv[1]).is_file()
    command = Path(argv[1]).stem                              # jobs/train.py = emoray train
    assert f'main(["{command}", *sys.argv[1:]])' in (REPO / argv[1]).read_text()
    args = build_parser().parse_args([command, *argv[2:]])
    assert (REPO / args.config).is_file() and args.config.startswith("configs/")
    monkeypatch.chdir(REPO)                     # the containers' workingDir is the repo
    if command == "train":
        cfg = resolve(args.config, {"train.features": args.features,
                                    "train.name": args.name, "train.output": args.out},
                      args.overrides)
        assert cfg.train.output.startswith(MOUNT)
    else:
        from emoray.tune.campaign import resolve_campaign, shape

        cfg = resolve_campaign(args.config, {"tune.name": args.name,
                                             "tune.storage": args.storage,
                                             "train.features": args.args[0]}, args.overrides)
        shape(cfg)                               # the space fits the plan it names
        assert cfg.tune.storage.startswith(MOUNT)
    assert cfg.train.features.startswith(MOUNT)
    for path, c in _containers(_doc(name)):
        if "headGroupSpec" in path or "workerGroupSpecs" in path:
            assert c["workingDir"] == "/app", path


def test_rayjobs_clean_up_and_time_out():
    for name in ("rayjob-train.yaml", "rayjob-tune.yaml"):
        spec = _doc(name)["spec"]
        assert spec["shutdownAfterJobFinishes"] is True
        assert spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] > 0
        assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode", "SidecarMode")
        assert spec["backoffLimit"] >= 0


def test_cluster_shape_resources_auth_storage_probes():
    (pvc,) = kuberay.load_documents(K8S / "storage.yaml")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    for doc in _ray_docs():
        _, spec = _cluster_spec(doc)
        label = doc["metadata"]["name"]
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", label
        assert spec["enableInTreeAutoscaling"] is True, label
        assert spec["autoscalerOptions"]["version"] == "v2", label
        assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0, label
        assert spec["authOptions"]["mode"] == "token", label
        groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
        assert "cpu" in groups, label
        for g in groups.values():
            assert g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"], label
        if doc["kind"] != "RayService":                      # training clusters have GPUs
            pod = groups["gpu"]["template"]["spec"]
            (c,) = pod["containers"]
            assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
            assert c["resources"]["requests"]["nvidia.com/gpu"] == \
                c["resources"]["limits"]["nvidia.com/gpu"]
            assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        for path, c in _containers(doc):                     # requests and limits everywhere
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), (label, path, kind)
        for path, template in _pod_templates(doc):
            if "submitter" in path:
                continue
            pod = template["spec"]
            claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                      for v in pod["volumes"] if "persistentVolumeClaim" in v}
            (c,) = pod["containers"]
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert claims.get(mounts.get(MOUNT)) == pvc["metadata"]["name"], (label, path)
            assert c["readinessProbe"] and c["livenessProbe"], (label, path)
    workers = _doc("rayservice.yaml")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    probe = workers[0]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]
    assert probe == {"path": "/v1/health", "port": 8000}


def test_readme_names_real_files_and_resources():
    readme = (K8S / "README.md").read_text()
    for ref in set(re.findall(r"k8s/[\w.-]+", readme)):
        assert (REPO / ref).exists(), ref
    svc = _doc("rayservice.yaml")["metadata"]["name"] + "-serve-svc"
    head = _doc("raycluster.yaml")["metadata"]["name"] + "-head-svc"
    secret = _doc("raycluster.yaml")["spec"]["authOptions"]["secretName"]
    for name in (svc, head, secret, "emoray-api-key", "emoray-storage"):
        assert name in readme, name
