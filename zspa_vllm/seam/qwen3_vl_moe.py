"""Prompt-aware pruning for vLLM's ``Qwen3VLMoeForConditionalGeneration`` (Qwen3-VL-30B-A3B,
235B-A22B): the dense Qwen3-VL's vision side and M-RoPE layout under a mixture-of-experts
language model, so everything but the two vLLM classes is ``qwen_vl``'s. A module of its
own so that only MoE deployments import vLLM's MoE model code."""

from __future__ import annotations

from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder,
    Qwen3VLMultiModalProcessor,
)
from vllm.model_executor.models.qwen3_vl_moe import (
    Qwen3VLMoeForConditionalGeneration,
    Qwen3VLMoeProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from zspa_vllm import families
from zspa_vllm.seam.qwen_vl import _PrunedQwen3VL, _QwenPruningProcessor

FAMILY = families.get("Qwen3VLMoeForConditionalGeneration")


class PruningQwen3VLMoeProcessor(_QwenPruningProcessor, Qwen3VLMultiModalProcessor):
    zspa_family = FAMILY


@MULTIMODAL_REGISTRY.register_processor(
    PruningQwen3VLMoeProcessor,
    info=Qwen3VLMoeProcessingInfo,
    dummy_inputs=Qwen3VLDummyInputsBuilder,
)
class PrunedQwen3VLMoeForConditionalGeneration(_PrunedQwen3VL, Qwen3VLMoeForConditionalGeneration):
    zspa_family = FAMILY
