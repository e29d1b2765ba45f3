"""Video reading and writing: video files through PyAV, image-frame folders, JPEG blobs.

A video is either a file (:data:`SUPPORTED_VIDEO_EXTENSIONS`, decoded with PyAV to RGB) or a
folder of ``.jpg``/``.jpeg``/``.png`` frames in natural name order, whose frame rate comes
from an ``fps.txt`` file in the folder (else the caller's ``frames_fps``). Frames are
sub-sampled by timestamp and scaled while decoding, one frame at a time, so that reading a
long HD clip at a low rate and size never holds the full-resolution clip in memory.
torchvision has no video I/O in this stack; it is used for JPEG/PNG coding and resizing.
"""

from __future__ import annotations

import os
import re
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from emoray.errors import DataError
from emoray.types import Video

SUPPORTED_VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv", ".webm")
FRAME_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")
FPS_FILE = "fps.txt"


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower()
            for part in re.split(r"(\d+)", name)]


def _frame_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir()
             if p.is_file() and p.suffix.lower() in FRAME_EXTENSIONS]
    return sorted(files, key=lambda p: _natural_key(p.name))


def _short_reason(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _check_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        return p
    ext = p.suffix.lower()
    if ext not in SUPPORTED_VIDEO_EXTENSIONS:
        raise DataError(str(path), f"unknown video format {ext or '(none)'!r}; expected a "
                        f"file with one of {list(SUPPORTED_VIDEO_EXTENSIONS)} or a folder "
                        f"of {list(FRAME_EXTENSIONS)} frames", kind="unknown_format",
                        field="video")
    if not p.is_file():
        raise DataError(str(path), "file not found", kind="unreadable", field="video")
    return p


def _folder_fps(folder: Path, default: float) -> float:
    fps_file = folder / FPS_FILE
    if not fps_file.is_file():
        return float(default)
    text = fps_file.read_text().strip()
    try:
        fps = float(text)
    except ValueError:
        fps = float("nan")
    if not np.isfinite(fps) or fps <= 0:
        raise DataError(str(fps_file), f"frame rate {text!r} is not a positive number",
                        kind="invalid_value", field="video")
    return fps


def _scaled_size(width: int, height: int, max_size: int | None) -> tuple[int, int]:
    """(width, height) scaled so the longer side is at most ``max_size``."""
    if max_size is None or max(width, height) <= max_size:
        return width, height
    scale = max_size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


class _RateKeeper:
    """Decides which timestamps to keep so the output runs at ``fps`` (never faster)."""

    def __init__(self, src_fps: float, fps: float | None):
        self.src_fps = float(src_fps)
        self.keep_all = fps is None or fps >= self.src_fps * (1 - 1e-6)
        self.out_fps = self.src_fps if self.keep_all else float(fps)
        self._next = 0.0
        self._tol = 0.5 / self.src_fps

    def keep(self, t: float) -> bool:
        if self.keep_all:
            return True
        if t + self._tol < self._next:
            return False
        step = 1.0 / self.out_fps
        while self._next <= t + self._tol:   # skip slots a gap in timestamps jumped over
            self._next += step
        return True


def _video_fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 30.0


def _decode_threads() -> int:
    """FFmpeg decoding threads: the process's thread budget where one is set.

    Ray sets ``OMP_NUM_THREADS`` to a worker's CPU share (1 for a 1-CPU task); decoding on
    more threads than that only makes parallel tasks fight over the cores (measured: 1.4x
    longer wall time per task with two workers on two cores). Without a budget (a plain
    process), FFmpeg picks one thread per core.
    """
    budget = os.environ.get("OMP_NUM_THREADS", "")
    return int(budget) if budget.isdigit() and int(budget) > 0 else 0


def _decode_file(path: Path, fps: float | None,
                 max_size: int | None) -> tuple[list[np.ndarray], float]:
    import av

    frames: list[np.ndarray] = []
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise DataError(str(path), "file has no video stream", kind="unreadable",
                            field="video")
        stream = container.streams.video[0]
        threads = _decode_threads()
        if threads == 1:
            stream.thread_type = "NONE"
        else:
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = threads      # 0: one per core
        src_fps = _video_fps(stream)
        keeper = _RateKeeper(src_fps, fps)
        start: float | None = None
        for index, frame in enumerate(container.decode(stream)):
            t = frame.time if frame.time is not None else index / src_fps
            start = t if start is None else start
            if not keeper.keep(t - start):
                continue
            width, height = _scaled_size(frame.width, frame.height, max_size)
            rgb = frame.reformat(width=width, height=height, format="rgb24")
            frames.append(rgb.to_ndarray())  # (H, W, 3)
    return frames, keeper.out_fps


def _read_image(path: Path, max_size: int | None) -> np.ndarray:
    import torch
    import torchvision.io as tvio
    from torchvision.transforms.v2 import functional as TF

    try:
        data = tvio.read_file(str(path))
        image = tvio.decode_image(data, mode=tvio.ImageReadMode.RGB)  # (3, H, W)
    except Exception as exc:
        raise DataError(str(path), f"cannot decode image: {_short_reason(exc)}",
                        kind="unreadable", field="video") from None
    height, width = image.shape[1:]
    new_w, new_h = _scaled_size(width, height, max_size)
    if (new_w, new_h) != (width, height):
        with torch.no_grad():
            image = TF.resize(image, [new_h, new_w], antialias=True)
    return image.permute(1, 2, 0).contiguous().numpy()  # (H, W, 3)


def _decode_folder(folder: Path, fps: float | None, max_size: int | None,
                   frames_fps: float) -> tuple[list[np.ndarray], float]:
    files = _frame_files(folder)
    if not files:
        raise DataError(str(folder), f"folder holds no image frames; expected "
                        f"{list(FRAME_EXTENSIONS)} files", kind="truncated", field="video")
    keeper = _RateKeeper(_folder_fps(folder, frames_fps), fps)
    frames: list[np.ndarray] = []
    for index, file in enumerate(files):
        if keeper.keep(index / keeper.src_fps):
            frame = _read_image(file, max_size)
            if frames and frame.shape != frames[0].shape:
                raise DataError(str(file), f"frame size {frame.shape[:2]} differs from "
                                f"the first frame's {frames[0].shape[:2]}",
                                kind="invalid_value", field="video")
            frames.append(frame)
    return frames, keeper.out_fps


def read_video(path: str | os.PathLike, *, fps: float | None = None,
               max_size: int | None = None, frames_fps: float = 30.0) -> Video:
    """Read a video file or a folder of image frames as RGB frames.

    Parameters
    ----------
    path : str | os.PathLike
        A video file (:data:`SUPPORTED_VIDEO_EXTENSIONS`) or a folder of frames.
    fps : float | None
        Keep frames at this rate, chosen by timestamp (30 fps source, ``fps=5`` -> every
        6th frame). A rate above the source's keeps the source rate (no upsampling).
    max_size : int | None
        Scale each frame so its longer side is at most this, keeping the aspect ratio.
    frames_fps : float
        Frame rate of a frame folder without an ``fps.txt``.

    Returns
    -------
    Video
        ``frames`` ``(T, H, W, 3)`` uint8, the output ``fps`` and ``source=str(path)``.

    Raises
    ------
    DataError
        Missing or undecodable input (``unreadable``), unknown extension
        (``unknown_format``), no frames (``truncated``).
    """
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if max_size is not None and max_size < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    p = _check_path(path)
    try:
        if p.is_dir():
            frames, out_fps = _decode_folder(p, fps, max_size, frames_fps)
        else:
            frames, out_fps = _decode_file(p, fps, max_size)
    except DataError:
        raise
    except Exception as exc:   # av.error.*, OSError, ValueError from corrupt streams
        raise DataError(str(path), f"cannot decode video: {_short_reason(exc)}",
                        kind="unreadable", field="video") from None
    if not frames:
        raise DataError(str(path), "video has zero frames; expected at least one",
                        kind="truncated", field="video")
    stacked = np.stack(frames).astype(np.uint8, copy=False)  # (T, H, W, 3)
    return Video(frames=stacked, fps=float(out_fps), source=str(path))


def video_header(path: str | os.PathLike, *,
                 frames_fps: float = 30.0) -> tuple[float, int, int, float]:
    """Frame rate, size and duration of a video without decoding it.

    A frame folder decodes only its first frame. Parameters are as in :func:`read_video`.

    Returns
    -------
    tuple[float, int, int, float]
        ``(fps, width, height, seconds)``.
    """
    import av

    p = _check_path(path)
    if p.is_dir():
        files = _frame_files(p)
        if not files:
            raise DataError(str(p), f"folder holds no image frames; expected "
                            f"{list(FRAME_EXTENSIONS)} files", kind="truncated",
                            field="video")
        rate = _folder_fps(p, frames_fps)
        height, width = _read_image(files[0], None).shape[:2]
        return rate, int(width), int(height), len(files) / rate
    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise DataError(str(p), "file has no video stream", kind="unreadable",
                                field="video")
            stream = container.streams.video[0]
            rate = _video_fps(stream)
            width, height = stream.codec_context.width, stream.codec_context.height
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                seconds = container.duration / av.time_base
            else:
                seconds = (stream.frames or 0) / rate
    except DataError:
        raise
    except Exception as exc:
        raise DataError(str(p), f"cannot read video header: {_short_reason(exc)}",
                        kind="unreadable", field="video") from None
    return rate, int(width), int(height), float(seconds)


def _even(frames: np.ndarray) -> np.ndarray:
    """Pad odd heights/widths by one edge-replicated pixel (yuv420p needs even sizes)."""
    _, height, width, _ = frames.shape
    pad = ((0, 0), (0, height % 2), (0, width % 2), (0, 0))
    return np.pad(frames, pad, mode="edge") if any(p[1] for p in pad) else frames


def _check_frames(path: str | os.PathLike, frames: np.ndarray) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] == 0:
        raise DataError(str(path), f"frames have shape {arr.shape}; expected (T, H, W, 3) "
                        "with T >= 1", kind="invalid_value", field="video")
    return np.clip(arr, 0, 255).astype(np.uint8, copy=False)


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float) -> None:
    """Encode frames as H.264 (libx264, yuv420p, crf 20, no lookahead) in an MP4 file; the
    same frames give the same bytes.

    Parameters
    ----------
    path : str | os.PathLike
        Output file; parent folders are created.
    frames : np.ndarray
        ``(T, H, W, 3)`` uint8 RGB. Odd sizes are padded by one pixel to even.
    fps : float
        Frame rate.
    """
    import av

    frames = _even(_check_frames(path, frames))  # (T, H', W', 3), even H', W'
    rate = Fraction(float(fps)).limit_denominator(1001)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # no lookahead and no macroblock tree: with them libx264 (as PyAV loads it) wrote
        # different bytes, and different decoded pixels, for the very same frames from one
        # call to the next, even on one thread; without them the file is a function of the
        # frames (a seeded synthetic corpus is the same corpus twice), about 12 % larger
        stream.options = {"crf": "20", "preset": "veryfast",
                          "x264-params": "rc-lookahead=0:mbtree=0"}
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = index
            frame.time_base = 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))   # flush the encoder


def write_frames(folder: str | os.PathLike, frames: np.ndarray, fps: float) -> None:
    """Write frames as ``frame_00000.jpg`` ... plus ``fps.txt`` into ``folder``.

    Existing ``frame_*.jpg`` files in the folder are removed first.
    """
    out = Path(folder)
    if out.is_file():
        raise DataError(str(out), "is a file; expected a folder for frames",
                        kind="invalid_value", field="video")
    frames = _check_frames(out, frames)  # (T, H, W, 3)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("frame_*.jpg"):
        old.unlink()
    for index, blob in enumerate(encode_jpeg(frames)):
        (out / f"frame_{index:05d}.jpg").write_bytes(blob)
    (out / FPS_FILE).write_text(f"{float(fps)!r}\n")


def encode_jpeg(frames: np.ndarray, quality: int = 90) -> list[bytes]:
    """JPEG-encode ``(T, H, W, 3)`` uint8 frames with torchvision; one blob per frame."""
    import torch
    import torchvision.io as tvio

    arr = np.asarray(frames, dtype=np.uint8)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got shape {arr.shape}")
    if arr.shape[0] == 0:
        return []
    chw = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)  # (T, 3, H, W)
    encoded = tvio.encode_jpeg([img.contiguous() for img in chw], quality=int(quality))
    return [bytes(t.numpy().tobytes()) for t in encoded]


def decode_jpeg(blobs: list[bytes]) -> np.ndarray:
    """Decode JPEG blobs (all the same size) to ``(T, H, W, 3)`` uint8 RGB frames."""
    import torch
    import torchvision.io as tvio

    if not blobs:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    images = tvio.decode_jpeg(data, mode=tvio.ImageReadMode.RGB)  # [(3, H, W)] * T
    shapes = {tuple(img.shape) for img in images}
    if len(shapes) != 1:
        raise ValueError(f"JPEG frames differ in size: {sorted(shapes)}")
    return torch.stack(images).permute(0, 2, 3, 1).contiguous().numpy()  # (T, H, W, 3)


def iter_frame_files(folder: str | os.PathLike) -> Iterator[Path]:
    """The image files of a frame folder, in natural order (``frame_2`` before ``frame_10``)."""
    yield from _frame_files(Path(folder))

