"""Live streams (/v1/stream): the protocol's state without a socket, then real WebSockets on
a real uvicorn server over the in-process backend (the v0 fusion bundle; Serve is covered
in tests/integration/serving/): windows answer as /v1/predict answers the same
signal, `emoray predict --stream` replays real files, the fuzz cases get close codes with
reasons, slots are bounded and freed."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from conftest import plain_server, wait_for
from emoray.config import StreamConfig
from emoray.predict import EEGInput, SpeechInput
from emoray.serving.stream import StreamError, StreamState
from emoray.serving.stream_client import chunks, first_message, replay, ws_url
from stream_fuzz import check_all, malformed_streams, run_case

BUNDLE = Path(__file__).resolve().parents[1] / "fixtures" / "bundles_v0" / "fusion"
INFO = {"modalities": ["eeg", "speech", "video"], "segment_seconds": 5.0,
        "eeg": {"channels": ["Fp1", "Fp2", "Cz"]}}
NAMES = ["Cz", "Fp2", "Fp1", "O1"]


def _eeg_chunk(data: np.ndarray) -> bytes:            # data (T, C)
    return b"e" + np.ascontiguousarray(data, dtype="<f4").tobytes()


def _state(**first) -> StreamState:
    msg = {"eeg": {"sfreq": 100, "ch_names": NAMES},
           "speech": {"sample_rate": 8000}, **first}
    return StreamState(msg, INFO, StreamConfig())


# -- the protocol's state (no socket) -------------------------------------------------------

def test_windows_cut_the_stream_at_the_hop_whatever_the_chunk_sizes():
    rng = np.random.default_rng(0)
    eeg = rng.normal(size=(100 * 9, 4)).astype(np.float32)             # 9 s, (T, C)
    speech = rng.uniform(-1, 1, 8000 * 9).astype(np.float32)
    state = _state(window_seconds=2.5, hop_seconds=1.5)
    got, e, s = [], 0, 0
    for n_e, n_s in [(37, 3000), (1, 1), (250, 20000), (3, 1100)] * 40:
        if e < len(eeg):
            state.feed(_eeg_chunk(eeg[e:e + n_e]))
            e += n_e
        if s < len(speech):
            state.feed(b"s" + speech[s:s + n_s].tobytes())
            s += n_s
        got += state.windows()
    # windows at 0, 1.5, ... while start + 2.5 <= 9 s
    assert [w.index for w in got] == list(range(5))
    for w in got:
        a = int(round(w.start_s * 100))
        np.testing.assert_array_equal(w.inputs["eeg"].data, eeg[a:a + 250].T)
        b = int(round(w.start_s * 8000))
        np.testing.assert_array_equal(w.inputs["speech"].samples, speech[b:b + 20000])
        assert w.inputs["eeg"].ch_names == NAMES and w.end_s == w.start_s + 2.5
    # the buffers hold no more than the next window's start onward
    for buf in state.buffers.values():
        held = sum(len(c) for c in buf.chunks)
        assert held == buf.received - int(round(5 * 1.5 * buf.rate))


def test_int16_speech_scales_like_the_http_path_and_overlapping_windows_share_signal():
    state = StreamState({"speech": {"sample_rate": 8000, "dtype": "int16"}},
                        INFO, StreamConfig())
    pcm = (np.arange(8000 * 6) % 2000 - 1000).astype("<i2")
    state.feed(b"s" + pcm.tobytes())
    wins = state.windows()                   # hop 1 s, window 5 s: starts 0 and 1
    assert [w.start_s for w in wins] == [0.0, 1.0]
    np.testing.assert_allclose(wins[1].inputs["speech"].samples,
                               pcm[8000:48000].astype(np.float32) / 32768)


def test_a_long_stream_keeps_bounded_state():
    state = _state(hop_seconds=0.5)
    eeg = np.zeros((10, 4), np.float32)
    speech = np.zeros(800, np.float32)
    peak = 0
    for _ in range(6000):                    # 600 s in 0.1 s chunks
        state.feed(_eeg_chunk(eeg))
        state.feed(b"s" + speech.tobytes())
        state.windows()
        peak = max(peak, sum(len(c) for c in state.buffers["speech"].chunks))
    assert state.index == int((600 - 5) / 0.5) + 1
    assert peak <= 8000 * 5 + 800              # a window and a chunk, never more


@pytest.mark.parametrize("first, code, words", [
    ({"eeg": {"sfreq": 100, "ch_names": ["Fp1", "O1"]}}, 1007, "Fp2"),
    ({"speech": {"sample_rate": 8000}, "hop_seconds": 0.1}, 1008, "min_hop_seconds"),
    ({"speech": {"sample_rate": 8000, "dtype": "f8"}}, 1007, "float32 or int16"),
    ({"video": {}}, 1003, "/v1/predict"),
    ({"speech": {"sample_rate": 8000}, "window_seconds": 90}, 1008, "60 s"),
    ({"eeg": {"sfreq": 1e6, "ch_names": NAMES}}, 1008, "Hz"),
    ([1, 2], 1007, "JSON object"),
])
def test_first_messages_refused_with_a_code_and_the_reason(first, code, words):
    with pytest.raises(StreamError) as err:
        StreamState(first, INFO, StreamConfig())
    assert err.value.code == code and words in err.value.message


def test_chunks_refused_with_a_code_and_the_reason():
    cases = [(b"v\x00\x00\x00\x00", 1003, "'e' or 's'"),
             (b"e" + b"\x00" * 20, 1007, "16-byte samples (4 channels x float32)"),
             (_eeg_chunk(np.full((2, 4), np.inf)), 1007, "NaN/inf"),
             (_eeg_chunk(np.zeros((1100, 4))), 1008, "max_chunk_seconds")]
    for chunk, code, words in cases:
        with pytest.raises(StreamError) as err:
            _state().feed(chunk)
        assert err.value.code == code and words in err.value.message, err.value.message
    state = _state()
    state.feed(b"s" + np.zeros(8000 * 6, np.float32).tobytes())
    with pytest.raises(StreamError, match="speech is 12.0 s ahead"):
        state.feed(b"s" + np.zeros(8000 * 6, np.float32).tobytes())


def test_the_client_cuts_chunks_in_step_and_names_the_endpoint():
    eeg = EEGInput(np.arange(4 * 250, dtype=np.float32).reshape(4, 250), 100.0, NAMES)
    speech = SpeechInput(np.zeros(8000 * 3, np.int16), 8000)
    steps = list(chunks(eeg, speech, 0.3))
    assert [round(t, 6) for t, _ in steps][-2:] == [2.4, 2.5]      # the shorter one ends
    eeg_back = np.concatenate([np.frombuffer(m[1:], "<f4") for _, ms in steps for m in ms
                               if m[:1] == b"e"]).reshape(-1, 4)
    np.testing.assert_array_equal(eeg_back, eeg.data.T)
    assert first_message(eeg, speech, hop_seconds=2)["speech"] == {"sample_rate": 8000,
                                                                   "dtype": "float32"}
    assert ws_url("https://h:1/p/") == "wss://h:1/p/v1/stream"


# -- real WebSockets on uvicorn ---------------------------------------------------------------

@pytest.fixture(scope="module")
def server():
    from emoray.serving.app import LocalBackend

    backend = LocalBackend({"checkpoint": str(BUNDLE), "device": "cpu", "stream": {
        "first_message_timeout_s": 1.0, "idle_timeout_s": 5.0, "max_streams": 12}})
    with plain_server(backend) as url:
        yield {"url": url, "backend": backend}


@pytest.fixture(scope="module")
def signals(server):
    info = server["backend"].info()
    rng = np.random.default_rng(3)
    names = list(info["eeg"]["channels"])[::-1] + ["EOG"]            # any order, extras
    t = 7.5
    eeg = EEGInput(rng.normal(0, 20e-6, (len(names), int(250 * t))).astype(np.float32),
                   250.0, names)
    speech = SpeechInput(rng.uniform(-0.2, 0.2, int(16000 * t)).astype(np.float32), 16000)
    return eeg, speech


def test_each_window_answers_as_predict_answers_its_signal(server, signals):
    from emoray.serving.client import binary_request

    eeg, speech = signals
    got = asyncio.run(replay(server["url"], eeg, speech, hop_seconds=1.25, speed=0))
    assert got.ready["window_seconds"] == 5.0 and got.ready["modalities"] == ["eeg", "speech"]
    assert [a["start_s"] for a in got.answers] == [0.0, 1.25, 2.5]
    assert len(got.latencies_ms) == 3 and all(x > 0 for x in got.latencies_ms)
    for a in got.answers:
        e0, e1 = int(a["start_s"] * 250), int(a["end_s"] * 250)
        s0, s1 = int(a["start_s"] * 16000), int(a["end_s"] * 16000)
        files = binary_request(EEGInput(eeg.data[:, e0:e1], 250.0, eeg.ch_names),
                               SpeechInput(speech.samples[s0:s1], 16000))
        want = requests.post(server["url"] + "/v1/predict", files=files, timeout=60).json()
        assert a["label"] == want["label"] and a["n_segments"] == 1
        for k, p in want["probabilities"].items():
            assert abs(a["probabilities"][k] - p) < 1e-5, (k, a["probabilities"][k], p)
    assert server["backend"].stream_slots.open == 0


def test_predict_stream_replays_real_files_at_real_time(server, signals, tmp_path, capsys):
    from emoray.cli import main
    from emoray.io.audio import write_audio
    from emoray.io.eeg import write_eeg
    from emoray.types import EEG, Audio

    eeg, speech = signals
    write_eeg(tmp_path / "rec.edf", EEG(data=eeg.data[:, :int(6.2 * 250)].astype(np.float64),
                                        sfreq=250.0, ch_names=list(eeg.ch_names),
                                        source="t"))
    write_audio(tmp_path / "rec.wav", Audio(samples=speech.samples[:int(6.2 * 16000)],
                                            sample_rate=16000, source="t"))
    t0 = time.monotonic()
    assert main(["predict", "--stream", "--url", server["url"], "--hop-seconds", "0.5",
                 str(tmp_path / "rec.edf"), str(tmp_path / "rec.wav")]) == 0
    took = time.monotonic() - t0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[-1].startswith("3 window(s) over 6.2 s"), lines
    assert lines[0].startswith("[    0.0 -     5.0 s]") and "eeg " in lines[0]
    assert took >= 6.0                                  # paced at real time
    main(["predict", "--stream", "--json", "--speed", "0", "--url", server["url"],
          str(tmp_path / "rec.wav")])
    rows = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [r["modalities"] for r in rows] == [["speech"]] * 2


def test_fuzzed_streams_get_close_codes_with_reasons_and_the_server_streams_on(server,
                                                                                signals):
    eeg, speech = signals
    first = first_message(eeg, speech)
    cases = malformed_streams(first, b"e" + eeg.data[:, :25].T.tobytes(),
                              b"s" + speech.samples[:1600].tobytes(), None, 250.0, 16000.0,
                              len(eeg.ch_names), first_timeout=1.0)
    assert len(cases) >= 60
    failures = check_all(ws_url(server["url"]), cases, None)
    assert not failures, failures
    wait_for(lambda: server["backend"].stream_slots.open == 0, 10, "every slot freed")
    short = (EEGInput(eeg.data[:, :1300], 250.0, eeg.ch_names),
             SpeechInput(speech.samples[:83200], 16000))
    assert len(asyncio.run(replay(server["url"], *short, speed=0)).answers) == 1


def test_a_replica_holds_at_most_max_streams(server):
    url = ws_url(server["url"])
    first = json.dumps({"speech": {"sample_rate": 8000}})

    async def crowd():
        from websockets.asyncio.client import connect

        held = [await connect(url) for _ in range(12)]
        for ws in held:
            await ws.send(first)
            assert json.loads(await ws.recv())["type"] == "ready"
        code, reason, got = await run_case(url, [("text", first)], None)
        for ws in held:
            await ws.close()
        return code, reason, got

    code, reason, got = asyncio.run(crowd())
    assert code == 1013 and "max_streams" in reason and got[0]["error"]["status"] == 503
    wait_for(lambda: server["backend"].stream_slots.open == 0, 10, "every slot freed")
