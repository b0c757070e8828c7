"""Prompt-aware pruning for vLLM's ``LlavaOnevisionForConditionalGeneration``.

Images are laid out as LLaVA-NeXT's (``seam/llava_next.py``): the base view, then the
unpadded anyres crops row by row, each row followed by the learned ``image_newline``;
OneVision first shrinks a crop grid larger than nine views by bilinear interpolation
(``anyres_max_9``), so its rows are already the shrunk ones. One budget per image over its
visual tokens, every newline row kept in its place. A video is its frames, each pooled 2 x 2,
in one run of ``<video>`` placeholders followed by one newline row: one budget per video
over all its frames (a frame with more to do with the prompt keeps more), the newline kept.
Positions are 1-D: kept tokens are compacted.
"""

from __future__ import annotations

import torch
from vllm.model_executor.models.llava_onevision import (
    LlavaOnevisionDummyInputsBuilder,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionMultiModalProcessor,
    LlavaOnevisionProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.parse import VideoProcessorItems

from zspa_vllm import families
from zspa_vllm.seam.llava import LlavaTokenCount
from zspa_vllm.seam.llava_next import image_newlines, newline_rows, tower_tokens
from zspa_vllm.seam.processor import PruningProcessorMixin
from zspa_vllm.seam.worker import PruningModelMixin

FAMILY = families.get("LlavaOnevisionForConditionalGeneration")
VIDEO_NEWLINES = 1  # vLLM's get_num_video_tokens: frames x pooled grid + 1


class PruningLlavaOnevisionProcessor(
    LlavaTokenCount, PruningProcessorMixin, LlavaOnevisionMultiModalProcessor
):
    zspa_family = FAMILY

    def _zspa_tokens_before(self, inputs, result) -> int:
        images = super()._zspa_tokens_before(inputs, result)
        n = len(result["mm_placeholders"].get("video", []))
        if not n:
            return images
        videos = inputs.mm_data_items.get_items("video", VideoProcessorItems)
        sizes = [(videos.get_frame_size(i), videos.get_num_frames(i)) for i in range(n)]
        return images + sum(
            self.info.get_num_video_tokens(
                image_width=size.width, image_height=size.height, num_frames=frames
            )
            for size, frames in sizes
        )

    def _zspa_fixed_slots(self, mm_items, modality: str, item_idx: int) -> int:
        if modality == "video":
            return VIDEO_NEWLINES
        return image_newlines(self.info, mm_items, item_idx, FAMILY.architecture)


@MULTIMODAL_REGISTRY.register_processor(
    PruningLlavaOnevisionProcessor,
    info=LlavaOnevisionProcessingInfo,
    dummy_inputs=LlavaOnevisionDummyInputsBuilder,
)
class PrunedLlavaOnevisionForConditionalGeneration(
    PruningModelMixin, LlavaOnevisionForConditionalGeneration
):
    zspa_family = FAMILY

    def _zspa_item_tokens(self, media, kwargs) -> list[int]:
        return tower_tokens(self.config, kwargs[media.pixels])

    def _zspa_fixed_rows(self, media, kwargs, chunk) -> list[torch.Tensor]:
        return newline_rows(self.image_newline, chunk)
