"""Every error response in OpenAI's format, and a 400 (not a 500) for a malformed body.

Found by fuzzing the server's OpenAPI schema (tests/server/test_fuzz.py); stock vLLM 0.32
does the same:

* Starlette's and FastAPI's own errors (unknown route 404, wrong method 405, a body that
  is not UTF-8 JSON) reach clients as ``{"detail": "..."}``, which OpenAI clients do not
  parse. They are rewritten into ``{"error": {"message", "type", "param", "code"}}``, the
  shape vLLM's own errors have.
* Some of vLLM's request-model validators assume a field's type before pydantic checked it
  (e.g. ``"structured_outputs": []`` raised ``AttributeError: 'list' object has no
  attribute 'get'``), and pydantic passes anything but ``ValueError`` through, so the
  request got a 500 naming nothing. An exception raised while FastAPI validates the request
  body is the body's fault: it becomes a 400 naming the validator. Any other exception
  still propagates (a server bug stays a 500).
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zspa_server.security import error_response

logger = logging.getLogger(__name__)

# FastAPI's function that validates the request body against the route's pydantic model.
BODY_VALIDATION_FRAME = ("fastapi/dependencies/utils.py", "request_body_to_args")


class OpenAIErrorMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rewriter = _ErrorRewriter(send)
        try:
            await self.app(scope, receive, rewriter)
        except Exception as exc:
            validator = _body_validator(exc)
            if rewriter.started or validator is None:
                raise
            logger.info("malformed request body (%s in %s): %s", type(exc).__name__, validator, exc)
            message = (
                f"the request body does not match this route's schema: {type(exc).__name__}: "
                f"{exc} (raised by vLLM's request validator {validator})"
            )
            await error_response(400, "BadRequestError", message)(scope, receive, send)


def _body_validator(exc: BaseException) -> str | None:
    """If ``exc`` was raised validating the request body: the innermost named function of
    its traceback (the validator, not a generator expression inside it); else None."""
    tb, in_body, innermost = exc.__traceback__, False, None
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename.endswith(BODY_VALIDATION_FRAME[0]) and (
            code.co_name == BODY_VALIDATION_FRAME[1]
        ):
            in_body = True
        if in_body and not code.co_name.startswith("<"):
            innermost = code.co_qualname
        tb = tb.tb_next
    return innermost if in_body else None


class _ErrorRewriter:
    """Passes every response through, except a JSON error body without OpenAI's ``error``."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self._held: Message | None = None  # the start message of an error being rewritten
        self._chunks: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            content_type = MutableHeaders(raw=message["headers"]).get("content-type", "")
            if message["status"] >= 400 and content_type.startswith("application/json"):
                self._held = message
                return
        elif message["type"] == "http.response.body" and self._held is not None:
            self._chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            await self._flush()
            return
        await self._send(message)

    async def _flush(self) -> None:
        start, body = self._held, b"".join(self._chunks)
        assert start is not None
        rewritten = _openai_error(start["status"], body)
        if rewritten is not None:
            body = rewritten
            headers = MutableHeaders(raw=start["headers"])
            headers["content-length"] = str(len(body))
        await self._send(start)
        await self._send({"type": "http.response.body", "body": body})


def _openai_error(status: int, body: bytes) -> bytes | None:
    """FastAPI's ``{"detail": ...}`` as OpenAI's error object; None if nothing to rewrite."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    if not isinstance(payload, dict) or "error" in payload or "detail" not in payload:
        return None
    detail = payload["detail"]
    message = detail if isinstance(detail, str) else json.dumps(detail)
    try:
        err_type = HTTPStatus(status).phrase
    except ValueError:
        err_type = "Error"
    error = {"message": message, "type": err_type, "param": None, "code": status}
    return json.dumps({"error": error}).encode()
