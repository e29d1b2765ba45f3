"""serve/config.yaml is a valid Serve config naming real code; serving settings and the
speech-vs-EEG incongruence score behave (no Ray needed)."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import yaml

from emoray.config import ServeConfig, resolve
from emoray.errors import ConfigError
from emoray.predict import incongruence, js_divergence
from emoray.serving.app import ENCODER_DEPLOYMENTS, ROUTER_DEPLOYMENT
from emoray.serving.model import resolve_checkpoint

CONFIG = Path(__file__).resolve().parents[2] / "serve" / "config.yaml"


def test_serve_config_yaml_is_a_valid_serve_config_naming_real_code():
    from ray.serve.schema import ServeDeploySchema

    tree = yaml.safe_load(CONFIG.read_text())
    schema = ServeDeploySchema.model_validate(tree)
    (app,) = schema.applications
    module, _, attr = app.import_path.partition(":")
    assert callable(getattr(importlib.import_module(module), attr))
    ServeConfig.model_validate(app.args)             # the args are our settings
    names = {d.name for d in app.deployments}
    assert names == {ROUTER_DEPLOYMENT, *ENCODER_DEPLOYMENTS.values()}
    assert tree["http_options"]["host"] == "127.0.0.1"


def test_serve_settings_defaults_and_errors():
    cfg = ServeConfig()
    assert cfg.host == "127.0.0.1" and cfg.api_key_env is None     # local, no auth
    assert set(cfg.deployments) == {"router", "eeg", "speech", "video"}
    partial = resolve(None, {}, ["serve.deployments.eeg.num_cpus=2"]).serve
    assert partial.deployments["eeg"].num_cpus == 2 and partial.deployments["video"].num_cpus
    with pytest.raises(ConfigError, match="deployments"):
        resolve(None, {}, ["serve.deployments.audio.num_cpus=1"])
    with pytest.raises(ConfigError, match="min_replicas"):
        resolve(None, {}, ["serve.deployments.eeg.autoscaling.min_replicas=5"])


def test_checkpoint_resolution_errors_name_the_source(tmp_path):
    with pytest.raises(ConfigError, match="no such folder"):
        resolve_checkpoint(tmp_path / "nope")
    with pytest.raises(ConfigError, match="holds no model bundle"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(ConfigError, match="no such folder in storage"):
        resolve_checkpoint((tmp_path / "nope").as_uri())


def test_incongruence_is_a_bounded_symmetric_divergence():
    same = np.array([0.7, 0.2, 0.1])
    assert js_divergence(same, same) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    p, q = np.array([0.6, 0.3, 0.1]), np.array([0.1, 0.3, 0.6])
    assert js_divergence(p, q) == pytest.approx(js_divergence(q, p))
    names = ["happy", "neutral", "sad"]
    acted = incongruence(names, p, q, threshold=0.2)
    assert acted.flag and acted.speech == "happy" and acted.eeg == "sad"
    close = incongruence(names, p, np.array([0.45, 0.4, 0.15]), threshold=0.2)
    assert not close.flag                                     # same label: never flagged
    assert not incongruence(names, p, q, threshold=0.99).flag


def test_incongruence_averages_voice_and_face_as_what_is_expressed():
    names = ["happy", "neutral", "sad"]
    speech, face = np.array([0.5, 0.4, 0.1]), np.array([0.1, 0.8, 0.1])
    eeg = np.array([0.1, 0.2, 0.7])
    alone = incongruence(names, speech, eeg, threshold=0.1)
    both = incongruence(names, speech, eeg, threshold=0.1, face=face)
    assert alone.expressed_by == ["speech"] and alone.expressed == "happy"
    assert both.expressed_by == ["speech", "video"]
    assert both.speech == "happy" and both.expressed == "neutral"     # (0.3, 0.6, 0.1)
    assert both.score == pytest.approx(js_divergence([0.3, 0.6, 0.1], eeg))
    assert both.flag and both.eeg == "sad"
    # a face agreeing with EEG pulls the expressed distribution towards it: lower score
    calm = incongruence(names, speech, eeg, threshold=0.1, face=eeg)
    assert calm.score < alone.score


def test_a_removed_replica_waits_as_long_as_a_request_may_run():
    """Every deployment's graceful shutdown outlasts the request time limit, so a replica
    removed by a downscale or redeploy finishes its longest request (Serve's own default
    of 20 s cut 40 s requests off with a 500)."""
    from emoray.config import ServeConfig
    from emoray.serving.app import _options

    for limit in (60.0, 300.0):
        cfg = ServeConfig(request_timeout_s=limit)
        for role in ("router", "eeg", "speech", "video"):
            opts = _options(cfg, role)
            assert opts["graceful_shutdown_timeout_s"] > limit
            assert opts["graceful_shutdown_wait_loop_s"] <= 2
