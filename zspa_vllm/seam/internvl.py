"""Prompt-aware pruning for vLLM's ``InternVLForConditionalGeneration`` (InternVL3 and
InternVL3.5 in HF format; vLLM runs them with its InternS1 code).

An image is cut into up to ``max_patches`` tiles plus a thumbnail (dynamic tiling), each
tile becomes ``image_seq_length`` tokens (256 in the released models; pixel-shuffled
InternViT patches), and vLLM replaces the image's ``<IMG_CONTEXT>`` with
``<img>`` + all tiles' tokens + ``</img>``. The budget is one per image across its tiles
and thumbnail: they form one contiguous run, so the selector chooses ``keep_count(N, ratio)``
among all N = tiles x 256 tokens at once (a detail tile may keep more than the thumbnail).
``<img>`` and ``</img>`` stay (``seam/processor._pruned_details``); kept tokens are compacted
between them (1-D RoPE). Videos (one frame per tile, "FrameK:" text between frames) are
not pruned: a ratio > 0 with a video is refused, naming it.
"""

from __future__ import annotations

from vllm.model_executor.models.interns1 import (
    InternS1DummyInputsBuilder,
    InternS1ForConditionalGeneration,
    InternS1MultiModalProcessor,
    InternS1ProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from zspa_vllm import families
from zspa_vllm.seam.processor import ImageTokensFromInfo, PruningProcessorMixin
from zspa_vllm.seam.worker import PruningModelMixin, scalars

FAMILY = families.get("InternVLForConditionalGeneration")


class PruningInternVLProcessor(
    ImageTokensFromInfo, PruningProcessorMixin, InternS1MultiModalProcessor
):
    zspa_family = FAMILY


@MULTIMODAL_REGISTRY.register_processor(
    PruningInternVLProcessor,
    info=InternS1ProcessingInfo,
    dummy_inputs=InternS1DummyInputsBuilder,
)
class PrunedInternVLForConditionalGeneration(PruningModelMixin, InternS1ForConditionalGeneration):
    zspa_family = FAMILY

    def _zspa_item_tokens(self, media, kwargs) -> list[int]:
        # Tiles (and thumbnail) per image x tokens per tile.
        return [int(n) * self.num_image_token for n in scalars(kwargs[media.rows])]
