"""The training loop's small pieces (:mod:`emoray.train.loop`): one optimiser step with
gradient clipping, and the learning-rate schedule every stage uses."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from emoray.config import FusionStageConfig
from emoray.train.loop import optimizer_step, scheduled_lr


def _step(grad_clip):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.zeros(4))
    opt = torch.optim.SGD([w], lr=0.5)
    loss = (w * torch.tensor([30.0, -40.0, 0.0, 0.0])).sum()     # gradient norm 50
    optimizer_step(loss, opt, [w], grad_clip)
    return w.detach()


def test_a_step_clips_the_gradients_global_norm():
    assert torch.allclose(_step(None), torch.tensor([-15.0, 20.0, 0.0, 0.0]))
    # clipped to norm 2: the same direction, a step of lr x 2
    assert torch.allclose(_step(2.0), torch.tensor([-0.6, 0.8, 0.0, 0.0]), atol=1e-5)
    assert torch.allclose(_step(100.0), _step(None))          # under the bound: unchanged


def test_grad_clip_is_off_by_default_and_positive():
    assert FusionStageConfig().grad_clip is None
    assert FusionStageConfig(grad_clip=1.0).grad_clip == 1.0
    with pytest.raises(ValidationError):
        FusionStageConfig(grad_clip=0)


def test_the_schedule_warms_up_then_decays_to_five_percent():
    lrs = [scheduled_lr(1.0, e, 10, 2, "cosine") for e in range(10)]
    assert lrs[:2] == [pytest.approx(1 / 3), pytest.approx(2 / 3)]
    assert lrs[2] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.05)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    assert scheduled_lr(1.0, 7, 10, 2, "constant") == 1.0
    assert not math.isnan(scheduled_lr(1.0, 0, 1, 0, "cosine"))


def test_feature_noise_needs_standardised_columns_and_a_bounded_std():
    ok = FusionStageConfig(subject_norm=["eeg_bp", "audio_stats"],
                           feature_noise={"eeg_bp": 1.0})
    assert ok.feature_noise == {"eeg_bp": 1.0} and FusionStageConfig().feature_noise == {}
    with pytest.raises(ValidationError, match="'video' is not standardised per subject"):
        FusionStageConfig(subject_norm=["eeg_bp"], feature_noise={"video": 0.5})
    with pytest.raises(ValidationError, match=r"std must be in \[0, 10\]"):
        FusionStageConfig(subject_norm=["eeg_bp"], feature_noise={"eeg_bp": -1.0})


def test_feature_noise_perturbs_only_the_named_columns_with_the_asked_std():
    from emoray.train.stages.fusion import _add_noise

    def noisy(seed):
        t = {"eeg_bp": torch.zeros(4000, 30, 5), "audio_stats": torch.ones(4000, 8),
             "label": torch.zeros(4000, dtype=torch.long)}
        _add_noise(t, {"eeg_bp": 0.5, "audio_stats": 0.0}, torch.Generator().manual_seed(seed))
        return t

    t = noisy(3)
    assert abs(float(t["eeg_bp"].std()) - 0.5) < 0.01 and abs(float(t["eeg_bp"].mean())) < 0.01
    assert torch.equal(t["audio_stats"], torch.ones(4000, 8))       # std 0: untouched
    assert torch.equal(t["eeg_bp"], noisy(3)["eeg_bp"])              # a seed replays it
    assert not torch.equal(t["eeg_bp"], noisy(4)["eeg_bp"])


def test_a_step_without_named_parameters_clips_what_the_optimiser_steps():
    w = torch.nn.Parameter(torch.zeros(4))
    opt = torch.optim.SGD([w], lr=0.5)
    optimizer_step((w * torch.tensor([30.0, -40.0, 0.0, 0.0])).sum(), opt, grad_clip=2.0)
    assert torch.allclose(w.detach(), torch.tensor([-0.6, 0.8, 0.0, 0.0]), atol=1e-5)
