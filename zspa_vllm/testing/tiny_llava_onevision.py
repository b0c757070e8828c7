"""Build a tiny random-weight LLaVA-OneVision checkpoint on disk (no model hub).

The real processor classes (``LlavaOnevisionImageProcessor`` with anyres grid pinpoints,
``LlavaOnevisionVideoProcessor``, ``LlavaOnevisionProcessor``), a BPE tokenizer with
``<image>`` and ``<video>``, a SigLIP tower at 84 px / patch 14 (6 x 6 = 36 tokens per view,
no CLS), the learned ``image_newline`` and a small Qwen2. Grid pinpoints up to 4 x 4 crops,
so a square image's unpadded crops (24 x 24 tokens) exceed nine views and are shrunk by
the ``anyres_max_9`` interpolation, as the released checkpoints do for large images. A video
frame is pooled 2 x 2 to 3 x 3 tokens, and one newline row follows the last frame. The
weights are random: only equality between code paths means anything, never the text.

    python -m zspa_vllm.testing.tiny_llava_onevision /tmp/tiny-llava-onevision
"""

from __future__ import annotations

import sys
from pathlib import Path

from zspa_vllm.testing.tiny_llava import bpe_tokenizer, rename_vision_tower_keys, sharpen

VIEW, PATCH = 84, 14
PINPOINTS = [[84, 168], [168, 84], [168, 168], [252, 252], [336, 336]]
IMAGE_TOKEN, VIDEO_TOKEN = "<image>", "<video>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or part['type'] == 'image_url' %}<image>\n"
    "{% elif part['type'] == 'video' or part['type'] == 'video_url' %}<video>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}\n"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def build_tiny_llava_onevision(path: str | Path, seed: int = 0) -> Path:
    """Write the checkpoint to ``path`` (created) and return it. Deterministic in ``seed``."""
    import torch
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = bpe_tokenizer(
        ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN, VIDEO_TOKEN],
        CHAT_TEMPLATE,
        unk="<unk>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN, "video_token": VIDEO_TOKEN},
    )
    vision = SiglipVisionConfig(
        image_size=VIEW,
        patch_size=PATCH,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
    )
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=128,  # head_dim 32: the CPU attention kernels need >= 32
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        video_token_index=tokenizer.convert_tokens_to_ids(VIDEO_TOKEN),
        image_grid_pinpoints=PINPOINTS,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9",
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    sharpen(model, vision="vision_tower")
    with torch.no_grad():  # a distinct newline vector (default init is tiny)
        model.model.image_newline.normal_(0.0, 1.0)
    model.save_pretrained(path)
    rename_vision_tower_keys(path)
    size = {"height": VIEW, "width": VIEW}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=PINPOINTS),
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        tokenizer=tokenizer,
        num_image_tokens=(VIEW // PATCH) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


if __name__ == "__main__":
    print(build_tiny_llava_onevision(sys.argv[1] if len(sys.argv) > 1 else "tiny-llava-onevision"))
