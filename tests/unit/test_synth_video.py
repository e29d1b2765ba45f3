"""Synthetic face video: expressions follow the displayed emotion, frames move."""

from __future__ import annotations

import time

import numpy as np
import pytest

from emoray.synth.config import SynthConfig
from emoray.synth.design import build_design, stream
from emoray.synth.video import render_face

FPS = 10.0


@pytest.fixture(scope="module")
def subjects():
    return build_design(SynthConfig(subjects=3, trials_per_class=1)).subjects


def _clip(subject, emotion, seconds=3.0, noise=0.0, key=0, **kw):
    return render_face(subject, emotion=emotion, seconds=seconds, fps=FPS, size=96,
                       rng=stream(5, "video-test", emotion, key), noise=noise, **kw)


def _lips(frames: np.ndarray) -> np.ndarray:
    """Lip-coloured pixels (red well above green), ``(T, H, W)`` bool."""
    rgb = frames.astype(np.int16)
    return (rgb[..., 0] - rgb[..., 1]) > 70


def _mouth_curvature(frames: np.ndarray) -> float:
    """Median over frames of (mean lip row in the middle third - at the corners), in
    pixels: positive when the middle sits lower than the corners (a smile)."""
    values = []
    for lips in _lips(frames):
        rows, cols = np.nonzero(lips[40:, :])               # lower half: the mouth
        if cols.size < 10:
            continue
        left, right = cols.min(), cols.max()
        third = (right - left) / 3.0
        middle = rows[(cols > left + third) & (cols < right - third)].mean()
        corners = rows[(cols <= left + 0.15 * (right - left))
                       | (cols >= right - 0.15 * (right - left))].mean()
        values.append(middle - corners)
    return float(np.median(values))


def _eye_white(frames: np.ndarray) -> np.ndarray:
    """Near-white pixels per frame (the sclera), ``(T,)``."""
    return (frames.min(axis=-1) > 200).sum(axis=(1, 2))


def test_shape_dtype_and_speed(subjects):
    _clip(subjects[0], "neutral", seconds=1.0)
    times = []
    for k in range(2):
        t0 = time.perf_counter()
        clip = render_face(subjects[0], emotion="happiness", seconds=20.0, fps=10.0, size=96,
                           rng=stream(0, "speed", k), noise=0.06,
                           mouth=np.linspace(0, 1, 200))
        times.append(time.perf_counter() - t0)
    assert clip.shape == (200, 96, 96, 3) and clip.dtype == np.uint8
    assert min(times) < 1.0


def test_mouth_curvature_smile_vs_frown(subjects):
    for subject in subjects:
        happy = _mouth_curvature(_clip(subject, "happiness"))
        sad = _mouth_curvature(_clip(subject, "sadness"))
        assert happy > 1.0 > -1.0 > sad


def test_eye_openness_follows_emotion(subjects):
    subject = subjects[0]
    assert _eye_white(_clip(subject, "anger")).mean() > \
        1.5 * _eye_white(_clip(subject, "calmness")).mean()


def test_brows_lowered_in_anger(subjects):
    """The dark brow pixels sit lower (closer to the eyes) in anger than in sadness."""
    def brow_row(frames):
        dark = frames.max(axis=-1) < 70                       # brows, irises, hair
        upper = dark[:, 20:45, 20:76]
        rows = np.nonzero(upper)[1]
        return rows.mean()

    subject = subjects[1]
    assert brow_row(_clip(subject, "anger")) > brow_row(_clip(subject, "sadness"))


def test_frames_change_over_time(subjects):
    clip = _clip(subjects[0], "neutral", seconds=4.0).astype(float)
    step = np.abs(np.diff(clip, axis=0)).mean(axis=(1, 2, 3))
    assert (step > 0.2).mean() > 0.8                           # head jitter, lighting drift
    noisy = _clip(subjects[0], "neutral", seconds=1.0, noise=0.1).astype(float)
    clean = _clip(subjects[0], "neutral", seconds=1.0, noise=0.0).astype(float)
    assert np.abs(noisy - clean).mean() > 10.0                  # sensor noise


def test_mouth_opens_with_speech(subjects):
    dark = lambda c: (c.max(axis=-1)[:, 55:, :] < 90).sum()   # mouth inside
    shut = _clip(subjects[0], "neutral", mouth=np.zeros(30))
    open_ = _clip(subjects[0], "neutral", mouth=np.ones(30))
    assert dark(open_) > dark(shut) + 30 * 20


def test_blinks_close_the_eyes(subjects):
    clip = _clip(subjects[0], "neutral", seconds=3.0, blink_times=np.array([1.0]))
    white = _eye_white(clip)
    assert white[11] < 0.3 * white[5]                           # shut at 1.1 s, open at 0.5 s


def test_subjects_look_different(subjects):
    a = _clip(subjects[0], "neutral", seconds=1.0).astype(float).mean(axis=0)
    b = _clip(subjects[1], "neutral", seconds=1.0).astype(float).mean(axis=0)
    assert np.abs(a - b).mean() > 10.0
