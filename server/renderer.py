"""Pruning options into vLLM's online renderer, without opening the trust gate.

Every OpenAI route that renders prompts (chat, completions, responses, ...) goes
through ``OnlineRenderer.preprocess_chat`` or ``preprocess_cmpl``, which first check
the request's ``mm_processor_kwargs`` against ``--trust-request-mm-kwargs`` and then
pass them on to the multimodal processor. We wrap both methods on the app's renderer
instance:

1. the client's own ``mm_processor_kwargs`` / ``media_io_kwargs`` get vLLM's check,
   with the operator's flag (refused by default, exactly as in ``vllm serve``);
2. the top-level ``prune_*`` fields are validated (``options.parse``) and merged in;
   vLLM's own check then runs with trust on, as these keys are now ours, not the client's;
3. once rendered, each prompt's pruning counts are claimed from the processor's stats
   and added to the request's ``RequestUsage`` and to the Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Any

import aiohttp
from vllm.entrypoints.generate.base.protocol import validate_request_mm_kwargs
from vllm.exceptions import VLLMValidationError

from zspa_server import media_policy, metrics, options, usage
from zspa_vllm import config, envs, stats
from zspa_vllm.seam import compat, kv_size, plugin

_INSTALLED = "_zspa_installed"
_inbox = usage.StatsInbox()
_listening = False  # one stats listener per process, however many renderers


def installed(state: Any) -> bool:
    """Whether ``state``'s online renderer has the admission hook."""
    return bool(getattr(getattr(state, "online_renderer", None), _INSTALLED, False))


def install(state: Any) -> None:
    """Wrap ``state.online_renderer`` once (idempotent; one per API-server process)."""
    global _listening
    compat.require("server")  # also for `vllm serve --middleware ...` deployments
    renderer = getattr(state, "online_renderer", None)
    if renderer is None or getattr(renderer, _INSTALLED, False):
        return
    if not _listening:
        stats.add_listener(_inbox.put)
        from vllm.connections import global_http_connection

        # Media URLs: refuse non-public addresses unless the operator opened them.
        args = state.args
        policy = media_policy.MediaPolicy(
            getattr(args, "allowed_media_domains", None) or (),
            getattr(args, "allow_private_media_urls", False),
        )
        media_policy.install(global_http_connection, policy)
        _listening = True
    operator_trust = bool(state.args.trust_request_mm_kwargs)
    refusal = _pruning_refusal(state)
    model_name = metrics.model_name(state.args)
    chat, cmpl = renderer.preprocess_chat, renderer.preprocess_cmpl
    vllm_config = getattr(state, "vllm_config", None)
    max_model_len = vllm_config.model_config.max_model_len if vllm_config else None
    layout = kv_size.from_vllm(vllm_config) if vllm_config else None
    kv_bytes = layout.bytes_per_token() if layout else None
    cache = getattr(getattr(renderer, "renderer", None), "mm_processor_cache", None)
    _count_invalidations(cache)

    @functools.wraps(chat)
    async def preprocess_chat(request, *args, **kwargs):
        _admit(request, operator_trust, refusal)
        with _media_errors_are_client_errors(), _truncation_errors_are_client_errors(request):
            conversation, engine_inputs = await chat(request, *args, **kwargs)
        _account(engine_inputs, model_name, kv_bytes)
        _forget_unsendable(engine_inputs, max_model_len, cache)
        return conversation, engine_inputs

    @functools.wraps(cmpl)
    async def preprocess_cmpl(request, *args, **kwargs):
        _admit(request, operator_trust, refusal)
        with _media_errors_are_client_errors(), _truncation_errors_are_client_errors(request):
            engine_inputs = await cmpl(request, *args, **kwargs)
        _account(engine_inputs, model_name, kv_bytes)
        _forget_unsendable(engine_inputs, max_model_len, cache)
        return engine_inputs

    renderer.preprocess_chat = preprocess_chat
    renderer.preprocess_cmpl = preprocess_cmpl
    # Client kwargs were checked in _admit with the operator's flag; what reaches vLLM's
    # own check from here on is the client's (already admitted) plus ours.
    renderer.trust_request_mm_kwargs = True
    setattr(renderer, _INSTALLED, True)


@contextlib.contextmanager
def _media_errors_are_client_errors():
    """vLLM reports an image URL it may not or cannot load as a 500; it is the client's."""
    try:
        yield
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise VLLMValidationError(f"could not fetch media: {exc}", parameter="messages") from None
    except RuntimeError as exc:
        if "--allowed-local-media-path" not in str(exc):  # MediaConnector's local-file refusal
            raise
        raise VLLMValidationError(str(exc), parameter="messages") from None


# vLLM's assertion when an item has no placeholder left in the prompt to expand.
_NO_PLACEHOLDER = "Failed to apply prompt replacement for "


@contextlib.contextmanager
def _truncation_errors_are_client_errors(request: Any):
    """``truncate_prompt_tokens`` is applied before the image placeholders expand; when it cuts
    an image's placeholder token off the prompt, vLLM 0.32 fails an assertion (a 500, found by
    fuzzing; it refuses with a 400 only a cut through an expanded item). That request asked for
    the cut: a 400 naming the field. Without truncation the assertion stays a 500 (a bug)."""
    try:
        yield
    except AssertionError as exc:
        limit = getattr(request, "truncate_prompt_tokens", None)
        if limit is None or not str(exc).startswith(_NO_PLACEHOLDER):
            raise
        item = str(exc).removeprefix(_NO_PLACEHOLDER)
        raise VLLMValidationError(
            f"truncate_prompt_tokens={limit} cuts the placeholder of {item} off the prompt; "
            "raise it, truncate from the other side, or omit it",
            parameter="truncate_prompt_tokens",
        ) from None


def _pruning_refusal(state: Any) -> str | None:
    """Why this server cannot prune (None: it can): a ratio > 0 must not be silently ignored."""
    if envs.plugin_disabled():
        return f"pruning is off on this server ({envs.DISABLE} is set)"
    vllm_config = getattr(state, "vllm_config", None)
    archs = vllm_config.model_config.architectures if vllm_config is not None else None
    if archs and not set(archs) & set(plugin.MODELS):
        return (
            f"this server's model ({', '.join(archs)}) cannot be pruned; zspa-vllm prunes "
            f"{', '.join(sorted(plugin.MODELS))}"
        )
    return None


def _admit(request: Any, operator_trust: bool, refusal: str | None = None) -> None:
    client_kwargs = getattr(request, "mm_processor_kwargs", None)
    validate_request_mm_kwargs(
        mm_processor_kwargs=client_kwargs,
        media_io_kwargs=getattr(request, "media_io_kwargs", None),
        trust_request_mm_kwargs=operator_trust,
    )
    try:
        fields = options.parse(getattr(request, "model_extra", None))
    except options.PruneFieldError as exc:
        raise VLLMValidationError(str(exc), parameter=exc.field) from None
    if refusal and fields.get(config.RATIO_KEY, 0.0) > 0.0:
        raise VLLMValidationError(
            f"{config.RATIO_KEY} must be 0 or omitted: {refusal}", parameter=config.RATIO_KEY
        )
    if fields:
        request.mm_processor_kwargs = {**(client_kwargs or {}), **fields}


def _account(engine_inputs, model_name: str, kv_bytes_per_token: int | None) -> None:
    # No holder outside an HTTP request we track (e.g. /v1/responses): metrics only.
    target = usage.current.get() or usage.RequestUsage()
    for engine_input in engine_inputs:
        ids = engine_input.get("prompt_token_ids") if isinstance(engine_input, dict) else None
        if ids is not None and (s := _inbox.claim(ids)) is not None:
            target.add(s, kv_bytes_per_token)
            metrics.record(model_name, s, kv_bytes_per_token)


def _forget_unsendable(engine_inputs, max_model_len: int | None, cache) -> None:
    """Unmark the media of prompts vLLM will refuse after rendering.

    vLLM's processor cache in this process records an item as held by the engine as soon as
    the item is processed, and later requests with the same item then send only its hash.
    A prompt longer than the context is refused after rendering (HTTP 400), so its items
    never reach the engine, and the next request with the same image got a 500 ("P0/P1
    cache drift") in stock vLLM. Dropping those records makes that request send the data.
    Dropping a record the engine does hold only costs one resend.
    """
    if cache is None or max_model_len is None:
        return
    for engine_input in engine_inputs:
        if not isinstance(engine_input, dict):
            continue
        if len(engine_input.get("prompt_token_ids") or ()) <= max_model_len:
            continue
        for hashes in (engine_input.get("mm_hashes") or {}).values():
            for mm_hash in hashes:
                cache.invalidate(mm_hash)


_invalidations = 0


def invalidations() -> int:
    """How many processor-cache entries this process has dropped so far. vLLM drops them
    when the engine reports P0/P1 cache drift (and answers that request with a retryable
    500); the middleware retries a request that failed while this count moved."""
    return _invalidations


def _count_invalidations(cache) -> None:
    if cache is None or getattr(cache, "_zspa_counted", False):
        return
    original = cache.invalidate

    def invalidate(mm_hash: str) -> None:
        global _invalidations
        _invalidations += 1
        original(mm_hash)

    cache.invalidate = invalidate  # the instance attribute wins over the method
    cache._zspa_counted = True
