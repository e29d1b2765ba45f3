"""Per-record preprocessing functions, one per modality (the front door).

Each function is pure: its output depends only on its inputs and the contract (no state,
no randomness, no thread pools), so the Ray Data ``map_batches`` preprocessing and a
serving replica that loaded the contract from a checkpoint compute identical features.
Thread counts are left to the caller (Ray workers run with ``OMP_NUM_THREADS=1``).

=============================  ===========================================================
:func:`preprocess_eeg`          ``(C, T)`` volts -> ``eeg`` ``(C, T')``, ``eeg_de`` and
                                ``eeg_bp`` ``(C, n_bands)``
:func:`preprocess_speech`        ``(T,)`` waveform -> ``logmel`` ``(n_mels, frames)``,
                                ``audio_stats`` ``(F,)`` (layout: :func:`speech_stat_names`)
:func:`preprocess_video`        ``(T, H, W, 3)`` uint8 -> ``video`` ``(n, 3, size, size)``
:func:`preprocess_video_jpeg`   JPEG frames -> ``video`` ``(n, 3, size, size)``
:func:`normalize_video`         stored ``uint8`` frames (``normalize=False``) -> float32
=============================  ===========================================================

The implementations live in :mod:`~emoray.data.transforms.eeg`,
:mod:`~emoray.data.transforms.speech` and :mod:`~emoray.data.transforms.video`, which also
expose the individual steps (filtering, blink removal, band features, pitch tracking).
"""

from __future__ import annotations

from emoray.data.transforms.speech import (
    SPEECH_STAT_NAMES,
    speech_stat_names,
    n_speech_stats,
    preprocess_speech,
    track_f0,
)
from emoray.data.transforms.eeg import (
    eeg_band_features,
    filter_eeg,
    mains_frequencies,
    normalize_eeg,
    preprocess_eeg,
    remove_blinks,
    resample_eeg,
)
from emoray.data.transforms.video import (
    frame_indices,
    normalize_video,
    preprocess_video,
    preprocess_video_jpeg,
)

__all__ = [
    "SPEECH_STAT_NAMES",
    "speech_stat_names",
    "eeg_band_features",
    "filter_eeg",
    "frame_indices",
    "mains_frequencies",
    "n_speech_stats",
    "normalize_eeg",
    "normalize_video",
    "preprocess_speech",
    "preprocess_eeg",
    "preprocess_video",
    "preprocess_video_jpeg",
    "remove_blinks",
    "resample_eeg",
    "track_f0",
]
