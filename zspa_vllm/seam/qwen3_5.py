"""Prompt-aware pruning for vLLM's ``Qwen3_5ForConditionalGeneration`` and
``Qwen3_5MoeForConditionalGeneration`` (Qwen3.5): Qwen3-VL's vision tower and M-RoPE layout
(no deepstack) under a hybrid language model of Gated DeltaNet and full-attention layers.
Everything but the vLLM classes is ``qwen_vl``'s Qwen3-VL pipeline: pruning happens before
the language model, so its layer types do not matter. A module of its own so that only
Qwen3.5 deployments import vLLM's hybrid model code."""

from __future__ import annotations

from vllm.model_executor.models.qwen3_5 import (
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeForConditionalGeneration,
    Qwen3_5MoeProcessingInfo,
    Qwen3_5ProcessingInfo,
)
from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder,
    Qwen3VLMultiModalProcessor,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from zspa_vllm import families
from zspa_vllm.seam.qwen_vl import _PrunedQwen3VL, _QwenPruningProcessor

DENSE = families.get("Qwen3_5ForConditionalGeneration")
MOE = families.get("Qwen3_5MoeForConditionalGeneration")


class PruningQwen3_5Processor(_QwenPruningProcessor, Qwen3VLMultiModalProcessor):
    zspa_family = DENSE


class PruningQwen3_5MoeProcessor(_QwenPruningProcessor, Qwen3VLMultiModalProcessor):
    zspa_family = MOE


@MULTIMODAL_REGISTRY.register_processor(
    PruningQwen3_5Processor,
    info=Qwen3_5ProcessingInfo,
    dummy_inputs=Qwen3VLDummyInputsBuilder,
)
class PrunedQwen3_5ForConditionalGeneration(_PrunedQwen3VL, Qwen3_5ForConditionalGeneration):
    zspa_family = DENSE


@MULTIMODAL_REGISTRY.register_processor(
    PruningQwen3_5MoeProcessor,
    info=Qwen3_5MoeProcessingInfo,
    dummy_inputs=Qwen3VLDummyInputsBuilder,
)
class PrunedQwen3_5MoeForConditionalGeneration(_PrunedQwen3VL, Qwen3_5MoeForConditionalGeneration):
    zspa_family = MOE
