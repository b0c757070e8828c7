"""Build a tiny random-weight LLaVA-NeXT (LLaVA-1.6) checkpoint on disk (no model hub).

The real processor classes (``LlavaNextImageProcessor`` with anyres grid pinpoints,
``LlavaNextProcessor``), the tiny LLaVA's tokenizer and chat template, a CLIP tower at
112 px / patch 14 (8 x 8 = 64 tokens per view, CLS dropped), the learned ``image_newline``
and a small Llama. An image is its base view plus up to 2 x 2 crops, unpadded to its aspect
ratio, each row of crop tokens followed by a newline row. The weights are random: only
equality between code paths means anything, never the text.

    python -m zspa_vllm.testing.tiny_llava_next /tmp/tiny-llava-next
"""

from __future__ import annotations

import sys
from pathlib import Path

from zspa_vllm.testing.tiny_llava import (
    CHAT_TEMPLATE,
    IMAGE_TOKEN,
    _tokenizer,
    rename_vision_tower_keys,
    sharpen,
)

VIEW, PATCH = 112, 14
PINPOINTS = [[112, 224], [224, 112], [224, 224]]


def build_tiny_llava_next(path: str | Path, seed: int = 0) -> Path:
    """Write the checkpoint to ``path`` (created) and return it. Deterministic in ``seed``."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer()
    vision = CLIPVisionConfig(
        image_size=VIEW,
        patch_size=PATCH,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,  # head_dim 32: the CPU attention kernels need >= 32
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_grid_pinpoints=PINPOINTS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    sharpen(model, vision="vision_tower")
    with torch.no_grad():  # a distinct newline vector (default init: zeros or tiny)
        model.model.image_newline.normal_(0.0, 1.0)
    model.save_pretrained(path)
    rename_vision_tower_keys(path)
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(
            size={"shortest_edge": VIEW},
            crop_size={"height": VIEW, "width": VIEW},
            image_grid_pinpoints=PINPOINTS,
        ),
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


if __name__ == "__main__":
    print(build_tiny_llava_next(sys.argv[1] if len(sys.argv) > 1 else "tiny-llava-next"))
