"""Security middleware: API key on every route but /health and /metrics; body size limit.

vLLM's own ``--api-key`` check guards only paths under /v1, /v2, /inference and
/cohere, which leaves /tokenize, /detokenize, /version and friends open. This one
guards every path except the two that probes and Prometheus scrape.
"""

from __future__ import annotations

import hashlib
import os
import secrets

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

OPEN_PATHS = frozenset({"/health", "/metrics"})
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024  # a few high-resolution base64 images


def error_response(status: int, err_type: str, message: str) -> JSONResponse:
    """OpenAI's error shape, as vLLM's own error responses use."""
    body = {"error": {"message": message, "type": err_type, "param": None, "code": status}}
    return JSONResponse(body, status_code=status)


def _path(scope: Scope) -> str:
    return scope["path"].removeprefix(scope.get("root_path", ""))


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._hashes: list[bytes] | None = None

    def _tokens(self, scope: Scope) -> list[bytes]:
        if self._hashes is None:
            # Same sources and precedence as vLLM: --api-key, else VLLM_API_KEY.
            args = scope["app"].state.args
            keys = [k for k in (args.api_key or [os.environ.get("VLLM_API_KEY")]) if k]
            self._hashes = [hashlib.sha256(k.encode()).digest() for k in keys]
        return self._hashes

    def _authorized(self, scope: Scope) -> bool:
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        digest = hashlib.sha256(token.encode()).digest()
        ok = False
        for expected in self._tokens(scope):
            ok |= secrets.compare_digest(digest, expected)  # no early exit: constant time
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] not in ("http", "websocket")
            or scope.get("method") == "OPTIONS"
            or _path(scope) in OPEN_PATHS
            or not self._tokens(scope)
            or self._authorized(scope)
        ):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        response = error_response(401, "AuthenticationError", "invalid or missing API key")
        await response(scope, receive, send)


class BodySizeLimitMiddleware:
    """Refuse request bodies over ``--max-request-body-bytes`` with 413, before parsing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = getattr(scope["app"].state.args, "max_request_body_bytes", DEFAULT_MAX_BODY_BYTES)
        too_large = error_response(
            413, "RequestTooLargeError", f"request body exceeds the limit of {limit} bytes"
        )
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await too_large(scope, receive, send)
            return
        # Chunked uploads carry no Content-Length: count while the app reads.
        received = 0
        refused = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit and not refused:
                    refused = True
                    if not started:
                        await too_large(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 is the response
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counting_receive, guarded_send)
