"""The model families that prune, as data: one ``Family`` per vLLM architecture.

The family-neutral pipeline in ``zspa_vllm.seam`` reads everything it needs from here:
which placeholder token stands for an item, which processor outputs count the items,
which encoder inputs can be split by item (so no vision-tower call exceeds the encoder
budget vLLM profiled), where an item's patch grid is, which columns of the encoder output
the selector scores, and which position strategy applies. What is truly a family's own
(the vLLM classes it extends, how the unpruned token count is computed, the M-RoPE
plumbing) stays in ``seam/<family>.py``. Pure data: no vLLM import.

Adding a family: README, "Adding a model family".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Media:
    """One prunable modality of a family. The budget unit is one item (an image, a video).

    Attributes:
        modality: vLLM's modality name.
        placeholder: attribute of the HF config holding the token id that stands for one
            item in the templated prompt (before vLLM expands it to N tokens).
        item_keys: processed (HF processor) outputs with one row per item, in order of
            preference: the first present counts the items.
        pixels: the encoder input of this modality (split by item for the encoder budget).
        grid: the per-item ``(t, h, w)`` patch grid input; None: see ``rows``.
        rows: without a grid, the input holding each item's number of pixel rows (Gemma 3:
            ``num_patches``, the image and its pan-and-scan crops); None: one row per item.
        embeds: the precomputed-embedding input of this modality, if the family takes one.
        per_item: other inputs with one row per item (sliced with the items).
        shared: inputs that are one value for the whole batch (InternVL's
            ``image_token_id``): every encoder sub-batch gets them whole.
    """

    modality: str
    placeholder: str
    item_keys: tuple[str, ...]
    pixels: str
    grid: str | None = None
    rows: str | None = None
    embeds: str | None = None
    per_item: tuple[str, ...] = ()
    shared: tuple[str, ...] = ()

    @property
    def input_keys(self) -> tuple[str, ...]:
        """The encoder inputs of this modality (the parent model's order decides outputs)."""
        return tuple(k for k in (self.pixels, self.embeds) if k)

    @property
    def split_keys(self) -> frozenset[str]:
        """Inputs the pipeline knows how to cut by item (others: no split)."""
        return frozenset(k for k in (self.pixels, self.grid, self.rows, *self.per_item) if k)


@dataclass(frozen=True)
class Family:
    """One vLLM architecture that prunes.

    Attributes:
        architecture: vLLM's architecture name, replaced by ``model`` in its registry.
        model: ``"module:Class"`` of our model class (imported lazily by vLLM).
        media: the prunable modalities; requests with another modality of this model and
            a ratio > 0 are refused (naming it), never silently left unpruned.
        positions: ``"1d"``: kept tokens fill the placeholder positions (plain RoPE);
            ``"mrope"``: each kept token keeps its unpruned (t, h, w) position.
        scored: ``"all"``: the selector scores every column of an item's encoder output;
            ``"main"``: only the LLM-input columns, the rest (Qwen3-VL's deepstack
            features) ride along with their token.
        checkpoints: what the README's architecture table lists.
    """

    architecture: str
    model: str
    media: tuple[Media, ...]
    positions: Literal["1d", "mrope"]
    scored: Literal["all", "main"] = "all"
    checkpoints: str = ""

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m.modality for m in self.media)

    def medium(self, modality: str) -> Media:
        return next(m for m in self.media if m.modality == modality)


_QWEN_IMAGE = Media(
    "image",
    placeholder="image_token_id",
    item_keys=("image_grid_thw",),
    pixels="pixel_values",
    grid="image_grid_thw",
    embeds="image_embeds",
)
_QWEN_VIDEO = Media(
    "video",
    placeholder="video_token_id",
    item_keys=("video_grid_thw",),
    pixels="pixel_values_videos",
    grid="video_grid_thw",
    embeds="video_embeds",
    per_item=("second_per_grid_ts", "timestamps"),
)
# LLaVA-NeXT and LLaVA-OneVision: per image, its base view and anyres crops.
_ANYRES_IMAGE = Media(
    "image",
    placeholder="image_token_index",
    item_keys=("pixel_values", "image_embeds"),
    pixels="pixel_values",
    embeds="image_embeds",
    per_item=("image_sizes",),
)
_SEAM = "zspa_vllm.seam"

FAMILIES: tuple[Family, ...] = (
    Family(
        "LlavaForConditionalGeneration",
        f"{_SEAM}.llava:PrunedLlavaForConditionalGeneration",
        (
            Media(
                "image",
                placeholder="image_token_index",
                item_keys=("pixel_values", "image_embeds"),
                pixels="pixel_values",
                embeds="image_embeds",
            ),
        ),
        positions="1d",
        checkpoints="LLaVA-1.5, llava-interleave-qwen (CLIP or SigLIP tower)",
    ),
    Family(
        "LlavaNextForConditionalGeneration",
        f"{_SEAM}.llava_next:PrunedLlavaNextForConditionalGeneration",
        (_ANYRES_IMAGE,),
        positions="1d",
        checkpoints="LLaVA-NeXT (LLaVA-1.6: Vicuna, Mistral, 34B)",
    ),
    Family(
        "LlavaOnevisionForConditionalGeneration",
        f"{_SEAM}.llava_onevision:PrunedLlavaOnevisionForConditionalGeneration",
        (
            _ANYRES_IMAGE,
            Media(
                "video",
                placeholder="video_token_index",
                item_keys=("pixel_values_videos",),
                pixels="pixel_values_videos",  # per video: its frames
            ),
        ),
        positions="1d",
        checkpoints="LLaVA-OneVision (0.5B, 7B, 72B; images and videos)",
    ),
    Family(
        "Qwen2VLForConditionalGeneration",
        f"{_SEAM}.qwen_vl:PrunedQwen2VLForConditionalGeneration",
        (_QWEN_IMAGE, _QWEN_VIDEO),
        positions="mrope",
        checkpoints="Qwen2-VL",
    ),
    Family(
        "Qwen2_5_VLForConditionalGeneration",
        f"{_SEAM}.qwen_vl:PrunedQwen2_5_VLForConditionalGeneration",
        (_QWEN_IMAGE, _QWEN_VIDEO),
        positions="mrope",
        checkpoints="Qwen2.5-VL",
    ),
    Family(
        "Qwen3VLForConditionalGeneration",
        f"{_SEAM}.qwen_vl:PrunedQwen3VLForConditionalGeneration",
        # Videos: each frame is a budget unit (timestamp text between frames; README).
        (_QWEN_IMAGE, _QWEN_VIDEO),
        positions="mrope",
        scored="main",
        checkpoints="Qwen3-VL (dense)",
    ),
    Family(
        "Qwen3VLMoeForConditionalGeneration",
        f"{_SEAM}.qwen3_vl_moe:PrunedQwen3VLMoeForConditionalGeneration",
        (_QWEN_IMAGE, _QWEN_VIDEO),  # as the dense Qwen3-VL
        positions="mrope",
        scored="main",
        checkpoints="Qwen3-VL-MoE (30B-A3B, 235B-A22B)",
    ),
    Family(
        "Qwen3_5ForConditionalGeneration",
        f"{_SEAM}.qwen3_5:PrunedQwen3_5ForConditionalGeneration",
        (_QWEN_IMAGE, _QWEN_VIDEO),  # as Qwen3-VL (no deepstack columns)
        positions="mrope",
        scored="main",
        checkpoints="Qwen3.5 (dense)",
    ),
    Family(
        "Qwen3_5MoeForConditionalGeneration",
        f"{_SEAM}.qwen3_5:PrunedQwen3_5MoeForConditionalGeneration",
        (_QWEN_IMAGE, _QWEN_VIDEO),
        positions="mrope",
        scored="main",
        checkpoints="Qwen3.5-MoE",
    ),
    Family(
        "Gemma3ForConditionalGeneration",
        f"{_SEAM}.gemma3:PrunedGemma3ForConditionalGeneration",
        (
            Media(
                "image",
                placeholder="boi_token_index",  # <start_of_image>, expanded by vLLM
                item_keys=("num_patches",),  # one row per image (pixel rows: + crops)
                pixels="pixel_values",
                rows="num_patches",
            ),
        ),
        positions="1d",
        checkpoints="Gemma 3 (4B, 12B, 27B; with or without pan-and-scan)",
    ),
    Family(
        "InternVLForConditionalGeneration",
        f"{_SEAM}.internvl:PrunedInternVLForConditionalGeneration",
        (
            Media(
                "image",
                placeholder="image_token_id",  # <IMG_CONTEXT>, expanded by vLLM
                item_keys=("image_num_patches", "image_embeds"),
                pixels="pixel_values",
                rows="image_num_patches",  # its tiles and thumbnail
                embeds="image_embeds",
                shared=("image_token_id",),
            ),
        ),
        positions="1d",
        checkpoints="InternVL3, InternVL3.5 (HF-format `-hf` checkpoints)",
    ),
    Family(
        "Mistral3ForConditionalGeneration",
        f"{_SEAM}.mistral3:PrunedMistral3ForConditionalGeneration",
        (
            Media(
                "image",
                placeholder="image_token_index",  # [IMG], expanded by vLLM into rows
                item_keys=("pixel_values",),  # one tensor per image (sizes differ)
                pixels="pixel_values",
            ),
        ),
        positions="1d",
        checkpoints="Mistral Small 3.1 / 3.2 (HF format; Pixtral tower)",
    ),
)


def by_architecture() -> dict[str, Family]:
    return {f.architecture: f for f in FAMILIES}


def get(architecture: str) -> Family:
    return by_architecture()[architecture]
