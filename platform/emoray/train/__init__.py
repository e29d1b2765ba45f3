"""Training stages on Ray Train and the checkpoint bundles they write."""

from emoray.train.checkpoint import (check_contract, contract_mismatch, load_bundle,
                                     read_bundle_meta, save_bundle)
from emoray.train.fusion import (FusionModel, FusionStageConfig, train_fusion, train_loop,
                                 within_subject_split)

__all__ = ["check_contract", "contract_mismatch", "load_bundle", "read_bundle_meta",
           "save_bundle", "FusionModel", "FusionStageConfig", "train_fusion", "train_loop",
           "within_subject_split"]
