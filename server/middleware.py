"""ASGI middleware that adds pruning counts to ``usage`` (admission: ``admission.py``).

vLLM builds its ``usage`` objects deep inside its serving classes; rather than copy
those, this rewrites the response on its way out: the JSON body of a non-streaming
response, or each ``data:`` event of a stream (the final usage chunk with
``stream_options.include_usage``, and every chunk with ``continuous_usage_stats``).
Only 200 responses of the chat and completions routes are touched; errors pass as is.

It also hides one failure vLLM hands to clients: when the engine no longer holds an image
the API process believes it holds ("P0/P1 cache drift": the two caches evict in different
orders), vLLM drops the stale entries and answers that request with a retryable 500. Such a
request is replayed here once (its body is kept), so the client gets its answer; the replay
sends the image data again. Only a 500 (or a stream whose first event is an error) during
which the processor cache dropped entries is replayed; other errors pass as they are.

Registered through vLLM's own ``--middleware`` option, so every API-server process
(``--api-server-count > 1``) builds it into its app.
"""

from __future__ import annotations

import json

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zspa_server import admission, renderer, usage

USAGE_ROUTES = ("/v1/chat/completions", "/v1/completions")


class PruningUsageMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" and "app" in scope:
            # Counts come from the admission hook: without it this would report nothing.
            send = admission.require(scope, send, "PruningUsageMiddleware")
        path = scope.get("path", "").removeprefix(scope.get("root_path", ""))
        if scope["type"] != "http" or scope.get("method") != "POST" or path not in USAGE_ROUTES:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        for attempt in range(ATTEMPTS):
            holder = usage.RequestUsage()
            token = usage.current.set(holder)
            gate = _RetryGate(send, final=attempt == ATTEMPTS - 1)
            try:
                await self.app(scope, _replay(body, receive), _UsageRewriter(gate, holder))
            finally:
                usage.current.reset(token)
            if not gate.retry:
                return


# One replay: drift drops every stale entry of the request, so the second try sends all data.
ATTEMPTS = 2


async def _read_body(receive: Receive) -> bytes:
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":  # the client left before sending it all
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The kept body first; after that the real channel (vLLM watches it for disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class _RetryGate:
    """A ``send`` that holds a response back until it is known not to be a drift failure.

    A 500, or a stream whose first event is an error, while the processor cache dropped
    entries (``renderer.invalidations()`` moved) sets ``retry`` and is swallowed; anything
    else is passed on unchanged. The last attempt passes everything.
    """

    def __init__(self, send: Send, final: bool) -> None:
        self._send, self._final = send, final
        self._before = renderer.invalidations()
        self._held: list[Message] = []
        self._decided = final
        self.retry = False

    def _drifted(self) -> bool:
        return renderer.invalidations() != self._before

    async def __call__(self, message: Message) -> None:
        if self.retry:
            return
        if self._decided:
            await self._send(message)
            return
        if message["type"] == "http.response.start":
            if message["status"] == 500 and self._drifted():
                self.retry = True
                return
            content_type = dict(message.get("headers", [])).get(b"content-type", b"")
            if message["status"] == 200 and content_type.startswith(b"text/event-stream"):
                self._held.append(message)  # decide on the first event
                return
            await self._flush(message)
            return
        first_event = message["type"] == "http.response.body" and self._held
        if first_event and b'"error"' in message.get("body", b"") and self._drifted():
            self.retry = True
            return
        await self._flush(message)

    async def _flush(self, message: Message) -> None:
        self._decided = True
        for held in self._held:
            await self._send(held)
        self._held = []
        await self._send(message)


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
