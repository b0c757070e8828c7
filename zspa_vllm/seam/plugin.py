"""vLLM ``general_plugins`` entry point.

vLLM calls ``register()`` in every process it starts (API server, engine core, workers,
the model-inspection subprocess), possibly more than once: it must stay cheap and
idempotent, and it imports nothing heavy. Models are registered by ``"module:Class"``
string so vLLM imports them lazily, in the process that needs them.
"""

from __future__ import annotations

import logging

from zspa_vllm import envs
from zspa_vllm.seam import compat

logger = logging.getLogger(__name__)

# Architectures we replace: the built-in name maps to our subclass, so every
# checkpoint of that architecture prunes with no --hf-overrides needed.
MODELS = {
    "LlavaForConditionalGeneration": "zspa_vllm.seam.llava:PrunedLlavaForConditionalGeneration",
    "Qwen2VLForConditionalGeneration": (
        "zspa_vllm.seam.qwen_vl:PrunedQwen2VLForConditionalGeneration"
    ),
    "Qwen2_5_VLForConditionalGeneration": (
        "zspa_vllm.seam.qwen_vl:PrunedQwen2_5_VLForConditionalGeneration"
    ),
    "Qwen3VLForConditionalGeneration": (
        "zspa_vllm.seam.qwen_vl:PrunedQwen3VLForConditionalGeneration"
    ),
}


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
