"""Binary request bodies of the Serve API (no Ray): ``.npy``, ``.npz`` and raw parts.

Every request here is a real ``multipart/form-data`` body taken apart by the server's own
path (see :mod:`serve_binary_io`). The same signals sent as JSON and as each binary
encoding must decode to equal inputs, JPEG and raw frames decode as the JSON path's, and
the client sends binary by default and JSON on request. Malformed binary input is in
:mod:`test_serve_binary_malformed`.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from emoray.io.video import encode_jpeg
from emoray.predict import EEGInput, SpeechInput, VideoInput
from emoray.serving.client import (ClientError, binary_request, json_request, npy_bytes,
                                   predict_signals, read_inputs)
from emoray.serving.decode import DecodeLimits, decode_json, decode_multipart
from serve_binary_io import CHANNELS, FPS, RATE, SFREQ, form_field, npz_bytes, parts_of, post


def decoded(files=None, json_body=None) -> dict:
    status, out = post(files, json_body)
    assert status == 200, out
    return out


# -- signals --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def signals():
    rng = np.random.default_rng(0)
    t = np.arange(2 * RATE) / RATE
    speech = (0.4 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size))
    frames = rng.integers(0, 256, (6, 24, 32, 3), dtype=np.uint8)          # (N, H, W, 3)
    return {"eeg": EEGInput(rng.normal(0, 2e-5, (4, 2 * int(SFREQ))).astype(np.float32),
                            SFREQ, CHANNELS),                                # (C, T) f32
            "speech": SpeechInput(speech.astype(np.float32), RATE),          # (T,) f32
            "pcm": SpeechInput(np.clip(np.round(speech * 32768), -32768, 32767)
                               .astype(np.int16), RATE),                      # (T,) i16
            "video": VideoInput(frames, FPS)}



def npz_request(eeg=None, speech=None, video=None) -> list[tuple]:
    """Each modality one ``.npz`` holding its signal and metadata (named as in JSON)."""
    files = []
    if eeg is not None:
        files.append(("eeg", ("eeg.npz", npz_bytes(data=eeg.data, sfreq=np.float64(eeg.sfreq),
                                              ch_names=np.array(eeg.ch_names)))))
    if speech is not None:
        files.append(("speech", ("speech.npz", npz_bytes(samples=speech.samples,
                                                    sample_rate=np.int64(speech.sample_rate)))))
    if video is not None:
        files.append(("video", ("video.npz", npz_bytes(frames=video.frames,
                                                  fps=np.float32(video.fps)))))
    return files


def raw_request(eeg=None, speech=None, video=None) -> list[tuple]:
    """Raw little-endian bytes (``application/octet-stream``) with dtype/shape fields."""
    files = []
    if eeg is not None:
        files += [("eeg", ("eeg.bin", eeg.data.astype("<f4").tobytes(),
                           "application/octet-stream")),
                  form_field("eeg_dtype", "float32"),
                  form_field("eeg_shape", ",".join(map(str, eeg.data.shape))),
                  form_field("eeg_sfreq", repr(eeg.sfreq)),
                  form_field("eeg_ch_names", ",".join(eeg.ch_names))]
    if speech is not None:
        files += [("speech", ("speech.bin", speech.samples.tobytes(),
                              "application/octet-stream")),
                  form_field("speech_dtype", speech.samples.dtype.str),
                  form_field("speech_sample_rate", str(speech.sample_rate))]
    if video is not None:
        files += [("video", ("video.bin", video.frames.tobytes(), "application/octet-stream")),
                  form_field("video_dtype", "uint8"),
                  form_field("video_shape", "[" + ", ".join(map(str, video.frames.shape)) + "]"),
                  form_field("video_fps", repr(video.fps))]
    return files


ENCODERS = {"npy": binary_request, "npz": npz_request, "raw": raw_request}


# -- round trips ----------------------------------------------------------------------------

@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_each_binary_encoding_decodes_as_json_does(signals, encoding):
    """EEG and float speech equal the JSON path's exactly; int16 speech equals the JSON
    path's (the client scales it as the server does) and lies within one int16 step of the
    float signal it quantises; uint8 frames arrive exactly as sent."""
    encode = ENCODERS[encoding]
    eeg, speech, pcm, video = (signals[k] for k in ("eeg", "speech", "pcm", "video"))
    as_json = decoded(json_body=json_request(eeg, speech))
    got = decoded(encode(eeg, speech, video))
    assert got["eeg"].data.shape == (4, 256) and got["eeg"].data.dtype == np.float32
    np.testing.assert_array_equal(got["eeg"].data, as_json["eeg"].data)
    assert got["eeg"].sfreq == as_json["eeg"].sfreq == SFREQ
    assert list(got["eeg"].ch_names) == list(as_json["eeg"].ch_names) == CHANNELS
    assert got["speech"].samples.dtype == np.float32
    np.testing.assert_array_equal(got["speech"].samples, as_json["speech"].samples)
    assert got["speech"].sample_rate == as_json["speech"].sample_rate == RATE
    assert got["video"].frames.dtype == np.uint8 and got["video"].fps == FPS
    np.testing.assert_array_equal(got["video"].frames, video.frames)       # no JPEG loss

    pcm_json = decoded(json_body=json_request(speech=pcm))["speech"].samples
    pcm_got = decoded(encode(speech=pcm))["speech"].samples
    np.testing.assert_array_equal(pcm_got, pcm_json)
    assert pcm_got.min() >= -1 and pcm_got.max() < 1
    np.testing.assert_allclose(pcm_got, speech.samples, rtol=0, atol=0.5 / 32768)


def test_jpeg_frames_in_binary_requests_decode_as_json_frames(signals):
    """Frames sent as JPEG parts decode to what the JSON path's base64 JPEGs decode to."""
    video = signals["video"]
    blobs = VideoInput(encode_jpeg(video.frames), FPS)
    as_json = decoded(json_body=json_request(video=blobs))["video"]
    for entries in (binary_request(video=blobs), binary_request(video=video,
                                                                video_as_jpeg=True)):
        got = decoded(entries)["video"]
        np.testing.assert_array_equal(got.frames, as_json.frames)
        assert got.fps == as_json.fps == FPS


def test_metadata_may_come_from_the_form_for_an_npz_and_names_as_a_list(signals):
    eeg = signals["eeg"]
    files = [("eeg", ("rec.npz", npz_bytes(data=eeg.data))), form_field("eeg_sfreq", "128"),
             form_field("eeg_ch_names", json.dumps(CHANNELS))]
    got = decoded(files)["eeg"]
    np.testing.assert_array_equal(got.data, eeg.data)
    assert got.sfreq == SFREQ and list(got.ch_names) == CHANNELS
    # extension-less parts are recognised by their magic bytes; speech shape is optional
    files = [("eeg", ("blob", npy_bytes(eeg.data))), form_field("eeg_sfreq", "128"),
             form_field("eeg_ch_names", "Fp1, Fp2, Cz, Pz"),
             ("speech", ("blob2", npz_bytes(samples=signals["pcm"].samples, sample_rate=RATE)))]
    got = decoded(files)
    np.testing.assert_array_equal(got["eeg"].data, eeg.data)
    assert got["speech"].samples.shape == (2 * RATE,)
    fortran = np.asfortranarray(eeg.data)
    files = [("eeg", ("f.npy", _fortran_npy(fortran))),
             form_field("eeg_sfreq", "128"), form_field("eeg_ch_names", ",".join(CHANNELS))]
    np.testing.assert_array_equal(decoded(files)["eeg"].data, eeg.data)


def _fortran_npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)                       # keeps fortran_order=True for an F-ordered array
    assert b"'fortran_order': True" in buf.getvalue()[:128]
    return buf.getvalue()


def test_big_raw_frames_are_scaled_like_jpeg_frames(signals):
    frames = np.ascontiguousarray(np.broadcast_to(
        np.linspace(0, 255, 200, dtype=np.uint8)[None, None, :, None], (2, 40, 200, 3)))
    limits = DecodeLimits(max_video_side=100)
    from_raw = decode_multipart(*parts_of(binary_request(video=VideoInput(frames, None))),
                                limits)["video"]
    from_json = decode_json(json.dumps(json_request(video=VideoInput(frames, None))),
                            limits)["video"]
    assert from_raw.frames.shape == from_json.frames.shape == (2, 20, 100, 3)
    assert np.abs(from_raw.frames.astype(int) - from_json.frames).mean() < 3   # JPEG loss


def test_the_client_sends_binary_by_default_and_json_on_request(signals, tmp_path):
    """``predict_signals`` picks the encoding; a server that echoes the content type shows
    which went out. ``read_inputs`` keeps 16-bit PCM as int16."""
    import http.server
    import threading

    from emoray.io.audio import write_audio
    from emoray.types import Audio

    seen = []

    class Echo(http.server.BaseHTTPRequestHandler):
        def do_POST(self):                               # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.headers["Content-Type"].split(";")[0], len(body)))
            data = json.dumps({"label": "ok"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        given = {"eeg": signals["eeg"], "speech": signals["speech"]}
        assert predict_signals(url, **given) == {"label": "ok"}
        predict_signals(url, **given, encoding="json")
        with pytest.raises(ClientError, match="encoding 'xml'"):
            predict_signals(url, **given, encoding="xml")
    finally:
        server.shutdown()
        server.server_close()
    (binary, n_binary), (text, n_json) = seen
    assert binary == "multipart/form-data" and text == "application/json"
    assert n_binary * 3 < n_json                    # float text costs more than 3x the bytes
    write_audio(tmp_path / "s.wav", Audio(signals["speech"].samples, RATE))   # 16-bit PCM
    pcm = read_inputs([tmp_path / "s.wav"])["speech"]
    assert pcm.samples.dtype == np.int16 and pcm.sample_rate == RATE
    got = decoded(binary_request(speech=pcm))["speech"].samples
    np.testing.assert_allclose(got, signals["speech"].samples, atol=1 / 32768)
