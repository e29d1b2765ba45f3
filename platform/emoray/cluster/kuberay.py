"""Offline validation of KubeRay manifests against the ``ray.io`` CRD schemas.

A manifest (one or more YAML documents) is checked the way a strict ``kubectl apply`` would
check it, with no cluster: each ``ray.io/v1`` document against its CRD's
``openAPIV3Schema`` made *strict* (an object schema that lists ``properties`` refuses any
other key unless it preserves unknown fields), plus what the CRD cannot say: the object's
``metadata``, unique keys of ``x-kubernetes-list-type`` lists, a ``serveConfigV2`` that
Ray Serve accepts (:func:`check_serve_config`) and a ``runtimeEnvYAML`` that parses.
Other kinds (a PersistentVolumeClaim, a Secret) get a minimal check.

Every problem comes back as one line naming the file, the document, the JSON path of the
bad field and what was expected, e.g.::

    k8s/raycluster.yaml (document 1, RayCluster emoray):
        spec.headGroupSpec.rayStartParams.num-cpus: expected string, got int
"""

from __future__ import annotations

import copy
import difflib
import functools
import os
from pathlib import Path
from typing import Any

import yaml

from emoray.errors import ConfigError

_REPO = Path(__file__).resolve().parents[3]          # platform/emoray/cluster -> repo root
_QUANTITY = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}

#: what the API server checks of every object's ``metadata`` (the CRDs leave it open)
OBJECT_META: dict[str, Any] = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 253, "pattern": _DNS_SUBDOMAIN},
    "generateName": {"type": "string"},
    "namespace": {"type": "string", "maxLength": 63, "pattern": _DNS_LABEL},
    "labels": _STRING_MAP, "annotations": _STRING_MAP,
    "finalizers": {"type": "array", "items": {"type": "string"}},
}, "anyOf": [{"required": ["name"]}, {"required": ["generateName"]}]}

_PVC_SPEC = {"type": "object", "required": ["accessModes", "resources"],
             "additionalProperties": True, "properties": {      # selector ...: not checked
                 "accessModes": {"type": "array", "minItems": 1, "items": {"enum": [
                     "ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]}},
                 "resources": {"type": "object", "required": ["requests"], "properties": {
                     "requests": {"type": "object", "required": ["storage"], "properties": {
                         "storage": {"type": "string", "pattern": _QUANTITY}}}}}}}
#: a minimal PersistentVolumeClaim (core/v1): metadata, access modes and size
PVC_SCHEMA: dict[str, Any] = {"type": "object", "required": ["metadata", "spec"], "properties": {
    "apiVersion": {}, "kind": {}, "metadata": OBJECT_META, "spec": _PVC_SPEC}}
#: any other kind: only its metadata is checked
_ANY_KIND = {"type": "object", "required": ["metadata"], "properties": {"metadata": OBJECT_META},
             "additionalProperties": True}


def default_crd_dir() -> Path:
    """``EMORAY_KUBERAY_CRDS``, else the CRDs kept in the repo (``k8s/crds``)."""
    env = os.environ.get("EMORAY_KUBERAY_CRDS")
    return Path(env) if env else _REPO / "k8s" / "crds"


def strict_schema(schema: Any) -> Any:
    """A deep copy of ``schema`` in which every object schema that lists ``properties``,
    and neither sets ``additionalProperties`` nor ``x-kubernetes-preserve-unknown-fields:
    true``, gets ``additionalProperties: false``."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {name: strict_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "anyOf", "allOf", "oneOf", "not"):
            out[key] = strict_schema(value)
        else:
            out[key] = value                # enum, default, x-kubernetes-* ...: data
    if ("properties" in out and "additionalProperties" not in out
            and out.get("x-kubernetes-preserve-unknown-fields") is not True):
        out["additionalProperties"] = False
    return out


def _crd_schema(crd: dict, path: Path) -> tuple[str, str, dict]:
    try:
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = copy.deepcopy(v1["schema"]["openAPIV3Schema"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{path}: not a CustomResourceDefinition with a v1 "
                          "openAPIV3Schema") from None
    schema["properties"]["metadata"] = OBJECT_META    # the CRD says only `type: object`
    return f"{group}/v1", kind, strict_schema(schema)


@functools.lru_cache(maxsize=4)
def _load_crds(crd_dir: str) -> dict[tuple[str, str], dict]:
    folder = Path(crd_dir)
    files = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
    if not files:
        raise ConfigError(f"KubeRay CRDs: no *.yaml in {folder} (set EMORAY_KUBERAY_CRDS or "
                          "pass the folder holding ray.io_rayclusters.yaml ...)")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)     # 60k lines: the C parser
    out = {}
    for path in files:
        api, kind, schema = _crd_schema(yaml.load(path.read_text(), Loader=loader), path)
        out[(api, kind)] = schema
    return out


def load_crds(crd_dir: str | Path | None = None) -> dict[tuple[str, str], dict]:
    """``{(apiVersion, kind): strict schema}`` of every CRD in ``crd_dir`` (cached).

    Raises
    ------
    ConfigError
        The folder holds no CRD files, or a file is not a CRD with a v1 schema.
    """
    return _load_crds(str(Path(crd_dir or default_crd_dir()).resolve()))


# -- errors that read well ----------------------------------------------------------------

def _type_name(value: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list",
            dict: "mapping", type(None): "null"}.get(type(value), type(value).__name__)


def format_path(parts: Any) -> str:
    """``["spec", "workerGroupSpecs", 0, "limits", "nvidia.com/gpu"]`` ->
    ``spec.workerGroupSpecs[0].limits["nvidia.com/gpu"]``."""
    text = ""
    for p in parts:
        if isinstance(p, int):
            text += f"[{p}]"
        elif "." in str(p) or "/" in str(p):
            text += f'["{p}"]'
        else:
            text += f".{p}" if text else str(p)
    return text or "(top)"


def _unknown(node: Any, known: list[str], path: list) -> list[tuple[list, str]]:
    """(path, message) of each key of ``node`` not in ``known``, with a close match."""
    out = []
    for key in [k for k in node if k not in known] if isinstance(node, dict) else []:
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else " (not in the schema)"
        out.append((path + [key], f"unknown field{hint}"))
    return out


def _describe(err) -> list[tuple[list, str]]:
    """(path, message) pairs of one jsonschema error."""
    path, kw, want, inst = list(err.absolute_path), err.validator, err.validator_value, \
        err.instance
    if kw == "additionalProperties" and isinstance(inst, dict):
        return _unknown(inst, list(err.schema.get("properties", {})), path)
    if kw == "required":
        return [(path + [k], "missing required field") for k in want if k not in inst]
    if kw == "type":
        return [(path, f"expected {' or '.join(want) if isinstance(want, list) else want}, "
                       f"got {_type_name(inst)}")]
    if kw == "enum":
        return [(path, f"expected one of {want}, got {inst!r}")]
    if kw == "anyOf" and all("type" in s for s in want):
        return [(path, f"expected {' or '.join(s['type'] for s in want)}, "
                       f"got {_type_name(inst)}")]
    if kw == "anyOf" and path and path[-1] == "metadata":
        return [(path + ["name"], "missing required field (or generateName)")]
    if kw == "pattern":
        what = ("a Kubernetes quantity (e.g. 500m, 2, 4Gi)" if want.startswith(_QUANTITY)
                else f"a string matching {want}")
        return [(path, f"expected {what}, got {inst!r}")]
    return [(path, err.message)]


def _unique_list_keys(validator, list_type, instance, schema):
    """``x-kubernetes-list-type``: a ``map`` list has unique keys, a ``set`` unique items."""
    from jsonschema import ValidationError

    keys = schema.get("x-kubernetes-list-map-keys") or []
    seen: dict[Any, int] = {}
    for i, item in enumerate(instance if isinstance(instance, list) else []):
        if list_type == "map" and isinstance(item, dict):
            ident = tuple(str(item.get(k)) for k in keys)
        elif list_type == "set":
            ident = repr(item)
        else:
            continue
        if ident in seen:
            what = ", ".join(f"{k}={v}" for k, v in zip(keys, ident)) or ident
            yield ValidationError(f"duplicate entry ({what}); item {seen[ident]} has it "
                                  "already", path=[i])
        seen.setdefault(ident, i)


@functools.lru_cache(maxsize=1)
def _validator_class():
    from jsonschema import Draft7Validator, validators

    return validators.extend(Draft7Validator, {"x-kubernetes-list-type": _unique_list_keys})


# -- manifests ------------------------------------------------------------------------------

class _NoDuplicates(yaml.SafeLoader):
    """A YAML loader that refuses a mapping key given twice (kubectl does too)."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
        for i, key in enumerate(keys):
            if key in keys[:i]:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", node.value[i][0].start_mark)
        return super().construct_mapping(node, deep=deep)


def load_documents(path: str | Path) -> list[dict]:
    """The non-empty YAML documents of a manifest file (duplicate keys refused).

    Raises
    ------
    ConfigError
        The file is missing, not YAML, or a document is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"manifest {path} not found")
    try:
        docs = [d for d in yaml.load_all(path.read_text(), Loader=_NoDuplicates)
                if d is not None]
    except yaml.YAMLError as exc:
        raise ConfigError(f"{_show(path)}: not valid YAML: {exc}") from None
    for i, doc in enumerate(docs, 1):
        if not isinstance(doc, dict):
            raise ConfigError(f"{_show(path)} (document {i}): expected a mapping with "
                              f"apiVersion and kind, got {_type_name(doc)}")
    return docs


def _show(path: str | Path) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(_REPO)) if p.is_relative_to(_REPO) else str(path)


def _schema_for(doc: dict, crds: dict) -> tuple[dict | None, str | None]:
    api, kind = doc.get("apiVersion"), doc.get("kind")
    if (api, kind) in crds:
        return crds[(api, kind)], None
    if not isinstance(api, str) or not isinstance(kind, str):
        return None, "expected string apiVersion and kind"
    if api.startswith("ray.io/"):
        known = ", ".join(sorted(f"{a} {k}" for a, k in crds))
        return None, f"unknown KubeRay resource {api} {kind}; expected one of: {known}"
    return strict_schema(PVC_SCHEMA if (api, kind) == ("v1", "PersistentVolumeClaim")
                         else _ANY_KIND), None


def validate_documents(docs: list[dict], source: str = "<manifest>",
                       crd_dir: str | Path | None = None) -> list[str]:
    """Problems of already-parsed manifest documents, one readable line each ([] = valid)."""
    crds = load_crds(crd_dir)
    problems = []
    for i, doc in enumerate(docs, 1):
        meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
        where = f"{source} (document {i}, {doc.get('kind', '?')} {meta.get('name') or '?'})"
        schema, refusal = _schema_for(doc, crds)
        if refusal:
            problems.append(f"{where}: {refusal}")
            continue
        found = []
        for err in _validator_class()(schema).iter_errors(doc):
            found.extend(_describe(err))
        found.extend(_embedded(doc))
        for path, message in sorted(found, key=lambda pm: [str(p) for p in pm[0]]):
            problems.append(f"{where}: {format_path(path)}: {message}")
    return problems


def _embedded(doc: dict) -> list[tuple[list, str]]:
    """Strings holding configs of their own: ``serveConfigV2``, ``runtimeEnvYAML``."""
    spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}
    out = []
    if doc.get("kind") == "RayService" and isinstance(spec.get("serveConfigV2"), str):
        try:
            check_serve_config(spec["serveConfigV2"], source="")
        except ConfigError as err:
            out.append((["spec", "serveConfigV2"], str(err).lstrip(": ")))
    if doc.get("kind") == "RayJob" and isinstance(spec.get("runtimeEnvYAML"), str):
        try:
            env = yaml.safe_load(spec["runtimeEnvYAML"])
        except yaml.YAMLError:
            env = None
        if not isinstance(env, dict):
            out.append((["spec", "runtimeEnvYAML"], "expected YAML of a mapping (a Ray "
                        "runtime_env)"))
    return out


def validate_manifest(path: str | Path, crd_dir: str | Path | None = None) -> list[str]:
    """Problems of the manifest file ``path`` (every document), one line each; [] = valid.

    Raises
    ------
    ConfigError
        The file cannot be read as YAML documents (see :func:`load_documents`).
    """
    return validate_documents(load_documents(path), _show(path), crd_dir)


def check_manifest(path: str | Path, crd_dir: str | Path | None = None) -> list[dict]:
    """The documents of a valid manifest; otherwise :class:`ConfigError` listing every
    problem."""
    docs = load_documents(path)
    problems = validate_documents(docs, _show(path), crd_dir)
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) in {_show(path)}:\n  "
                          + "\n  ".join(problems))
    return docs


def check_serve_config(text: str, source: str = "serveConfigV2"):
    """Parse a Serve config (YAML text) and validate it with Ray's ``ServeDeploySchema``.

    Returns
    -------
    ray.serve.schema.ServeDeploySchema

    Raises
    ------
    ConfigError
        Not YAML, not a mapping, or refused by the schema (each field path named).
    """
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({exc})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: expected a Serve config mapping (applications: ...), "
                          f"got {_type_name(tree)}")
    try:
        schema = ServeDeploySchema.model_validate(tree)
    except ValidationError as exc:
        bad = "; ".join(f"{format_path(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{source}: {bad}") from None
    bad = _serve_strict(tree)
    if bad:
        raise ConfigError(f"{source}: " + "; ".join(bad))
    return schema


def _serve_strict(tree: dict) -> list[str]:
    """What ``ServeDeploySchema`` lets through silently: unknown keys (Serve drops them),
    ``autoscaling_config`` values, and emoray's own ``args`` (:class:`ServeConfig`)."""
    from pydantic import ValidationError
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import (DeploymentSchema, RayActorOptionsSchema,
                                  ServeApplicationSchema, ServeDeploySchema)

    from emoray.config import ServeConfig

    def unknown(node: Any, model, path: list) -> list[str]:
        found = _unknown(node, list(model.model_fields), path)
        return [f"{format_path(p)}: {m}" for p, m in found]

    bad = unknown(tree, ServeDeploySchema, [])
    for a, app in enumerate(tree.get("applications") or []):
        where = ["applications", a]
        bad += unknown(app, ServeApplicationSchema, where)
        for d, dep in enumerate(app.get("deployments") or []):
            at = where + ["deployments", d]
            bad += unknown(dep, DeploymentSchema, at)
            bad += unknown(dep.get("ray_actor_options"), RayActorOptionsSchema,
                           at + ["ray_actor_options"])
            scaling = dep.get("autoscaling_config")
            if isinstance(scaling, dict):
                bad += unknown(scaling, AutoscalingConfig, at + ["autoscaling_config"])
                try:
                    AutoscalingConfig.model_validate(scaling)
                except ValidationError as exc:
                    bad += [f"{format_path(at + ['autoscaling_config', *e['loc']])}: "
                            f"{e['msg']}" for e in exc.errors()]
        if app.get("import_path") == "emoray.serving.app:build":
            try:
                ServeConfig.model_validate(app.get("args") or {})
            except ValidationError as exc:
                bad += [f"{format_path(where + ['args', *e['loc']])}: {e['msg']}"
                        for e in exc.errors()]
    return bad
