"""Every registry walked: a new encoder, whole model, training stage or dataset adapter is
tested here the moment it registers (braindecode's one test over its model table)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from emoray.config import STAGE_CONFIGS
from emoray.datasets import adapter_class, adapter_names, get_adapter
from emoray.models import (create_encoder, create_model, encoder_class, encoder_names,
                           model_class, model_names)
from emoray.train.stages import get_stage, stage_names

ENCODER_PRESETS = [(n, p) for n in encoder_names() for p in encoder_class(n).presets]


@pytest.mark.parametrize("name,preset", ENCODER_PRESETS)
def test_every_encoder_preset_builds_and_runs(name, preset):
    cls = encoder_class(name)
    assert cls.name == name and set(cls.contract_fields) == set(cls.example)
    torch.manual_seed(0)
    enc = create_encoder(name, preset, **cls.example).eval()
    x = torch.randn(2, *cls.input_shape(**cls.example))
    out = enc(x)
    assert out.pooled.shape == (2, enc.dim)
    assert out.tokens.shape[0] == 2 and out.tokens.shape[2] == enc.dim
    assert torch.isfinite(out.tokens).all() and torch.isfinite(out.pooled).all()
    (out.pooled.square().mean() + out.tokens.square().mean()).backward()   # a backward pass
    grads = [p.grad for p in enc.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    again = create_encoder(name, preset, **enc.config())      # the saved config rebuilds it
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in enc.parameters())


#: the registry's encoders plus the braindecode models the encoder comparison names
WEIGHT_ENCODERS = encoder_names() + ["braindecode:EEGNetv4", "braindecode:ShallowFBCSPNet",
                                     "braindecode:EEGConformer"]


def _tiny(name: str, seed: int):
    torch.manual_seed(seed)
    return create_encoder(name, "tiny", **encoder_class(name).example)


@pytest.mark.parametrize("name", WEIGHT_ENCODERS)
def test_every_encoder_reloads_its_weights_and_refuses_a_bad_file_unchanged(name, tmp_path):
    """Our own weight format, for every encoder: the round trip is exact; a file lacking a
    tensor or holding one of another shape is refused naming it, and the model keeps every
    weight it had (nothing is trained on a half-loaded model)."""
    from emoray.errors import ConfigError

    enc = _tiny(name, 0)
    path = enc.save_weights(tmp_path / "own.pt")
    other = _tiny(name, 1).load_weights(path)
    for key, value in enc.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key
    blob = torch.load(path, weights_only=True)
    state = blob["state_dict"]
    first = next(k for k, v in state.items() if v.ndim >= 1 and v.numel() > 1)
    lacking = {**blob, "state_dict": {k: v for k, v in state.items() if k != first}}
    torch.save(lacking, tmp_path / "lacking.pt")
    wrong = {**blob, "state_dict": {**state, first: torch.zeros(*state[first].shape, 2)}}
    torch.save(wrong, tmp_path / "wrong.pt")
    target = _tiny(name, 2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ConfigError, match=r"lacking\.pt.*missing \['" + re.escape(first)):
        target.load_weights(tmp_path / "lacking.pt")
    with pytest.raises(ConfigError, match=r"wrong\.pt.*does not fit.*" + re.escape(first)):
        target.load_weights(tmp_path / "wrong.pt")
    for key, value in target.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed by a refused file"


@pytest.mark.parametrize("name", model_names())
def test_every_whole_model_builds_from_its_config_and_reloads_its_weights(name):
    cls = model_class(name)
    assert cls.model_name == name
    torch.manual_seed(0)
    model = create_model(name, cls.example_config())
    config = model.config()
    assert config == create_model(name, config).config()        # JSON-able and stable
    twin = create_model(name, config)
    twin.load_state_dict(model.state_dict(), strict=True)
    for (k, a), (_, b) in zip(model.state_dict().items(), twin.state_dict().items()):
        assert torch.equal(a, b), k


def test_stages_and_their_config_sections_match():
    assert stage_names() == list(STAGE_CONFIGS), "a stage without a config section or back"


@pytest.mark.parametrize("name", stage_names())
def test_every_stage_names_its_config_loop_model_and_metrics(name):
    stage = get_stage(name)
    assert stage.name == name and stage.config is STAGE_CONFIGS[name]
    assert callable(stage.train) and callable(stage.loop)
    assert stage.model in model_names()
    metrics = stage.metrics(stage.config())
    assert metrics and all(isinstance(m, str) for m in metrics)
    assert "val_f1" in metrics            # what a campaign optimises by default
    if stage.after is not None:
        assert stage.after in stage_names()
        assert stage_names().index(stage.after) < stage_names().index(name)
    assert any(get_stage(s).servable for s in stage_names())


@pytest.mark.parametrize("name", adapter_names())
def test_every_adapter_writes_its_example_and_reads_it_back(name, tmp_path):
    root, options = adapter_class(name).write_example(tmp_path)
    adapter = get_adapter(name, root, options)
    info = adapter.info()
    assert info.name == name
    specs, rejections = adapter.list_trials()
    assert specs and not rejections, [r.to_dict() for r in rejections]
    trial = adapter.load_trial(specs[0])
    signals = [s for s in (trial.eeg, trial.audio, trial.video) if s is not None]
    assert signals, f"{name}: the first example trial has no signal"
    if trial.eeg is not None:
        assert trial.eeg.data.shape[0] == len(trial.eeg.ch_names)
        assert np.isfinite(trial.eeg.data).all() and trial.eeg.seconds > 0
    if trial.audio is not None:
        assert trial.audio.samples.ndim == 1 and trial.audio.seconds > 0
