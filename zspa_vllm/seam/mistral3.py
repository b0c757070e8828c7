"""Prompt-aware pruning for vLLM's ``Mistral3ForConditionalGeneration`` (Mistral Small 3.1
and 3.2 in HF format: a Pixtral tower, a 2 x 2 patch merger, a Mistral language model).

An image keeps its aspect ratio: it becomes a grid of ``nrows`` x ``ncols`` tokens (32 x 32
pixels each), and vLLM writes it row by row, ``ncols`` ``[IMG]`` then ``[IMG_BREAK]``, the
last break replaced by ``[IMG_END]``. The break and end tokens are how the language model
reads the image's 2-D layout, so they all stay, and each row is one budget unit
(``seam/processor._pruned_details`` cuts each run of ``[IMG]``; ``_zspa_units`` says so
here): a row keeps ``keep_count(ncols, ratio)`` of its own tokens, chosen among them, and no
row's slots hold another row's tokens. Kept tokens are compacted within their row (1-D RoPE
in the language model; the tower's 2-D RoPE runs before pruning, unchanged).
"""

from __future__ import annotations

from vllm.model_executor.models.mistral3 import (
    Mistral3DummyInputsBuilder,
    Mistral3ForConditionalGeneration,
    Mistral3MultiModalProcessor,
    Mistral3ProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.parse import ImageProcessorItems
from vllm.multimodal.processing import ProcessorInputs

from zspa_vllm import config, families
from zspa_vllm.seam.processor import PruningProcessorMixin, strip_private
from zspa_vllm.seam.worker import PruningModelMixin

FAMILY = families.get("Mistral3ForConditionalGeneration")


class PruningMistral3Processor(PruningProcessorMixin, Mistral3MultiModalProcessor):
    zspa_family = FAMILY

    def _zspa_tokens_before(self, inputs: ProcessorInputs, result) -> int:
        images = inputs.mm_data_items.get_items("image", ImageProcessorItems)
        kwargs = strip_private(config.strip(inputs.hf_processor_mm_kwargs))
        encoder = self.info.get_vision_encoder_info(kwargs)
        total = 0
        for i in range(len(result["mm_placeholders"].get("image", []))):
            size = images.get_image_size(i)
            ncols, nrows = encoder.get_patch_grid_size(
                image_width=size.width, image_height=size.height
            )
            total += ncols * nrows
        return total


@MULTIMODAL_REGISTRY.register_processor(
    PruningMistral3Processor,
    info=Mistral3ProcessingInfo,
    dummy_inputs=Mistral3DummyInputsBuilder,
)
class PrunedMistral3ForConditionalGeneration(PruningModelMixin, Mistral3ForConditionalGeneration):
    zspa_family = FAMILY

    def _zspa_grid(self, media, kwargs) -> list[tuple[int, int]]:
        """(nrows, ncols) of each image: its (resized) pixels over the merged patch."""
        step = self.config.vision_config.patch_size * self.config.spatial_merge_size
        return [(p.shape[-2] // step, p.shape[-1] // step) for p in kwargs[media.pixels]]

    def _zspa_item_tokens(self, media, kwargs) -> list[int]:
        return [rows * cols for rows, cols in self._zspa_grid(media, kwargs)]

    def _zspa_units(self, media, kwargs, chunk) -> list[list[int]] | None:
        return [[cols] * rows for rows, cols in self._zspa_grid(media, kwargs)]
