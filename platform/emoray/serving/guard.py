"""What every endpoint of the model server shares, HTTP and stream alike: the API key,
the one error shape (``{"error": {"status", "field", "kind", "message"}}``, the framework's
own errors included), per-request step timings and the last check of an answer."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from emoray.errors import ConfigError, DataError

API_KEY_HEADER = "X-API-Key"


def printable(text: str | None) -> str | None:
    """``text`` safe to answer: lone surrogates (``"\\ud800"`` from a JSON key) escaped."""
    if text is None:
        return None
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def error(status: int, message: str, field: str | None = None,
          kind: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON error answer (every error the service gives has this shape)."""
    return JSONResponse({"error": {"status": status, "field": printable(field), "kind": kind,
                                   "message": printable(message)}}, status_code=status,
                        headers=headers)


class Refused(Exception):
    """A request refused before it reaches the model (status, message, field)."""

    def __init__(self, status: int, message: str, field: str | None = None,
                 kind: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field, self.kind = status, message, field, kind


class Timings:
    """How long each step of one request took, answered as a ``Server-Timing`` header
    (``read;dur=0.4, decode;dur=21.3, prepare;dur=55.0, eeg;dur=9.1, ...``, milliseconds;
    browsers' developer tools and ``curl -i`` show it)."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - t0) * 1000

    def header(self) -> str:
        return ", ".join(f"{name};dur={ms:.1f}" for name, ms in self.ms.items())


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def api_key_digest(env_name: str | None) -> str | None:
    """The sha256 of the key in environment variable ``env_name`` (None: auth off)."""
    import os

    if not env_name:
        return None
    key = os.environ.get(env_name, "")
    if not key:
        raise ConfigError(f"serve.api_key_env: environment variable {env_name} is unset or "
                          "empty; set it to the API key, or leave api_key_env unset for no auth")
    return key_digest(key)


def check_key(backend: Any, request: Request) -> None:
    digest = backend.api_key_digest
    if digest is None:
        return
    sent = request.headers.get(API_KEY_HEADER)
    if not sent or not hmac.compare_digest(key_digest(sent), digest):
        raise Refused(401, f"missing or wrong API key; send it in the {API_KEY_HEADER} header",
                      field=API_KEY_HEADER)


def refusal(err: Exception) -> JSONResponse:
    """The 4xx answer of a refused request."""
    if isinstance(err, Refused):
        return error(err.status, err.message, err.field, err.kind)
    if isinstance(err, DataError):
        status = 400 if err.field == "body" else 422
        return error(status, f"{err.field or 'input'}: {err.reason}", err.field, err.kind)
    return error(422, str(err), None, "config")


def check_answer(answer: dict[str, Any]) -> None:
    """The final guard: an answer holding NaN/inf (inputs the checks let through that the
    model cannot take) is a 422 naming the modalities, never a 500 at serialisation."""
    import math

    def finite(value: Any) -> bool:
        if isinstance(value, float):
            return math.isfinite(value)
        if isinstance(value, dict):
            return all(finite(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return all(finite(v) for v in value)
        return True

    if not finite(answer):
        mods = "+".join(answer.get("modalities") or []) or "input"
        raise Refused(422, f"the model's answer for {mods} is not finite: the signal is "
                      "outside what the model can take (check its units and scale)",
                      field=mods, kind="invalid_value")


_FRAMEWORK = {404: "no such endpoint; see /docs for the API (POST /v1/predict, GET "
                   "/v1/model, GET /v1/health, POST /v1/subjects/ID/calibration, WS "
                   "/v1/stream)",
              405: "method not allowed on this endpoint; see /docs"}


def install_errors(app: FastAPI) -> None:
    """Answer the framework's own errors (unknown path, wrong method, a bad path
    parameter, anything unexpected) in the service's ``{"error": ...}`` shape, in our
    words; the library's text only goes to the log."""
    import logging

    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    log = logging.getLogger("emoray.serving")

    async def http_error(request: Request, exc: HTTPException):
        status = exc.status_code
        message = _FRAMEWORK.get(status, f"HTTP {status}")
        return error(status, message, "path" if status in (404, 405) else None, "http",
                     headers=getattr(exc, "headers", None))

    async def invalid(request: Request, exc: RequestValidationError):
        log.info("request validation failed: %s", exc)
        return error(422, "the request's path or query does not match the API; see /docs",
                     "path", "layout")

    async def unexpected(request: Request, exc: Exception):
        log.exception("unexpected error answering %s", request.url.path)
        return error(500, "internal error; the server log has the details", None, "server")

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, unexpected)
