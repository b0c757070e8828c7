"""Build a tiny random-weight Mistral 3 (Pixtral vision) checkpoint on disk (no model hub).

The real processor classes (``PixtralImageProcessor``, ``PixtralProcessor``), a locally
trained BPE tokenizer with Pixtral's image tokens (``[IMG]``, ``[IMG_BREAK]``,
``[IMG_END]``) and a Mistral-style chat template, a Pixtral tower (patch 16, 2-D RoPE,
variable image sizes up to 512 px) with Mistral 3's 2 x 2 patch merger (a token is 32 x 32
pixels) and a small Mistral text model. The weights are random: only equality between code
paths means anything, never the text.

    python -m zspa_vllm.testing.tiny_mistral3 /tmp/tiny-mistral3
"""

from __future__ import annotations

import sys
from pathlib import Path

from zspa_vllm.testing.tiny_llava import bpe_tokenizer, sharpen

IMG, IMG_BREAK, IMG_END = "[IMG]", "[IMG_BREAK]", "[IMG_END]"
SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", IMG, IMG_BREAK, IMG_END]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}[INST]{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] in ('image', 'image_url') %}[IMG]"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'user' %}[/INST]{% else %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)
PATCH, MERGE, LONGEST_EDGE = 16, 2, 512


def build_tiny_mistral3(path: str | Path, seed: int = 0) -> Path:
    """Write the checkpoint to ``path`` (created) and return it. Deterministic in ``seed``."""
    import torch
    from transformers import (
        Mistral3Config,
        Mistral3ForConditionalGeneration,
        MistralConfig,
        PixtralImageProcessor,
        PixtralProcessor,
        PixtralVisionConfig,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = bpe_tokenizer(
        SPECIALS,
        CHAT_TEMPLATE,
        unk="<unk>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )
    text = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,  # the CPU attention kernels need >= 32
        max_position_embeddings=2048,
        sliding_window=None,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision = PixtralVisionConfig(
        image_size=LONGEST_EDGE,
        patch_size=PATCH,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        head_dim=32,
    )
    config = Mistral3Config(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMG),
        spatial_merge_size=MERGE,
        vision_feature_layer=-1,
        multimodal_projector_bias=False,
    )
    torch.manual_seed(seed)
    model = Mistral3ForConditionalGeneration(config).eval()
    sharpen(model, vision="vision_tower")
    model.save_pretrained(path)
    processor = PixtralProcessor(
        image_processor=PixtralImageProcessor(
            size={"longest_edge": LONGEST_EDGE}, patch_size={"height": PATCH, "width": PATCH}
        ),
        tokenizer=tokenizer,
        patch_size=PATCH,
        spatial_merge_size=MERGE,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


if __name__ == "__main__":
    print(build_tiny_mistral3(sys.argv[1] if len(sys.argv) > 1 else "tiny-mistral3"))
