"""Model behaviour: the quickstart's fusion recipe learns emotions from a small corpus.

Through the real path (synthetic files -> Ray Data ingest/preprocess -> the fusion stage on
Ray Train with the quickstart's recipe: band power and speech statistics encoders, per-subject
statistics of the train split, aux heads in the fused logits, mixup), one worker so that the
run is repeatable. Validation is by trial (no trial on both sides). Chance is 0.20.
"""

from __future__ import annotations

import pytest

from emoray.config import FusionStageConfig

pytestmark = pytest.mark.integration


def test_the_quickstart_recipe_beats_chance_by_a_clear_margin(model_features, tmp_path):
    from emoray.cli.quickstart import QUICKSTART_DEFAULTS
    from emoray.train.stages.fusion import train_fusion

    recipe = dict(QUICKSTART_DEFAULTS["train"]["stages"]["fusion"])
    recipe.update(num_workers=1, cpus_per_worker=0.5, epochs=15, max_failures=0,
                  controller_failure_limit=0)
    out = train_fusion(model_features, tmp_path / "runs", FusionStageConfig(**recipe))
    m = out["metrics"]
    print({k: round(v, 3) for k, v in m.items() if k.startswith("val_acc")}, m["val_n"])
    assert m["val_n"] >= 30
    assert m["val_acc"] >= 0.45, m          # chance 0.20; ~3.3 binomial sd above it at n=36
    assert m["val_acc"] >= min(m["val_acc_eeg"], m["val_acc_speech"], m["val_acc_video"])
