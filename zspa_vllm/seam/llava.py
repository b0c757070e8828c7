"""Prompt-aware pruning for vLLM's ``LlavaForConditionalGeneration``.

API-server process: ``PruningLlavaProcessor`` (``seam/processor.py`` does the work:
options, placeholder counts, per-image fields, hashing, stats).

Worker: ``seam/worker.PruningModelMixin`` (the family-neutral pipeline): the vision tower
and projector in encoder-budget sub-batches, the prompt ids embedded with the LLM's own
input-embedding table, exactly ``keep_count(N, ratio)`` rows per image in original order.

LLaVA uses 1-D RoPE, so kept tokens simply occupy the contiguous placeholder positions.
What is LLaVA's own: the unpruned count per image (one fixed patch grid per tower).
"""

from __future__ import annotations

from vllm.model_executor.models.llava import (
    LlavaDummyInputsBuilder,
    LlavaForConditionalGeneration,
    LlavaMultiModalProcessor,
    LlavaProcessingInfo,
    _build_llava_or_pixtral_hf_info,
    _build_llava_or_pixtral_hf_processor,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.parse import ImageEmbeddingItems, ImageProcessorItems
from vllm.multimodal.processing import ProcessorInputs

from zspa_vllm import families
from zspa_vllm.seam.processor import PruningProcessorMixin
from zspa_vllm.seam.worker import PruningModelMixin

FAMILY = families.get("LlavaForConditionalGeneration")


class LlavaTokenCount:
    """``_zspa_tokens_before`` of the LLaVA processors (LLaVA, LLaVA-NeXT): the stock count
    of every image, from its size (or its embedding rows)."""

    def _zspa_tokens_before(self, inputs: ProcessorInputs, result) -> int:
        images = inputs.mm_data_items.get("image")
        n = len(result["mm_placeholders"].get("image", []))
        return sum(self._num_visual_tokens(images, i) for i in range(n))

    def _num_visual_tokens(self, images, item_idx: int) -> int:
        """Unpruned token count of one image, as the stock processor computes it."""
        if isinstance(images, ImageEmbeddingItems):
            return images.get_feature_size(item_idx)
        assert isinstance(images, ImageProcessorItems)
        size = images.get_image_size(item_idx)
        return self.info.get_num_image_tokens(image_width=size.width, image_height=size.height)


class PruningLlavaProcessor(LlavaTokenCount, PruningProcessorMixin, LlavaMultiModalProcessor):
    zspa_family = FAMILY


def _build_processor(info, dummy_inputs):
    if isinstance(info, LlavaProcessingInfo):
        return PruningLlavaProcessor(info, dummy_inputs)
    # Pixtral-HF towers (variable patch grids) are not supported yet: stock processing.
    return _build_llava_or_pixtral_hf_processor(info, dummy_inputs)


@MULTIMODAL_REGISTRY.register_processor(
    _build_processor,
    info=_build_llava_or_pixtral_hf_info,
    dummy_inputs=LlavaDummyInputsBuilder,
)
class PrunedLlavaForConditionalGeneration(PruningModelMixin, LlavaForConditionalGeneration):
    zspa_family = FAMILY

    def _zspa_item_tokens(self, media, kwargs) -> list[int]:
        # For the encoder-budget split: every image has the tower's full patch grid
        # (LLaVA resizes to it); "full" feature selection keeps CLIP's CLS token too.
        vision = self.config.vision_config
        n = (vision.image_size // vision.patch_size) ** 2
        if self.config.vision_feature_select_strategy == "full":
            n += 1
        return [n] * len(kwargs[media.pixels])
