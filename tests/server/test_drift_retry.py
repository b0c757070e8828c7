"""The replay of requests that failed on P0/P1 cache drift (server/middleware.py).

The drift itself (the engine evicted an image the API process still lists) cannot be
triggered on demand in a real engine (the soak benchmark met it once in 6,000 requests with
a small cache), so the app behind the middleware here is a stand-in that answers as vLLM
does: it drops cache entries (what vLLM's output handler does on drift) and answers 500, or
streams an error event. Everything else (middleware, replay, usage rewriting) is real.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from zspa_server import renderer
from zspa_server.middleware import PruningUsageMiddleware

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


class FakeVllm:
    """Answers each call from ``script``: (status, drift?, stream?)."""

    def __init__(self, *script: tuple[int, bool, bool]) -> None:
        self.script, self.bodies = list(script), []

    async def __call__(self, scope, receive, send) -> None:
        message = await receive()
        self.bodies.append(message["body"])
        status, drift, stream = self.script.pop(0)
        if drift:
            renderer._invalidations += 1
        if stream:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})  # fmt: skip
            event = {"error": {"message": "internal"}} if status >= 500 else {"usage": {}}
            await send({"type": "http.response.body", "body": f"data: {json.dumps(event)}\n\n"
                        .encode(), "more_body": True})  # fmt: skip
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
            return
        payload = (
            {"error": {"message": "Internal server error"}}
            if status >= 400
            else {"usage": {"prompt_tokens": 3}}
        )
        body = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})


def post(app) -> httpx.Response:
    async def go():
        transport = httpx.ASGITransport(app=PruningUsageMiddleware(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post("/v1/chat/completions", json=BODY)

    return asyncio.run(go())


def test_a_drift_500_is_replayed_once_with_the_same_body():
    app = FakeVllm((500, True, False), (200, False, False))
    response = post(app)
    assert response.status_code == 200 and "visual_tokens_after" in response.json()["usage"]
    assert len(app.bodies) == 2 and app.bodies[0] == app.bodies[1]
    assert json.loads(app.bodies[0]) == BODY


def test_a_drift_error_as_the_first_stream_event_is_replayed():
    app = FakeVllm((500, True, True), (200, False, True))
    response = post(app)
    assert response.status_code == 200 and '"error"' not in response.text
    assert len(app.bodies) == 2


@pytest.mark.parametrize(
    "script",
    [
        [(500, False, False)],  # a 500 without drift: not ours to hide
        [(400, True, False)],  # a refused request (ours drop entries too): a client error
        [(500, True, False), (500, True, False)],  # once only: the second answer goes out
        [(200, True, True)],  # another request's drift during a healthy stream
    ],
)
def test_other_answers_pass_unchanged(script):
    app = FakeVllm(*script)
    response = post(app)
    assert response.status_code == (200 if script[-1][0] == 200 else script[-1][0])
    assert len(app.bodies) == len(script) and not app.script
