"""Typed configs: YAML overlay, --set overrides, clear errors, resolved dumps."""

from pathlib import Path

import pytest
import yaml

from emoray.config import EmorayConfig, dump, load_yaml, parse_override, resolve
from emoray.errors import ConfigError
from emoray.cli.quickstart import QUICKSTART_DEFAULTS, quickstart_config

REPO = Path(__file__).resolve().parents[2]


def test_defaults_resolve():
    cfg = resolve()
    assert isinstance(cfg, EmorayConfig)
    assert cfg.ingest.segment_seconds == 5.0
    assert cfg.preprocess.contract.eeg.sfreq == 100.0


def test_set_parses_yaml_values():
    assert parse_override("synth.subjects=6") == (["synth", "subjects"], 6)
    assert parse_override("ingest.options.task=listening") == (
        ["ingest", "options", "task"], "listening")
    assert parse_override("preprocess.contract.eeg.notch=[50, 100]")[1] == [50, 100]


def test_yaml_then_flags_then_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("synth:\n  subjects: 3\n  seconds: 6\ningest:\n  segment_seconds: 2\n")
    cfg = resolve(path, {"synth.subjects": 5}, ["synth.seconds=8", "ingest.options.task=both"])
    assert cfg.synth.subjects == 5            # flag beats YAML
    assert cfg.synth.seconds == 8.0           # --set beats YAML
    assert cfg.ingest.segment_seconds == 2.0  # YAML beats defaults
    assert cfg.ingest.options == {"task": "both"}


def test_unknown_field_suggests_the_near_one():
    with pytest.raises(ConfigError, match=r"synth.subjcts.*did you mean 'synth.subjects'"):
        resolve(overrides=["synth.subjcts=3"])


def test_unknown_yaml_section_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("ingset:\n  layout: eav\n")
    with pytest.raises(ConfigError, match="ingset"):
        resolve(path)


def test_wrong_type_names_field_and_value():
    with pytest.raises(ConfigError) as err:
        resolve(overrides=["synth.subjects=many"])
    assert "synth.subjects" in str(err.value) and "'many'" in str(err.value)


def test_bad_override_syntax_and_files(tmp_path):
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("synth.subjects")
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(bad)


def test_dump_round_trips(tmp_path):
    cfg = resolve(overrides=["synth.subjects=7", "ingest.layout=eav"])
    path = dump(cfg, tmp_path / "run" / "config.yaml")
    again = resolve(path)
    assert again == cfg


def test_every_shipped_config_loads():
    files = sorted((REPO / "configs").rglob("*.yaml"))
    assert files, "configs/ holds no YAML"
    for f in files:
        resolve(f)


def test_quickstart_yaml_matches_code_defaults():
    shipped = yaml.safe_load((REPO / "configs/data/quickstart.yaml").read_text())
    assert shipped == QUICKSTART_DEFAULTS
    assert quickstart_config() == resolve(REPO / "configs/data/quickstart.yaml")


def test_fitted_fusion_weights_need_fuse_aux():
    from pydantic import ValidationError

    from emoray.config import FusionStageConfig

    for bad in ({"fuse_weights": "inner"}, {"fuse_weights": "inner", "select_epoch": "inner"}):
        with pytest.raises(ValidationError, match="fuse_aux: true"):
            FusionStageConfig(**bad)
    ok = FusionStageConfig(fuse_weights="inner", fuse_aux=True)
    assert ok.inner_fraction == 0.15 and ok.select_epoch == "last"
