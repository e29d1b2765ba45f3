"""braindecode's models as EEG encoders (``braindecode:<Model>``): every model in braindecode's
table builds and trains at a small contract or is refused in one line; the named models at
the real contract (EAV: 30 channels, 100 Hz, 5 s); a fused model with one rebuilds from its
saved config (braindecode's one test over its model table, for our wrapper)."""

from __future__ import annotations

import inspect
import json
import pickle
import warnings
from pathlib import Path

import pytest
import torch

from emoray.config.contract import EEGContract, PreprocessContract
from emoray.config.train import FusionStageConfig
from emoray.datasets.eav_layout import EAV_CHANNELS
from emoray.errors import ConfigError
from emoray.models import (FusionModel, braindecode_names, create_encoder, encoder_class,
                           encoder_names)
from emoray.models.braindecode_eeg import _NETWORK, _WIDTHS, BraindecodeEncoder, _models

SMALL = dict(BraindecodeEncoder.example)        # 8 channels of 10-20 names, 128 Hz, 4 s
REAL = dict(n_chans=30, sfreq=100.0, n_times=500, ch_names=list(EAV_CHANNELS))
NAMED = ["EEGNetv4", "ShallowFBCSPNet", "EEGConformer"]
ALL = sorted(_models())


#: tiny tensors: one thread (two OpenMP threads on a busy 2-core box stall)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _train_step(enc, contract: dict) -> torch.Tensor:
    """Forward + backward on a batch of 2; check shapes and that gradients reach weights."""
    torch.manual_seed(0)
    out = enc.train()(torch.randn(2, contract["n_chans"], contract["n_times"]))
    assert out.tokens.ndim == 3 and out.tokens.shape[0] == 2
    assert out.tokens.shape[2] == enc.dim and out.pooled.shape == (2, enc.dim)
    assert torch.isfinite(out.tokens).all() and torch.isfinite(out.pooled).all()
    (out.tokens.square().mean() + out.pooled.mean()).backward()
    grads = [p.grad for p in enc.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    return out.tokens


@pytest.mark.parametrize("model", ALL)
def test_every_braindecode_model_trains_or_is_refused_in_one_line(model):
    try:
        enc = create_encoder(f"braindecode:{model}", "tiny", **SMALL)
    except ConfigError as exc:
        text = str(exc)
        assert "\n" not in text and len(text) < 400 and model in text
        return
    assert enc.modality == "eeg" and enc.input_column == "eeg"
    assert type(enc.net).__name__ == model
    _train_step(enc, SMALL)


def test_most_models_are_usable_and_the_refusals_are_known():
    usable = braindecode_names()
    assert set(usable) <= set(ALL) and len(usable) >= 40
    assert not set(_NETWORK) & set(usable)
    assert {"EMG2QwertyNet", "NeuroPose"} <= set(ALL) - set(usable)     # sEMG models
    for name in ("ATCNet", "Deep4Net", "EEGNet", "EEGConformer", "ShallowFBCSPNet"):
        assert name in usable


def test_models_that_download_when_built_are_listed():
    """A model whose source fetches files (the Hub, pooch) must be refused by name."""
    for name, cls in _models().items():
        source = Path(inspect.getsourcefile(cls)).read_text(encoding="utf-8")
        if "hf_hub_download(" in source or "pooch.retrieve(" in source:
            assert name in _NETWORK, name


@pytest.mark.parametrize("model", NAMED)
def test_named_models_at_the_real_contract(model):
    name = f"braindecode:{model}"
    sizes = {}
    for preset in ("tiny", "small", "base"):
        torch.manual_seed(0)
        enc = create_encoder(name, preset, **REAL)
        sizes[preset] = sum(p.numel() for p in enc.parameters())
    assert sizes["tiny"] < sizes["small"] < sizes["base"]
    enc = create_encoder(name, "tiny", **REAL)
    tokens = _train_step(enc, REAL)
    twin = create_encoder(name, "tiny", **json.loads(json.dumps(enc.config())))
    twin.load_state_dict(enc.state_dict())
    x = torch.randn(3, 30, 500)
    with torch.no_grad():
        assert torch.equal(enc.eval()(x).tokens, twin.eval()(x).tokens)
    assert tokens.shape[1] == enc.n_tokens


@pytest.mark.parametrize("model", sorted(_WIDTHS))
def test_width_presets_build_and_grow_at_the_real_contract(model):
    sizes = [sum(p.numel() for p in create_encoder(f"braindecode:{model}", preset,
                                                   **REAL).parameters())
             for preset in ("tiny", "small", "base")]
    assert sizes[0] < sizes[1] < sizes[2], sizes


def test_an_encoder_pickles_by_its_class_name():
    enc = create_encoder("braindecode:ShallowFBCSPNet", "tiny", **REAL).eval()
    twin = pickle.loads(pickle.dumps(enc))
    assert type(twin) is type(enc)
    x = torch.randn(2, 30, 500)
    with torch.no_grad():
        assert torch.equal(enc(x).pooled, twin(x).pooled)


def test_token_layouts_follow_the_head():
    shallow = create_encoder("braindecode:ShallowFBCSPNet", "base", **REAL)
    assert shallow.dim == 40 and shallow.n_tokens > 1        # (B, F, T, 1) -> T tokens of F
    eegnet = create_encoder("braindecode:EEGNetv4", "base", **REAL)
    assert type(eegnet.net).__name__ == "EEGNet"             # the retired name still builds
    assert eegnet.dim == 16 and eegnet.n_tokens > 1          # F2 = F1 * D filters
    conformer = create_encoder("braindecode:EEGConformer", "base", **REAL)
    assert conformer.n_tokens == 1                           # its head reads a vector


def test_refusals_name_the_contract_before_anything_runs():
    with pytest.raises(ConfigError, match=r"braindecode:ZUNA' does not accept the EEG contract "
                                          r"\(n_chans=30, sfreq=100 Hz, n_times=500\)"):
        create_encoder("braindecode:ZUNA", "tiny", **REAL)
    with pytest.raises(ConfigError, match="sEMG"):
        encoder_class("braindecode:NeuroPose")
    with pytest.raises(ConfigError, match="offline"):
        encoder_class("braindecode:REVE")
    with pytest.raises(ConfigError, match="2 ch_names for n_chans=30"):
        create_encoder("braindecode:EEGNet", "tiny", **{**REAL, "ch_names": ["Cz", "Pz"]})


def test_unknown_model_lists_the_available_ones():
    with pytest.raises(ConfigError, match=r"unknown braindecode model 'NoSuchNet'; "
                                          r"available: .*EEGConformer.*ShallowFBCSPNet"):
        create_encoder("braindecode:NoSuchNet", "tiny", **REAL)
    with pytest.raises(ConfigError, match=r"unknown encoder 'nosuch:EEGNet'.*braindecode:<model>"):
        encoder_class("nosuch:EEGNet")


def test_registry_lists_our_encoders_only_and_caches_classes():
    assert encoder_class("braindecode:EEGNet") is encoder_class("braindecode:EEGNet")
    assert not any(":" in n for n in encoder_names())
    assert encoder_class("braindecode:EEGNet").presets["base"] == {"F1": 8}
    assert encoder_class("braindecode:SyncNet").presets == {"tiny": {}, "small": {}, "base": {}}


def test_channel_names_are_optional_unless_the_model_needs_them():
    no_names = {k: v for k, v in REAL.items() if k != "ch_names"}
    enc = create_encoder("braindecode:ShallowFBCSPNet", "tiny", **no_names)
    assert "ch_names" not in enc.config()
    with pytest.raises(ConfigError, match="EEGSym"):        # splits hemispheres by name
        create_encoder("braindecode:EEGSym", "tiny", **no_names)


def test_building_is_quiet(capsys, caplog):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        create_encoder("braindecode:ATCNet", "tiny", **REAL)      # warns about n_times
        create_encoder("braindecode:EEGNet", "tiny", **REAL)      # warns about deprecations
    assert not caught and not caplog.records
    assert capsys.readouterr() == ("", "")


def test_fusion_model_with_a_braindecode_encoder_rebuilds_from_its_config():
    contract = PreprocessContract(eeg=EEGContract(channels=list(EAV_CHANNELS)))
    cfg = FusionStageConfig(modalities=["eeg", "speech"], dim=32, heads=2, layers=1,
                            architectures={"eeg": "braindecode:EEGNetv4",
                                           "speech": "speechstats"})
    torch.manual_seed(0)
    model = FusionModel.from_contract(contract, n_classes=5, cfg=cfg)
    config = json.loads(json.dumps(model.config()))
    assert config["encoders"]["eeg"]["name"] == "braindecode:EEGNetv4"
    assert config["encoders"]["eeg"]["kwargs"]["ch_names"] == list(EAV_CHANNELS)
    assert "ch_names" not in config["encoders"]["speech"]["kwargs"]
    batch = {"eeg": torch.randn(3, 30, 500), "audio_stats": torch.randn(3, 265)}
    out = model.train()(batch)
    out.logits.sum().backward()
    twin = FusionModel.from_config(config)
    twin.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(model.eval()(batch).logits, twin.eval()(batch).logits)
