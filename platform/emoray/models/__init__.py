"""Models: per-modality encoders (registered by name, tiny/small/base presets), the
attention fusion, and the JMML losses and modules."""

from emoray.models.fusion import AttentionFusion, FusionOutput
from emoray.models.jmml import EDCCCAE, pair_by_label
from emoray.models.losses import dcca_correlation, dcca_loss, linear_cca, supcon_loss
from emoray.models.base import (BaseEncoder, EncoderOutput, create_encoder, encoder_class,
                                encoder_names, register_encoder)

__all__ = ["AttentionFusion", "FusionOutput", "EDCCCAE", "pair_by_label", "dcca_correlation",
           "dcca_loss", "linear_cca", "supcon_loss", "BaseEncoder", "EncoderOutput", "create_encoder", "encoder_class", "encoder_names",
           "register_encoder"]
