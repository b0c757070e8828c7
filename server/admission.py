"""The admission hook: zspa-vllm's request fields reach the engine only through this.

``AdmissionMiddleware`` wraps the app's online renderer (``renderer.install``: the
``prune_*`` fields validated and merged into ``mm_processor_kwargs``, the operator's trust
gate kept, pruning counts claimed for usage and metrics, the media-URL policy) and adds the
fields to ``/openapi.json``. It is its own middleware, listed in ``cli.MIDDLEWARE`` and in
every ``vllm serve --middleware`` deployment, so that nothing else silently depends on it:

* without it, zspa-serve's other middlewares refuse to start (``require``), naming it;
* with none of ours at all (plain ``vllm serve`` with the plugin installed), the plugin
  refuses any request that carries ``prune_*`` fields with a 400 naming it
  (``zspa_vllm.seam.plugin``), instead of serving it unpruned.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zspa_server import openapi, renderer

NAME = f"{__name__}.AdmissionMiddleware"


class AdmissionMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("lifespan", "http") and "app" in scope:
            # vLLM's init_app_state has run before the server starts: the renderer exists.
            renderer.install(scope["app"].state)
            openapi.install(scope["app"])
        await self.app(scope, receive, send)


def require(scope: Scope, send: Send, who: str) -> Send:
    """A lifespan ``send`` that turns start-up complete into start-up failed, naming the
    missing middleware, when the app's renderer has no admission hook by then (every
    middleware's lifespan entry has run when the app reports start-up complete)."""

    async def checked(message: Message) -> None:
        if message["type"] == "lifespan.startup.complete" and not renderer.installed(
            scope["app"].state
        ):
            message = {
                "type": "lifespan.startup.failed",
                "message": f"zspa-vllm: {who} needs --middleware={NAME} (it admits the "
                "prune_* request fields; without it they would be ignored)",
            }
        await send(message)

    return checked
