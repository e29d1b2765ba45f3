"""Request bodies of ``POST /v1/predict`` -> model inputs, refusing bad input by field.

Both decoders return ``{"eeg": EEGInput | None, "speech": SpeechInput | None,
"video": VideoInput | None}`` (:mod:`emoray.predict`) and raise nothing but
:class:`~emoray.errors.DataError`, whose ``field`` is the request field in dotted form
(``eeg.sfreq``, ``video.frames_base64[3]``, ``body``, ``input``) and whose ``path`` is
``"request"`` for JSON or ``"upload 'rec.edf'"`` for a file part (never a temporary path).

JSON (``application/json``)::

    {"eeg":    {"data": [[float, ...], ...] (channels x samples, volts), "sfreq": number > 0,
                "ch_names": [str, ...] (one per row)},
     "speech": {"samples": [float, ...] (mono, [-1, 1]), "sample_rate": int > 0}
               or {"audio_base64": str}   (a whole WAV or FLAC file, base64),
     "video":  {"frames_base64": [str, ...] (one JPEG per frame), "fps": number > 0 | null}}

Any non-empty subset of the three keys; ``null`` is the same as an absent key. Unknown keys,
non-numbers in arrays, ragged or 3-D arrays, NaN/inf, bad rates, non-string or duplicate
(case-insensitive) channel names, bad base64 and blobs of the wrong format are refused.

Multipart (``multipart/form-data``)
    File parts ``eeg`` (one EDF, BDF or FIF), ``speech`` (one WAV or FLAC) and ``video``
    (one MP4, or JPEG frames in part order), plus the optional form field ``video_fps``
    (frame rate of JPEG frames). A part's format comes from its filename extension, else
    from its first bytes (:func:`sniff`); files are read with :mod:`emoray.io` from a
    temporary folder that is removed before returning.

    Or, per modality, one array part (:mod:`emoray.serving.decode.arrays`): an ``.npy``,
    an ``.npz`` (arrays named as the JSON keys: ``data``/``sfreq``/``ch_names``,
    ``samples``/``sample_rate``, ``frames``/``fps``), or raw little-endian bytes described
    by the form fields ``<modality>_dtype`` and ``<modality>_shape``::

        eeg     float32 (channels, samples), volts   + eeg_sfreq, eeg_ch_names
        speech  float32 [-1, 1] or int16 (samples,)  + speech_sample_rate
        video   uint8 RGB (frames, height, width, 3) + video_fps (optional)

    ``eeg_ch_names`` is a JSON array of strings or names separated by commas. int16
    speech is scaled by 1/32768 as 16-bit WAV is; frames go where decoded JPEG frames go.

Limits (:class:`DecodeLimits`) bound the duration of each modality, the EEG channel count
and the video frame count; they are checked on headers before samples are decoded where
the format allows; array parts also by the bytes they decode to (``max_array_bytes``).
Output arrays: EEG ``(C, T)`` float64 from JSON, float32 from files and arrays; speech
``(T,)`` float32; video ``(N, H, W, 3)`` uint8 RGB, longer side <= ``max_video_side``.
"""

from emoray.serving.decode.arrays import ARRAY_EXTENSIONS, DTYPES, NPZ_KEYS, npy_bytes
from emoray.serving.decode.common import (FORMAT_NAMES, MODALITIES, MODALITY_EXTENSIONS,
                                              DecodeLimits, Upload, sniff)
from emoray.serving.decode.json import decode_json, decode_object
from emoray.serving.decode.media import (MAX_JPEG_PIXELS, check_fif, decode_frames,
                                             jpeg_size, short_reason)
from emoray.serving.decode.multipart import decode_multipart

__all__ = ["ARRAY_EXTENSIONS", "DTYPES", "DecodeLimits", "FORMAT_NAMES", "MAX_JPEG_PIXELS",
           "MODALITIES", "MODALITY_EXTENSIONS", "NPZ_KEYS", "Upload", "check_fif",
           "decode_frames", "decode_json", "decode_multipart", "decode_object", "jpeg_size",
           "npy_bytes", "short_reason", "sniff"]
