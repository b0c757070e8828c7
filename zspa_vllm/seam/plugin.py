"""vLLM ``general_plugins`` entry point.

vLLM calls ``register()`` in every process it starts (API server, engine core, workers,
the model-inspection subprocess), possibly more than once: it must stay cheap and
idempotent, and it imports nothing heavy. Models are registered by ``"module:Class"``
string so vLLM imports them lazily, in the process that needs them.

In an API-server process (vLLM's online renderer is already imported there when plugins
load) it also guards the renderer: a request with ``prune_*`` fields that no admission
hook took (``zspa_server.admission``: plain ``vllm serve`` without our middleware) is
refused with a 400 that names the fix, never served unpruned.
"""

from __future__ import annotations

import functools
import logging
import sys

from zspa_vllm import envs, families
from zspa_vllm.option import PREFIX
from zspa_vllm.seam import compat

logger = logging.getLogger(__name__)

# Architectures we replace: the built-in name maps to our subclass, so every
# checkpoint of that architecture prunes with no --hf-overrides needed.
MODELS = {f.architecture: f.model for f in families.FAMILIES}


def register() -> None:
    if envs.plugin_disabled():
        logger.info("zspa-vllm: %s is set, not registering pruning models", envs.DISABLE)
        return
    # Before anything subclasses vLLM's internals: a vLLM that moved one fails here, by name
    # (about 0.2 s of source parsing, once per process).
    compat.require("model")
    from vllm import ModelRegistry

    for arch, target in MODELS.items():
        # Re-registering the same string is harmless, but skip it so repeated calls
        # leave vLLM's lru-cached model lookups untouched.
        current = ModelRegistry.models.get(arch)
        if getattr(current, "module_name", None) == target.split(":")[0]:
            continue
        ModelRegistry.register_model(arch, target)
    _guard_online_renderer()


ADMISSION = "zspa_server.admission.AdmissionMiddleware"
_RENDERER_MODULE = "vllm.renderers.online_renderer"


def _guard_online_renderer() -> None:
    module = sys.modules.get(_RENDERER_MODULE)  # never imported here: 1.4 s per process
    cls = getattr(module, "OnlineRenderer", None)
    if cls is None or getattr(cls, "_zspa_guarded", False):
        return
    for name in ("preprocess_chat", "preprocess_cmpl"):
        setattr(cls, name, _guarded(getattr(cls, name)))
    cls._zspa_guarded = True


def _guarded(method):
    @functools.wraps(method)
    async def guarded(self, request, *args, **kwargs):
        # An admitted renderer (zspa_server.renderer.install) wraps its instance methods and
        # has moved the fields into mm_processor_kwargs already.
        if not getattr(self, "_zspa_installed", False):
            refuse_unadmitted(request)
        return await method(self, request, *args, **kwargs)

    return guarded


def refuse_unadmitted(request) -> None:
    """400 for a request whose ``prune_*`` fields this server would otherwise ignore."""
    extra = getattr(request, "model_extra", None) or {}
    fields = sorted(k for k in extra if k.startswith(PREFIX))
    if not fields:
        return
    from vllm.exceptions import VLLMValidationError

    raise VLLMValidationError(
        f"{fields[0]}: this server does not admit zspa-vllm's request fields; run it with "
        f"zspa-serve, or add --middleware={ADMISSION} to vllm serve (or send the options in "
        "mm_processor_kwargs with --trust-request-mm-kwargs)",
        parameter=fields[0],
    )
