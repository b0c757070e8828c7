"""Prompt-aware pruning for vLLM's ``LlavaForConditionalGeneration``.

API-server process: ``PruningLlavaProcessor`` (``seam/processor.py`` does the work:
options, placeholder counts, per-image fields, hashing, stats).

Worker (``PrunedLlavaForConditionalGeneration.embed_multimodal``): runs the vision tower
and projector as before, embeds the prompt ids with the LLM's own input-embedding table,
and returns exactly ``keep_count(N, ratio)`` rows per image, in original order.

LLaVA uses 1-D RoPE, so kept tokens simply occupy the contiguous placeholder positions.
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

from zspa_vllm.seam import selection_metrics
from zspa_vllm.seam.processor import PruningProcessorMixin
from zspa_vllm.seam.worker import ItemOptions, select_rows, warm_up


class PruningLlavaProcessor(PruningProcessorMixin, LlavaMultiModalProcessor):
    zspa_modalities = {"image": ("pixel_values", "image_embeds")}

    def _zspa_item_tokens(self) -> dict[str, int]:
        return {"image": self.info.get_hf_config().image_token_index}

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
class PrunedLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        selection_metrics.configure(vllm_config)

    def embed_multimodal(self, **kwargs: object):
        options = ItemOptions.pop(kwargs, "image")
        embeds = super().embed_multimodal(**kwargs)
        if options is None:  # no image in this batch asked for pruning
            warm_up(embeds)
            return embeds
        embeds = list(embeds)
        rows = select_rows(embeds, self.get_language_model().embed_input_ids, options)
        return tuple(e[r] for e, r in zip(embeds, rows, strict=True))
