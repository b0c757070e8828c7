"""Prompt-aware pruning for vLLM's ``Gemma3ForConditionalGeneration`` (Gemma 3 4B/12B/27B).

Gemma 3 is LLaVA-like: a SigLIP tower whose patch grid is average-pooled into a fixed
``mm_tokens_per_image`` soft tokens (256 in the released models) per image, 1-D RoPE. What
is its own:

* the prompt: vLLM replaces each ``<start_of_image>`` with ``"\\n\\n<start_of_image>"``
  + N x ``<image_soft_token>`` + ``"<end_of_image>\\n\\n"``; pruning keeps the structure
  tokens and cuts the soft tokens (``seam/processor._pruned_details``), so the kept
  tokens take the first positions between the two markers (1-D: compacted);
* pan-and-scan (``do_pan_and_scan``): an image becomes the full view plus crops, each
  with its own markers and text between them; every view is one budget unit of
  ``mm_tokens_per_image`` tokens (``_zspa_units``), so each crop keeps
  ``keep_count(256, ratio)`` of its own tokens and no crop's slots hold another's.

Image-token attention: the released models let an image's soft tokens attend to each other
bidirectionally; vLLM does this on attention backends with ``supports_mm_prefix`` (CUDA
FlashAttention, Triton, FlexAttention) over each image's placeholder range, which after
pruning is exactly the kept tokens. vLLM's CPU attention is causal throughout, with or
without this plugin (README, "Gemma 3").
"""

from __future__ import annotations

from vllm.model_executor.models.gemma3_mm import (
    Gemma3DummyInputsBuilder,
    Gemma3ForConditionalGeneration,
    Gemma3MultiModalProcessor,
    Gemma3ProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from zspa_vllm import families
from zspa_vllm.seam.processor import ImageTokensFromInfo, PruningProcessorMixin
from zspa_vllm.seam.worker import PruningModelMixin, scalars

FAMILY = families.get("Gemma3ForConditionalGeneration")


class PruningGemma3Processor(ImageTokensFromInfo, PruningProcessorMixin, Gemma3MultiModalProcessor):
    zspa_family = FAMILY


@MULTIMODAL_REGISTRY.register_processor(
    PruningGemma3Processor,
    info=Gemma3ProcessingInfo,
    dummy_inputs=Gemma3DummyInputsBuilder,
)
class PrunedGemma3ForConditionalGeneration(PruningModelMixin, Gemma3ForConditionalGeneration):
    zspa_family = FAMILY

    def _zspa_views(self, media, kwargs) -> list[int]:
        """Views per image: the full image plus its pan-and-scan crops."""
        return [int(n) for n in scalars(kwargs[media.rows])]

    def _zspa_item_tokens(self, media, kwargs) -> list[int]:
        return [v * self.config.mm_tokens_per_image for v in self._zspa_views(media, kwargs)]

    def _zspa_units(self, media, kwargs, chunk) -> list[list[int]] | None:
        views = self._zspa_views(media, kwargs)
        if all(v == 1 for v in views):
            return None
        return [[self.config.mm_tokens_per_image] * v for v in views]
