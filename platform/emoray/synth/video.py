"""Synthetic face video whose expression shows the displayed emotion.

Every frame draws a head ellipse with hair, eyes (openness, with blinks), eyebrows (angle
and height), a nose shadow and a mouth (curvature: smile/frown; opening: an expression
bias plus, when speaking, the speech level per frame). The expression comes from the
*displayed* emotion (:data:`EXPRESSIONS`, scaled by intensity) and drifts slowly; the head
jitters (small rotation and translation), the lighting gain and a left-right gradient
drift, and Gaussian sensor noise is added. Geometry and colours follow the subject's face
traits.

The whole clip is rendered at once with numpy: every per-frame parameter is a ``(T, 1, 1)``
array broadcast against the ``(H, W)`` pixel grid.
"""

from __future__ import annotations

import numpy as np

#: Per emotion: mouth curvature (+ smile, - frown), mouth opening bias, brow angle in
#: degrees (+ inner ends raised, as in sadness; - lowered, as in anger), brow raise
#: (fraction of face height), eye openness (1 = neutral).
EXPRESSIONS: dict[str, dict[str, float]] = {
    "neutral":   dict(curve=0.0, open=0.0, brow=0.0, raise_=0.0, eye=1.0),
    "sadness":   dict(curve=-0.8, open=0.0, brow=20.0, raise_=0.02, eye=0.7),
    "anger":     dict(curve=-0.35, open=0.1, brow=-24.0, raise_=-0.04, eye=1.3),
    "happiness": dict(curve=1.0, open=0.3, brow=4.0, raise_=0.02, eye=0.8),
    "calmness":  dict(curve=0.35, open=0.0, brow=2.0, raise_=0.0, eye=0.6),
}
_LIP = np.array([0.62, 0.25, 0.27], dtype=np.float32)
_MOUTH_INSIDE = np.array([0.25, 0.05, 0.07], dtype=np.float32)
_EYE_WHITE = np.array([0.93, 0.93, 0.90], dtype=np.float32)
_IRIS = np.array([0.20, 0.14, 0.10], dtype=np.float32)
_BROW = np.array([0.18, 0.12, 0.09], dtype=np.float32)


def expression(emotion: str, intensity: float = 1.0) -> dict[str, float]:
    """Expression parameters of ``emotion`` interpolated from neutral by ``intensity``."""
    base, target = EXPRESSIONS["neutral"], EXPRESSIONS[emotion]
    return {k: float(base[k] + intensity * (target[k] - base[k])) for k in target}


def _soft(sd: np.ndarray, px: float) -> np.ndarray:
    """Anti-aliased coverage from a signed distance (negative inside), in pixels ``px``."""
    return np.clip(0.5 - sd / px, 0.0, 1.0)


def _ellipse(u, v, cx, cy, a, b) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse."""
    r = np.sqrt(((u - cx) / a) ** 2 + ((v - cy) / b) ** 2)
    return (r - 1.0) * np.minimum(a, b)


def _paint(img: np.ndarray, mask: np.ndarray, color, where=None) -> None:
    """Alpha-blend ``color`` (``(3,)``) into planar ``img`` ``(3, T, H, W)`` where ``mask``.

    ``where`` (row and column slices) restricts the work to the window the mask covers.
    """
    for ch in range(3):
        view = img[ch] if where is None else img[ch][:, where[0], where[1]]
        view += mask * (np.float32(color[ch]) - view)


def _drift(rng: np.random.Generator, n: int, sd: float, smooth: int) -> np.ndarray:
    """Slowly varying noise ``(n,)`` with standard deviation about ``sd``."""
    x = rng.standard_normal(n + 2 * smooth)
    kernel = np.hanning(2 * smooth + 1)
    y = np.convolve(x, kernel / np.sqrt((kernel ** 2).sum()), mode="same")[smooth:smooth + n]
    return sd * y


def render_face(subject, *, emotion: str, intensity: float = 1.0, seconds: float,
                fps: float = 10.0, size: int = 96, rng: np.random.Generator,
                noise: float = 0.06, mouth: np.ndarray | None = None,
                blink_times: np.ndarray | None = None) -> np.ndarray:
    """Render a face clip.

    Parameters
    ----------
    subject : Subject
        Face traits (``face_width``, ``face_ratio``, ``eye_spacing``, colours).
    emotion : str
        The *displayed* EAV class.
    intensity : float
        Scales the expression's deviation from neutral.
    seconds, fps : float
        Clip length and frame rate (``T = round(seconds * fps)`` frames).
    size : int
        Frame side in pixels.
    rng : numpy.random.Generator
        The trial's video stream.
    noise : float
        Sensor noise std (fraction of full scale); also scales expression variability.
    mouth : numpy.ndarray, optional
        ``(T,)`` mouth opening in [0, 1] from the speech (speaking trials).
    blink_times : numpy.ndarray, optional
        Blink onsets in seconds (shared with the EEG of a parallel trial).

    Returns
    -------
    numpy.ndarray
        ``(T, H, W, 3)`` uint8 RGB.
    """
    n = max(int(round(seconds * fps)), 1)
    ex = expression(emotion, intensity)
    wobble = 1.0 + 4.0 * noise
    # Per-trial variation of the same expression, then slow drift within the trial.
    curve = ex["curve"] + 0.08 * wobble * rng.standard_normal() + _drift(rng, n, 0.06, 8)
    brow = ex["brow"] + 2.0 * wobble * rng.standard_normal() + _drift(rng, n, 2.0, 8)
    raise_ = ex["raise_"] + _drift(rng, n, 0.006, 8)
    eye = np.clip(ex["eye"] + 0.05 * wobble * rng.standard_normal()
                  + _drift(rng, n, 0.05, 8), 0.2, 1.6)
    opening = ex["open"] + np.zeros(n)
    if mouth is not None:
        opening = opening + 0.9 * np.asarray(mouth, dtype=float)[:n]
    times = np.arange(n) / fps
    for t0 in np.asarray(blink_times if blink_times is not None else [], dtype=float):
        eye = eye * (1.0 - 0.95 * np.exp(-0.5 * ((times - t0 - 0.1) / 0.06) ** 2))

    # Pose and lighting per frame: (T, 1, 1).
    def col(x):
        return np.asarray(x, dtype=np.float32).reshape(n, 1, 1)

    theta = col(_drift(rng, n, 0.04, 6) + 0.02 * rng.standard_normal(n))
    dx = col(_drift(rng, n, 0.03, 6))
    dy = col(_drift(rng, n, 0.02, 6))
    gain = col(1.0 + _drift(rng, n, 0.05, 15) + 0.1 * rng.uniform(-1, 1))
    grad = col(_drift(rng, n, 0.08, 15) + 0.1 * rng.uniform(-1, 1))

    px = 2.0 / size
    axis = (np.arange(size, dtype=np.float32) + 0.5) * px - 1.0
    yy, xx = np.meshgrid(axis, axis, indexing="ij")                          # (H, W)
    x0, y0 = xx[None] - dx, yy[None] - dy                                    # (T, H, W)
    u = np.cos(theta) * x0 + np.sin(theta) * y0
    v = -np.sin(theta) * x0 + np.cos(theta) * y0
    # How far a face point can move in the frame: bounds every feature's pixel window.
    reach = float(np.abs(dx).max() + np.abs(dy).max() + 1.5 * np.abs(theta).max()) + 3 * px

    def box(x_lo, x_hi, y_lo, y_hi):
        """Pixel slices (rows, cols) that contain a face-coordinate box in every frame."""
        def span(lo, hi):
            i0 = int(np.floor((lo - reach + 1.0) / px))
            i1 = int(np.ceil((hi + reach + 1.0) / px))
            return slice(min(max(i0, 0), size), min(max(i1, 0), size))
        return span(y_lo, y_hi), span(x_lo, x_hi)

    def crop(arr, where):
        return arr[:, where[0], where[1]]

    a = subject.face_width
    b = a * subject.face_ratio
    img = np.empty((3, n, size, size), dtype=np.float32)     # (3, T, H, W): planar is fast
    for ch in range(3):
        img[ch] = np.float32(subject.background[ch]) * (0.9 + 0.1 * yy)
    skin = np.asarray(subject.skin_tone, dtype=np.float32)
    hair = np.asarray(subject.hair_tone, dtype=np.float32)
    head = box(-1.05 * a, 1.05 * a, -1.1 * b, b)
    uh, vh = crop(u, head), crop(v, head)
    _paint(img, _soft(_ellipse(uh, vh, 0.0, -0.12 * b, 1.05 * a, 0.98 * b), px), hair, head)
    _paint(img, _soft(_ellipse(uh, vh, 0.0, 0.0, a, b), px), skin, head)
    _paint(img, _soft(_ellipse(uh, vh, 0.0, -0.93 * b, 0.95 * a, 0.3 * b), px), hair, head)
    nose = box(-0.09 * a, 0.09 * a, -0.08 * b, 0.32 * b)
    _paint(img, 0.35 * _soft(_ellipse(crop(u, nose), crop(v, nose), 0.0, 0.12 * b, 0.09 * a,
                                      0.2 * b), px), 0.75 * skin, nose)

    # Eyes: white ellipse (height follows openness) with an iris clipped to it.
    ex_x, ex_y = subject.eye_spacing * a, -0.12 * b
    ew, eh = 0.2 * a, 0.09 * b * col(eye)
    for side in (-1.0, 1.0):
        where = box(side * ex_x - ew, side * ex_x + ew, ex_y - 0.15 * b, ex_y + 0.15 * b)
        uw, vw = crop(u, where), crop(v, where)
        white = _soft(_ellipse(uw, vw, side * ex_x, ex_y, ew, eh + 1e-4), px)
        _paint(img, white, _EYE_WHITE, where)
        iris = _soft(_ellipse(uw, vw, side * ex_x, ex_y, 0.45 * ew, 0.45 * ew), px) * white
        _paint(img, iris, _IRIS, where)

    # Brows: thick segments; inner ends (towards the midline) go up for positive angles.
    slope = np.tan(np.deg2rad(col(brow)))
    by = ex_y - 0.2 * b - col(raise_) * 2 * b
    bw, bt = 0.26 * a, 0.035 * b
    for side in (-1.0, 1.0):
        cx = side * ex_x
        where = box(cx - bw, cx + bw, ex_y - 0.5 * b, ex_y - 0.05 * b)
        uw, vw = crop(u, where), crop(v, where)
        line = by - slope * (uw - cx) * (-side)
        sd = np.maximum(np.abs(vw - line) * np.cos(np.arctan(slope)) - bt,
                        np.abs(uw - cx) - bw)
        _paint(img, _soft(sd, px), _BROW, where)

    # Mouth: centre line v = my + k c (s^2 - 1/2) mirrored (s = u / half-width): c > 0 puts
    # the corners above the middle (smile); lips split by the opening; the inside is dark.
    my, mw = 0.5 * b, 0.36 * a
    where = box(-mw - 0.05, mw + 0.05, my - 0.25 * b, my + 0.25 * b)
    uw, vw = crop(u, where), crop(v, where)
    bulge = 1.0 - np.clip(uw / mw, -1.0, 1.0) ** 2
    centre = my + 0.09 * b * col(curve) * (bulge - 0.5)
    half_open = 0.5 * 0.12 * b * col(np.clip(opening, 0.0, 1.2)) * bulge
    lip = 0.028 * b
    dist = np.abs(vw - centre)
    inside = np.maximum(dist - half_open, np.abs(uw) - mw)
    outer = np.maximum(dist - half_open - lip, np.abs(uw) - mw - 0.2 * lip)
    _paint(img, _soft(outer, px), _LIP, where)
    _paint(img, _soft(inside, px) * (half_open > 0.5 * px), _MOUTH_INSIDE, where)

    img *= gain * (1.0 + grad * xx[None])
    if noise > 0:
        img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(noise)
    out = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)          # (3, T, H, W)
    return np.ascontiguousarray(out.transpose(1, 2, 3, 0))                  # (T, H, W, 3)
