"""Request decoding for the Serve API (no Ray): real files in, model inputs out.

Round trips go through the client's builders (:func:`json_request`, :func:`build_multipart`)
and the server's decoders; sniffing recognises every format with and without an extension;
the client refuses bad input before sending and talks to a real HTTP server. Malformed
input and the seeded fuzz loop are in :mod:`test_serve_malformed`.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading

import numpy as np
import pytest

from emoray.errors import DataError
from emoray.predict import EEGInput, SpeechInput, VideoInput
from emoray.serving.client import (ClientError, build_multipart, json_request, modality_of,
                                   predict_files)
from emoray.serving.decode import (MODALITY_EXTENSIONS, DecodeLimits, Upload, decode_json,
                                   decode_multipart, sniff)
from serve_media import CHANNELS, FPS, RATE, SFREQ, make_frames
from serve_media import media  # noqa: F401 (a pytest fixture, requested by name)


def _parts(entries: list[tuple]) -> tuple[list[Upload], dict[str, str]]:
    """requests ``files=`` entries -> what the server's multipart parser hands the decoder."""
    files, fields = [], {}
    for name, (filename, data, ctype) in ((n, v if len(v) == 3 else (*v, None))
                                          for n, v in entries):
        if filename is None:
            fields[name] = data
        else:
            files.append(Upload(name, filename, data, ctype))
    return files, fields


def _close(a: np.ndarray, b: np.ndarray, mean_abs: float) -> bool:
    return a.shape == b.shape and np.abs(a.astype(float) - b.astype(float)).mean() < mean_abs


# -- round trips ----------------------------------------------------------------------------

def test_json_round_trip_reproduces_signals(media):
    body = json_request(EEGInput(media["eeg"], SFREQ, CHANNELS),
                        SpeechInput(media["speech"], RATE),
                        VideoInput(media["frames"], FPS))
    out = decode_json(json.dumps(body).encode())
    assert out["eeg"].data.shape == (4, 256) and out["eeg"].data.dtype == np.float32
    np.testing.assert_array_equal(out["eeg"].data, media["eeg"].astype(np.float32))  # exact
    assert out["eeg"].sfreq == SFREQ and list(out["eeg"].ch_names) == CHANNELS
    np.testing.assert_array_equal(out["speech"].samples, media["speech"])
    assert out["speech"].sample_rate == RATE and out["speech"].samples.dtype == np.float32
    assert out["video"].fps == FPS and out["video"].frames.dtype == np.uint8
    assert _close(out["video"].frames, media["frames"], 3.0)              # JPEG loss only


def test_json_speech_as_file_and_integer_pcm(media):
    body = json_request(speech=SpeechInput(media["speech"], RATE), speech_as_file=True)
    assert set(body["speech"]) == {"audio_base64"}
    out = decode_json(json.dumps(body))
    np.testing.assert_array_equal(out["speech"].samples, media["speech"])  # float WAV
    pcm = np.array([0, 16384, -32768, 32767], dtype=np.int16)
    out = decode_json(json.dumps(json_request(speech=SpeechInput(np.tile(pcm, 100), 100))))
    np.testing.assert_allclose(out["speech"].samples[:4], [0, 0.5, -1, 32767 / 32768])
    assert out["eeg"] is None and out["video"] is None


def test_json_video_without_fps_and_downscaled(media):
    big = make_frames(n=2, h=40, w=200)
    body = json_request(video=VideoInput(big, None))
    out = decode_json(json.dumps(body), DecodeLimits(max_video_side=100))
    assert out["video"].fps is None and out["video"].frames.shape == (2, 20, 100, 3)


@pytest.mark.parametrize("eeg_ext,speech_ext,video", [
    (".edf", ".wav", ".mp4"), (".bdf", ".flac", "jpegs"), (".fif", ".wav", "folder")])
def test_multipart_round_trip_reproduces_files(media, eeg_ext, speech_ext, video):
    f = media["files"]
    paths = [f[eeg_ext], f[speech_ext]]
    if video == ".mp4":
        paths.append(f[".mp4"])
    elif video == "jpegs":
        paths += sorted(f["frames"].glob("*.jpg"))
    else:
        paths.append(f["frames"])
    entries = build_multipart(paths, video_fps=10.0 if video == "jpegs" else None)
    out = decode_multipart(*_parts(entries))
    eeg = out["eeg"]
    step = np.ptp(media["eeg"]) / 30000                 # EDF: 16-bit over the signal range
    np.testing.assert_allclose(eeg.data, media["eeg"], rtol=0, atol=step)
    assert list(eeg.ch_names) == CHANNELS and eeg.sfreq == SFREQ
    assert out["speech"].sample_rate == RATE
    np.testing.assert_allclose(out["speech"].samples, media["speech"], atol=1 / 16384)
    assert out["video"].frames.shape == media["frames"].shape
    assert _close(out["video"].frames, media["frames"], 6.0 if video == ".mp4" else 3.0)
    assert out["video"].fps == {".mp4": FPS, "jpegs": 10.0, "folder": FPS}[video]


def test_sniff_every_format_with_and_without_extension(media):
    expected = {".edf": "eeg", ".bdf": "eeg", ".fif": "eeg", ".wav": "speech",
                ".flac": "speech", ".mp4": "video", ".jpg": "video"}
    for ext, modality in expected.items():
        data = media["data"][ext]
        assert sniff(data, f"x{ext.upper()}") == (modality, ext)
        assert sniff(data, None) == (modality, ext)                     # by content
        assert sniff(data, "upload.bin") == (modality, ext)
        assert ext in MODALITY_EXTENSIONS[modality]
    assert sniff(media["data"][".jpg"], "a.jpeg") == ("video", ".jpeg")
    with pytest.raises(DataError) as err:
        sniff(media["data"][".wav"], "rec.edf")
    assert err.value.kind == "unknown_format" and "WAV" in err.value.reason
    with pytest.raises(DataError, match="expected eeg: .edf"):
        sniff(b"hello world, not a known file", "notes.txt")


def test_multipart_without_extension_is_sniffed(media):
    d = media["data"]
    files = [Upload("eeg", None, d[".bdf"]), Upload("speech", "audio", d[".flac"]),
             Upload("video", "clip", d[".mp4"])]
    out = decode_multipart(files, {})
    assert out["eeg"].data.shape == (4, 256) and out["speech"].samples.shape == (RATE,)
    assert out["video"].frames.shape == (6, 48, 64, 3)


# -- the client -----------------------------------------------------------------------------

def test_client_refuses_before_sending(media, tmp_path):
    f = media["files"]
    assert modality_of(f[".fif"]) == "eeg" and modality_of(f["frames"]) == "video"
    with pytest.raises(DataError, match="unknown file type '.txt'"):
        modality_of(tmp_path / "notes.txt")
    with pytest.raises(ClientError, match="2 eeg files"):
        build_multipart([f[".edf"], f[".bdf"]])
    with pytest.raises(ClientError, match="expected one MP4"):
        build_multipart([f[".mp4"], f[".jpg"]])
    with pytest.raises(ClientError, match="without video"):
        build_multipart([f[".wav"]], video_fps=5.0)
    with pytest.raises(DataError, match="file not found"):
        build_multipart([tmp_path / "missing.wav"])
    (tmp_path / "png").mkdir()
    (tmp_path / "png" / "f1.png").write_bytes(b"\x89PNG")
    with pytest.raises(ClientError, match="JPEG frames only"):
        build_multipart([tmp_path / "png"])
    entries = build_multipart([f["frames"]], video_fps=12.5)            # overrides fps.txt
    assert entries[-1] == ("video_fps", (None, "12.5"))
    assert [e[1][0] for e in entries[:-1]] == [f"frame_{i:05d}.jpg" for i in range(6)]


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):                                   # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        key = self.headers.get("X-API-Key")
        if key != "k1":
            status, body = 401, {"error": {"status": 401, "field": "X-API-Key",
                                           "message": "missing or wrong API key"}}
        else:
            status, body = 200, {"label": "happy", "path": self.path,
                                 "type": self.headers["Content-Type"].split(";")[0]}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_client_over_real_http(media):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        got = predict_files(url + "/", [media["files"][".wav"]], api_key="k1", timeout=10)
        assert got == {"label": "happy", "path": "/v1/predict", "type": "multipart/form-data"}
        with pytest.raises(ClientError) as err:
            predict_files(url, [media["files"][".wav"]], timeout=10)
        assert err.value.status == 401 and err.value.field == "X-API-Key"
        assert "missing or wrong API key" in str(err.value)
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as sock:                        # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ClientError, match="not reachable.*emoray serve"):
        predict_files(f"http://127.0.0.1:{port}", [media["files"][".wav"]], timeout=5)
