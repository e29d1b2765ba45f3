"""The training stages' CUDA paths (bf16 autocast), run where a GPU exists: one step of each
stage's objective as the worker loops take it, on CUDA, checked for finite losses and
gradients and against the same model's float32 answers on CPU."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from emoray.models.jmml_model import JMMLModel, LogisticHead, joint_label
from emoray.models import FusionModel
from emoray.config import IntraStageConfig
from emoray.train.stages.jmml_intra import IntraObjective

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

CONFIG = dict(features={"speech": "audio_stats", "eeg": "eeg_de"},
              in_features={"speech": 265, "eeg": 150}, presets={"speech": "small", "eeg": "small"},
              targets=["valence", "arousal"])


def _jmml_batch(b: int, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (b, 2), generator=g)
    t = {"audio_stats": torch.randn(b, 265, generator=g), "eeg_de": torch.randn(b, 30, 5,
                                                                                 generator=g),
         "speech_present": torch.ones(b, dtype=torch.bool),
         "eeg_present": torch.arange(b) % 3 != 0, "y": y, "joint": joint_label(y)}
    return {k: v.to(device) for k, v in t.items()}


def test_intra_and_inter_steps_under_bf16_autocast():
    torch.manual_seed(0)
    model = JMMLModel(**CONFIG, cae={"k": 8, "hidden": 64, "dropout": 0.1}).cuda()
    obj = IntraObjective(model, IntraStageConfig())
    t = _jmml_batch(64, "cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, parts = obj(t)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and (parts > 0).all()
    grads = [p.grad for p in model.encoders.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # inter: DCCA in float64 inside autocast, gradients reach the projections
    e_s = torch.randn(64, model.encoders["speech"].dim, device="cuda")
    e_e = e_s[:, :model.encoders["eeg"].dim] + 0.5 * torch.randn(64, model.encoders["eeg"].dim,
                                                                  device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model.cae(e_s, e_e)
    loss, parts = model.cae.loss(out, e_s, e_e, t["joint"], alpha=0.1, beta=0.1, gamma=0.5)
    loss.backward()
    assert torch.isfinite(loss) and parts["corr"] > 0
    assert torch.isfinite(model.cae.f_s[0].weight.grad).all()


def test_classifier_fit_and_predict_on_cuda_match_cpu():
    torch.manual_seed(0)
    model = JMMLModel(**CONFIG, cae={"k": 8, "hidden": 64, "dropout": 0.0},
                      classifiers=["speech_only", "eeg_only", "combined"]).eval()
    x = torch.randn(200, 10)
    y = (x[:, 0] > 0).long()
    cpu = LogisticHead(10).fit(x, y)
    gpu = LogisticHead(10).cuda().fit(x.cuda(), y.cuda())
    assert torch.allclose(cpu.linear.weight, gpu.linear.weight.cpu(), atol=1e-4)
    t = _jmml_batch(16, "cpu")
    ref = model.predict(t)
    out = copy.deepcopy(model).cuda().predict({k: v.cuda() for k, v in t.items()})
    assert out["path"] == ref["path"]
    for target in ("valence", "arousal"):
        np.testing.assert_allclose(out["probs"][target].numpy(), ref["probs"][target].numpy(),
                                   atol=1e-4)


def test_fusion_step_under_bf16_autocast_and_eval_parity():
    torch.manual_seed(0)
    enc = {"eeg": {"name": "eegformer", "preset": "tiny",
                   "kwargs": {"n_chans": 30, "sfreq": 100.0, "n_times": 500}},
           "speech": {"name": "ast", "preset": "tiny", "kwargs": {"n_mels": 128,
                                                                  "n_frames": 501}},
           "video": {"name": "vit", "preset": "tiny", "kwargs": {"n_frames": 4, "size": 64}}}
    model = FusionModel(enc, dict(n_classes=5, dim=32, heads=2, layers=1, dropout=0.1,
                                  modality_dropout=0.3, aux_heads=True))
    b = 8
    batch = {"eeg": torch.randn(b, 30, 500), "logmel": torch.randn(b, 128, 501),
             "video": torch.randn(b, 4, 3, 64, 64),
             "speech_present": torch.arange(b) % 2 == 0}
    y = torch.randint(0, 5, (b,))
    gpu = copy.deepcopy(model).cuda().train()
    cb = {k: v.cuda() for k, v in batch.items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = gpu(cb)
    loss, _ = gpu.fusion.loss(out, y.cuda(), aux_weight=0.3)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in gpu.parameters() if p.grad is not None)
    model.eval()
    gpu = copy.deepcopy(model).cuda().eval()
    with torch.no_grad():
        ref = model(batch).logits.softmax(-1)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = gpu(cb).logits.float().softmax(-1).cpu()
    assert (got - ref).abs().max() < 0.05                      # bf16 vs float32
    assert (got.argmax(1) == ref.argmax(1)).float().mean() >= 0.75
