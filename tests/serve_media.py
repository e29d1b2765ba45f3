"""What the Serve API's decode tests share (:mod:`test_serve_decode`,
:mod:`test_serve_malformed`): the signals' constants, a frame generator, and the
module-scoped ``media`` fixture of real files written by the emoray.io writers.

A test module uses the fixture by importing it by name (``from serve_media import media``).
"""

from __future__ import annotations

import numpy as np
import pytest

from emoray.io.audio import write_audio
from emoray.io.eeg import write_eeg
from emoray.io.video import write_frames, write_mp4
from emoray.types import EEG, Audio

CHANNELS = ["Fp1", "Fp2", "Cz", "Pz"]
SFREQ, RATE, FPS = 128.0, 8000, 5.0


def make_frames(n: int = 6, h: int = 48, w: int = 64, shift: int = 0) -> np.ndarray:
    """Smooth colour gradients (JPEG/H.264 keep them well): ``(n, h, w, 3)`` uint8."""
    y, x = np.mgrid[0:h, 0:w]
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    for t in range(n):
        out[t, ..., 0] = (x * 255 // max(w - 1, 1) + 10 * t + shift) % 256
        out[t, ..., 1] = y * 255 // max(h - 1, 1)
        out[t, ..., 2] = 128
    return out


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Signals and the real files written from them by the emoray.io writers."""
    root = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    eeg = rng.normal(0, 2e-5, (len(CHANNELS), int(2 * SFREQ)))            # (C, T) volts
    t = np.arange(RATE) / RATE
    speech = (0.4 * np.sin(2 * np.pi * 220 * t)
              + 0.05 * rng.standard_normal(RATE)).astype(np.float32)      # (T,)
    frames = make_frames()                                                     # (N, H, W, 3)
    files = {}
    for ext in (".edf", ".bdf", ".fif"):
        files[ext] = root / f"rec{ext}"
        write_eeg(files[ext], EEG(eeg, SFREQ, list(CHANNELS)))
    for ext in (".wav", ".flac"):
        files[ext] = root / f"speech{ext}"
        write_audio(files[ext], Audio(speech, RATE))
    files[".mp4"] = root / "clip.mp4"
    write_mp4(files[".mp4"], frames, FPS)
    files["frames"] = root / "frames"
    write_frames(files["frames"], frames, FPS)
    files[".jpg"] = files["frames"] / "frame_00000.jpg"
    data = {k: p.read_bytes() for k, p in files.items() if p.is_file()}
    return {"eeg": eeg, "speech": speech, "frames": frames, "files": files, "data": data}
