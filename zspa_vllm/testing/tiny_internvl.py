"""Build a tiny random-weight InternVL (HF format) checkpoint on disk (no model hub).

The real processor classes (``GotOcr2ImageProcessor`` with dynamic tiling and a thumbnail,
``InternVLVideoProcessor``, ``InternVLProcessor``), a locally trained BPE tokenizer with
InternVL's image tokens (``<img>``, ``<IMG_CONTEXT>``, ``</img>``, ``<video>``) and a
Qwen-style chat template, an InternViT tower at 112 px / patch 14 (8 x 8 patches,
pixel-shuffled 0.5 into 16 tokens per tile; the released models: 448 px, 256 per tile) and
a small Qwen2 text model, as InternVL3. The weights are random: only equality between code
paths means anything, never the text.

    python -m zspa_vllm.testing.tiny_internvl /tmp/tiny-internvl
"""

from __future__ import annotations

import sys
from pathlib import Path

from zspa_vllm.testing.tiny_llava import bpe_tokenizer, sharpen

IMG_START, IMG_END, IMG_CONTEXT, VIDEO = "<img>", "</img>", "<IMG_CONTEXT>", "<video>"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", IMG_START, IMG_END, IMG_CONTEXT, VIDEO]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] in ('image', 'image_url') %}<IMG_CONTEXT>\n"
    "{% elif part['type'] in ('video', 'video_url') %}<video>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TILE, PATCH, TOKENS_PER_TILE, MAX_TILES = 112, 14, 16, 6


def _tokenizer():
    return bpe_tokenizer(
        SPECIALS,
        CHAT_TEMPLATE,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={
            "start_image_token": IMG_START,
            "end_image_token": IMG_END,
            "context_image_token": IMG_CONTEXT,
            "video_token": VIDEO,
        },
    )


def build_tiny_internvl(path: str | Path, seed: int = 0) -> Path:
    """Write the checkpoint to ``path`` (created) and return it. Deterministic in ``seed``."""
    import torch
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
        InternVLVisionConfig,
        Qwen2Config,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer()
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=128,  # head_dim 32: the CPU attention kernels need >= 32
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = InternVLVisionConfig(
        image_size=TILE,
        patch_size=PATCH,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
    )
    config = InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMG_CONTEXT),
        image_seq_length=TOKENS_PER_TILE,
        downsample_ratio=0.5,
    )
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config).eval()
    sharpen(model, vision="vision_tower")
    model.save_pretrained(path)
    size = {"height": TILE, "width": TILE}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(
            size=size, crop_to_patches=True, min_patches=1, max_patches=MAX_TILES
        ),
        tokenizer=tokenizer,
        video_processor=InternVLVideoProcessor(size=size),
        image_seq_length=TOKENS_PER_TILE,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


if __name__ == "__main__":
    print(build_tiny_internvl(sys.argv[1] if len(sys.argv) > 1 else "tiny-internvl"))
