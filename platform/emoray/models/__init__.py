"""Models: per-modality encoders (registered by name, tiny/small/base presets), the
attention fusion, and the JMML losses and modules."""

from emoray.models.base import (BaseEncoder, EncoderOutput, create_encoder, encoder_class,
                                encoder_names, register_encoder)

__all__ = ["BaseEncoder", "EncoderOutput", "create_encoder", "encoder_class", "encoder_names",
           "register_encoder"]
