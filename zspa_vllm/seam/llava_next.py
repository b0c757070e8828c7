"""Prompt-aware pruning for vLLM's ``LlavaNextForConditionalGeneration`` (LLaVA-1.6).

An image is the base view (the tower's fixed grid, 576 tokens for 336 px) plus anyres crops,
unpadded to the image's aspect ratio and laid out row by row, each row followed by the
learned ``image_newline`` vector; vLLM gives all of them ``<image>`` placeholders. The budget
is one per image over its visual tokens (base view and crops together): ``keep_count(N, ratio)``
with N not counting the newline rows. The newline rows are structure, as ``[IMG_BREAK]`` is
for Pixtral: they all stay, in their places, so kept tokens are compacted around them (1-D
RoPE), and the prompt keeps ``keep_count(N, ratio) + newlines`` placeholders.
"""

from __future__ import annotations

import torch
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape
from vllm.model_executor.models.llava import LlavaDummyInputsBuilder
from vllm.model_executor.models.llava_next import (
    LlavaNextForConditionalGeneration,
    LlavaNextMultiModalProcessor,
    LlavaNextProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.parse import ImageEmbeddingItems, ImageProcessorItems

from zspa_vllm import config, families
from zspa_vllm.seam.llava import LlavaTokenCount
from zspa_vllm.seam.processor import PruningProcessorMixin
from zspa_vllm.seam.worker import PruningModelMixin

FAMILY = families.get("LlavaNextForConditionalGeneration")


class PruningLlavaNextProcessor(
    LlavaTokenCount, PruningProcessorMixin, LlavaNextMultiModalProcessor
):
    zspa_family = FAMILY

    def _zspa_fixed_slots(self, mm_items, modality: str, item_idx: int) -> int:
        return image_newlines(self.info, mm_items, item_idx, FAMILY.architecture)


def image_newlines(info, mm_items, item_idx: int, architecture: str) -> int:
    """The ``image_newline`` rows of an image: one per row of its unpadded crop grid, as
    the stock processing info counts them (LLaVA-OneVision's also after its anyres-max
    shrink).

    Raises:
        ValueError: for precomputed image embeddings (``--enable-mm-embeds``): their newline
            rows are only found by comparing with the learned vector, which the API-server
            process does not hold, so the prompt cannot be built; they run at ratio 0.
    """
    images = mm_items.get_items("image", (ImageEmbeddingItems, ImageProcessorItems))
    if isinstance(images, ImageEmbeddingItems):
        raise ValueError(
            f"{config.RATIO_KEY} must be 0 for precomputed image embeddings on "
            f"{architecture}: zspa-vllm prunes images it encodes itself"
        )
    size = images.get_image_size(item_idx)
    hf_config, encoder = info.get_hf_config(), info.get_vision_encoder_info()
    rows, cols = get_anyres_image_grid_shape(
        image_size=(size.height, size.width),
        grid_pinpoints=hf_config.image_grid_pinpoints,
        patch_size=encoder.get_image_size(),
    )
    _, newlines = info._get_num_unpadded_features(
        original_height=size.height,
        original_width=size.width,
        npatches=encoder.get_patch_grid_length(),
        num_patch_height=rows,
        num_patch_width=cols,
    )
    return newlines


@MULTIMODAL_REGISTRY.register_processor(
    PruningLlavaNextProcessor,
    info=LlavaNextProcessingInfo,
    dummy_inputs=LlavaDummyInputsBuilder,
)
class PrunedLlavaNextForConditionalGeneration(PruningModelMixin, LlavaNextForConditionalGeneration):
    zspa_family = FAMILY

    def _zspa_item_tokens(self, media, kwargs) -> list[int]:
        return tower_tokens(self.config, kwargs[media.pixels])

    def _zspa_fixed_rows(self, media, kwargs, chunk) -> list[torch.Tensor]:
        return newline_rows(self.image_newline, chunk)


def tower_tokens(config, pixels) -> list[int]:
    """What the tower encodes per item: every view (base + crops; a video's frames) at its
    full patch grid."""
    vision = config.vision_config
    per_view = (vision.image_size // vision.patch_size) ** 2
    return [int(p.shape[0]) * per_view for p in pixels]


def newline_rows(image_newline: torch.Tensor, chunk) -> list[torch.Tensor]:
    """The structure rows of each item: copies of the learned ``image_newline`` vector (vLLM's
    ``_merge_image_patch_embeddings`` appends it after every unpadded row)."""
    newline = image_newline.to(chunk[0].device, chunk[0].dtype)
    return [(e == newline).all(dim=-1) for e in chunk]
