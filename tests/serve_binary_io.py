"""What the Serve API's binary-body tests share (:mod:`test_serve_binary`,
:mod:`test_serve_binary_malformed`): the signals' constants, and a real
``multipart/form-data`` body encoded by ``requests`` and taken apart by the server's own
path (:func:`emoray.serving.api.decode_request`: body cap, Starlette's multipart parser,
the decoders), refusals becoming the HTTP answer the server sends
(:func:`emoray.serving.api.refusal`).
"""

from __future__ import annotations

import asyncio
import io
import json

import numpy as np
import requests
from starlette.requests import Request

from emoray.config import ServeConfig
from emoray.errors import DataError
from emoray.serving import api

CHANNELS = ["Fp1", "Fp2", "Cz", "Pz"]
SFREQ, RATE, FPS = 128.0, 8000, 5.0
CAP_MB = 1.0


class _Backend:
    """What :func:`api.decode_request` reads of a backend: the settings, auth off."""

    def __init__(self, **settings):
        self.settings = ServeConfig(max_body_mb=CAP_MB, **settings)
        self.api_key_digest = None


def _request(prepared: requests.PreparedRequest) -> tuple[Request, bytes]:
    body = prepared.body if isinstance(prepared.body, bytes) else \
        (prepared.body or "").encode()
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    headers = [(k.lower().encode("latin-1"), v.encode("latin-1"))
               for k, v in prepared.headers.items()]
    scope = {"type": "http", "method": "POST", "path": "/v1/predict", "query_string": b"",
             "headers": headers}
    return Request(scope, receive), body


def _prepare(files=None, json_body=None, data=None) -> requests.PreparedRequest:
    return requests.Request("POST", "http://emoray.test/v1/predict", files=files,
                            json=json_body, data=data).prepare()


def post(files=None, json_body=None, data=None, **settings) -> tuple[int, dict]:
    """The server's answer to a body: ``(200, inputs)`` or ``(status, error JSON)``."""
    request, _ = _request(_prepare(files, json_body, data))

    async def run():
        try:
            return 200, await api.decode_request(_Backend(**settings), request)
        except (api.Refused, DataError) as err:
            answer = api.refusal(err)
            return answer.status_code, json.loads(answer.body)

    return asyncio.run(run())


def parts_of(files) -> tuple[list, dict]:
    """A real multipart body, parsed by the server's parser into decoder arguments."""
    request, body = _request(_prepare(files))
    return asyncio.run(api._parse_multipart(request, body))


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def form_field(name: str, value) -> tuple:
    return (name, (None, value if isinstance(value, str) else json.dumps(value)))

