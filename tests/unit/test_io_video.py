"""Video reading/writing with real MP4 files (libx264 via PyAV) and JPEG frame folders."""

from __future__ import annotations

import numpy as np
import pytest

from emoray.errors import DataError
from emoray.io.video import (decode_jpeg, encode_jpeg, read_video, video_header,
                             write_frames, write_mp4)

FPS = 30
N_FRAMES = 60          # 2 s
HEIGHT, WIDTH = 48, 64


def _clip() -> np.ndarray:
    """A white 10x8 square moving right by one pixel per frame on black."""
    frames = np.zeros((N_FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)  # (T, H, W, 3)
    for i in range(N_FRAMES):
        frames[i, 10:20, i:i + 8] = 255
    return frames


def _square_x(frame: np.ndarray) -> int:
    """Left edge of the square (frames at full size), from the brightness of row 15."""
    row = frame[15, :, 0].astype(int)
    return int(np.argmax(row > 128))


def _square_center(frame: np.ndarray) -> float:
    """Centre of the square in full-size pixel coordinates, for frames of any scale."""
    scale = WIDTH / frame.shape[1]
    row = frame[frame.shape[0] * 15 // HEIGHT, :, 0].astype(float)
    centre = (row * np.arange(len(row))).sum() / row.sum()
    return (centre + 0.5) * scale - 0.5


@pytest.fixture
def mp4(tmp_path):
    path = tmp_path / "clip.mp4"
    write_mp4(path, _clip(), FPS)
    return path


def test_mp4_round_trip(mp4):
    video = read_video(mp4)
    assert video.frames.shape == (N_FRAMES, HEIGHT, WIDTH, 3)
    assert video.frames.dtype == np.uint8 and video.fps == pytest.approx(FPS)
    assert np.abs(video.frames.astype(int) - _clip()).mean() < 3
    assert video.source == str(mp4)


def test_mp4_sampled_fps(mp4):
    video = read_video(mp4, fps=5)
    assert video.frames.shape[0] == 10 and video.fps == 5.0
    # every 6th source frame: the square's left edge is at 0, 6, 12, ...
    assert [_square_x(f) for f in video.frames] == list(range(0, N_FRAMES, 6))


def test_no_upsampling(mp4):
    video = read_video(mp4, fps=60)
    assert video.frames.shape[0] == N_FRAMES and video.fps == pytest.approx(FPS)


def test_max_size(mp4):
    video = read_video(mp4, fps=10, max_size=32)
    assert video.frames.shape == (20, 24, 32, 3)
    centres = [_square_center(f) for f in video.frames]
    np.testing.assert_allclose(centres, np.arange(0, N_FRAMES, 3) + 3.5, atol=0.6)
    assert read_video(mp4, max_size=100).frames.shape[1:3] == (HEIGHT, WIDTH)


def test_video_header(mp4):
    fps, width, height, seconds = video_header(mp4)
    assert fps == pytest.approx(FPS) and (width, height) == (WIDTH, HEIGHT)
    assert seconds == pytest.approx(2.0, abs=0.05)


def test_odd_size_padded(tmp_path):
    path = tmp_path / "odd.mp4"
    write_mp4(path, _clip()[:, :47, :63], FPS)
    video = read_video(path)
    assert video.frames.shape == (N_FRAMES, 48, 64, 3)
    assert video_header(path)[1:3] == (64, 48)


def test_frame_folder_round_trip(tmp_path):
    folder = tmp_path / "frames"
    write_frames(folder, _clip(), 15.0)
    assert (folder / "fps.txt").read_text().strip() == "15.0"
    assert (folder / "frame_00000.jpg").is_file()
    video = read_video(folder)
    assert video.fps == 15.0 and video.frames.shape == (N_FRAMES, HEIGHT, WIDTH, 3)
    assert np.abs(video.frames.astype(int) - _clip()).mean() < 3
    sampled = read_video(folder, fps=5)
    assert sampled.frames.shape[0] == 20 and sampled.fps == 5.0
    assert [_square_x(f) for f in sampled.frames[:3]] == [0, 3, 6]
    assert video_header(folder) == (15.0, WIDTH, HEIGHT, pytest.approx(4.0))


def test_frame_folder_natural_order_and_default_fps(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    clip = _clip()[:12]
    for i, blob in enumerate(encode_jpeg(clip)):
        (folder / f"img{i}.jpg").write_bytes(blob)          # img2 must come before img10
    video = read_video(folder, frames_fps=24.0, max_size=32)
    assert video.fps == 24.0 and video.frames.shape == (12, 24, 32, 3)
    centres = [_square_center(f) for f in video.frames]
    np.testing.assert_allclose(centres, np.arange(12) + 3.5, atol=0.6)


def test_jpeg_round_trip():
    clip = _clip()[:4]
    blobs = encode_jpeg(clip, quality=95)
    assert len(blobs) == 4 and all(b[:2] == b"\xff\xd8" for b in blobs)
    back = decode_jpeg(blobs)
    assert back.shape == clip.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - clip).mean() < 3
    assert len(encode_jpeg(clip, quality=20)[0]) < len(blobs[0])


def test_corrupt_mp4(tmp_path):
    path = tmp_path / "junk.mp4"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    for fn in (read_video, video_header):
        with pytest.raises(DataError) as err:
            fn(path)
        assert err.value.kind == "unreadable" and err.value.path == str(path)


def test_truncated_mp4_has_no_frames(tmp_path, mp4):
    path = tmp_path / "cut.mp4"
    path.write_bytes(mp4.read_bytes()[:200])
    with pytest.raises(DataError) as err:
        read_video(path)
    assert err.value.kind in ("unreadable", "truncated")


def test_missing_and_unknown(tmp_path):
    with pytest.raises(DataError) as err:
        read_video(tmp_path / "nope.mp4")
    assert err.value.kind == "unreadable" and "file not found" in err.value.reason
    path = tmp_path / "clip.gif"
    path.write_bytes(b"GIF89a")
    with pytest.raises(DataError) as err:
        read_video(path)
    assert err.value.kind == "unknown_format" and ".mp4" in err.value.reason


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        read_video(tmp_path / "empty")
    assert err.value.kind == "truncated" and err.value.field == "video"


def test_corrupt_frame_in_folder(tmp_path):
    folder = tmp_path / "frames"
    write_frames(folder, _clip()[:3], 30.0)
    (folder / "frame_00001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError) as err:
        read_video(folder)
    assert err.value.kind == "unreadable" and "frame_00001.jpg" in str(err.value)
