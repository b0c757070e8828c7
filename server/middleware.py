"""ASGI middleware that installs the renderer hook and adds pruning counts to ``usage``.

vLLM builds its ``usage`` objects deep inside its serving classes; rather than copy
those, this rewrites the response on its way out: the JSON body of a non-streaming
response, or each ``data:`` event of a stream (the final usage chunk with
``stream_options.include_usage``, and every chunk with ``continuous_usage_stats``).
Only 200 responses of the chat and completions routes are touched; errors pass as is.

Registered through vLLM's own ``--middleware`` option, so every API-server process
(``--api-server-count > 1``) builds it into its app.
"""

from __future__ import annotations

import json

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import renderer, usage

USAGE_ROUTES = ("/v1/chat/completions", "/v1/completions")


class PruningUsageMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("lifespan", "http") and "app" in scope:
            # init_app_state has run before the server starts: the renderer exists.
            renderer.install(scope["app"].state)
        path = scope.get("path", "").removeprefix(scope.get("root_path", ""))
        if scope["type"] != "http" or scope.get("method") != "POST" or path not in USAGE_ROUTES:
            await self.app(scope, receive, send)
            return
        holder = usage.RequestUsage()
        token = usage.current.set(holder)
        try:
            await self.app(scope, receive, _UsageRewriter(send, holder))
        finally:
            usage.current.reset(token)


class _UsageRewriter:
    """A ``send`` that adds the request's pruning fields to every ``usage`` object."""

    def __init__(self, send: Send, holder: usage.RequestUsage) -> None:
        self._send = send
        self._holder = holder
        self._start: Message | None = None
        self._mode = "pass"  # "json": buffer whole body; "sse": rewrite event by event
        self._buffer = b""

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            content_type = dict(message.get("headers", [])).get(b"content-type", b"")
            if message["status"] == 200 and content_type.startswith(b"application/json"):
                self._mode, self._start = "json", message
                return  # headers wait for the rewritten body (Content-Length changes)
            if message["status"] == 200 and content_type.startswith(b"text/event-stream"):
                self._mode = "sse"
            await self._send(message)
            return
        if message["type"] != "http.response.body" or self._mode == "pass":
            await self._send(message)
            return
        self._buffer += message.get("body", b"")
        more = message.get("more_body", False)
        if self._mode == "json":
            if more:
                return
            body = self._rewrite_json(self._buffer)
            assert self._start is not None
            headers = MutableHeaders(scope=self._start)
            headers["content-length"] = str(len(body))
            await self._send(self._start)
            await self._send({"type": "http.response.body", "body": body})
            return
        # SSE: events end with a blank line; hold back an incomplete tail.
        complete, sep, self._buffer = self._buffer.rpartition(b"\n\n")
        events = complete.split(b"\n\n") if sep else []
        out = b"".join(self._rewrite_event(e) + b"\n\n" for e in events)
        if not more:
            out, self._buffer = out + self._buffer, b""
        if out or not more:
            await self._send({"type": "http.response.body", "body": out, "more_body": more})

    def _add_usage(self, payload: object) -> bool:
        if isinstance(payload, dict) and isinstance(payload.get("usage"), dict):
            payload["usage"].update(self._holder.as_usage_fields())
            return True
        return False

    def _rewrite_json(self, body: bytes) -> bytes:
        try:
            payload = json.loads(body)
        except ValueError:
            return body
        return json.dumps(payload).encode() if self._add_usage(payload) else body

    def _rewrite_event(self, event: bytes) -> bytes:
        prefix = b"data: "
        if not event.startswith(prefix) or b'"usage"' not in event:
            return event
        try:
            payload = json.loads(event[len(prefix) :])
        except ValueError:
            return event  # e.g. "data: [DONE]"
        return prefix + json.dumps(payload).encode() if self._add_usage(payload) else event
