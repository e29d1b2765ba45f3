"""emoray: a Ray platform for multimodal emotion recognition from EEG, speech and video."""

__version__ = "0.1.0"
