"""Models: per-modality encoders and whole models, each in its own file and registered by
name (tiny/small/base presets), the attention fusion, and the JMML losses and modules.

Importing this package fills the registries of :mod:`emoray.models.registry`: every model
file below is imported here, and registers itself. A new encoder or whole model is one
new file plus its line here.
"""

from emoray.models.base import BaseEncoder, EncoderOutput
from emoray.models.registry import (create_encoder, create_model, encoder_class,
                                    encoder_names, model_class, model_names,
                                    register_encoder, register_model, register_resolver)

# encoders
from emoray.models import ast, bandpower, eegformer, legacy, mlp, vit  # noqa: E402,F401  (they register)
from emoray.models.braindecode_eeg import braindecode_encoder, braindecode_names  # noqa: E402
# whole models
from emoray.models.fusion import AttentionFusion, FusionOutput
from emoray.models.fusion_model import ENCODER_OF, FusionModel
from emoray.models.jmml import EDCCCAE, pair_by_label
from emoray.models.jmml_model import JMMLModel
from emoray.models.losses import dcca_correlation, dcca_loss, linear_cca, supcon_loss

__all__ = ["AttentionFusion", "BaseEncoder", "EDCCCAE", "ENCODER_OF", "EncoderOutput",
           "FusionModel", "FusionOutput", "JMMLModel", "braindecode_encoder",
           "braindecode_names", "create_encoder", "create_model", "dcca_correlation",
           "dcca_loss", "encoder_class", "encoder_names", "linear_cca", "model_class",
           "model_names", "pair_by_label", "register_encoder", "register_model",
           "register_resolver", "supcon_loss"]
