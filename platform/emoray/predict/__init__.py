"""Prediction in process: raw signals -> contract tensors -> the bundle's model -> answer.

:mod:`~emoray.predict.inputs` prepares inputs from the contract alone,
:mod:`~emoray.predict.heads` splits a model at the encoder boundary (what each Serve
deployment runs), :mod:`~emoray.predict.answer` is what comes back, and
:class:`~emoray.predict.predictor.Predictor` ties them together.
"""

from emoray.predict.answer import (INCONGRUENCE_THRESHOLD, Incongruence, ModalityPrediction,
                                   Prediction, incongruence, js_divergence, named,
                                   valence_arousal)
from emoray.predict.heads import FusionParts, JMMLParts, ModelParts, model_parts
from emoray.predict.inputs import (MIN_SECONDS, MODALITIES, EEGInput, SpeechInput,
                                   VideoInput, prepare_inputs)
from emoray.predict.predictor import Predictor

__all__ = ["EEGInput", "FusionParts", "INCONGRUENCE_THRESHOLD", "Incongruence",
           "JMMLParts", "MIN_SECONDS", "MODALITIES", "ModalityPrediction", "ModelParts",
           "Prediction", "Predictor", "SpeechInput", "VideoInput", "incongruence",
           "js_divergence", "model_parts", "named", "prepare_inputs", "valence_arousal"]
