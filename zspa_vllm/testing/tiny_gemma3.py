"""Build a tiny random-weight Gemma 3 (vision) checkpoint on disk (no model hub).

The real processor classes (``Gemma3ImageProcessor``, ``Gemma3Processor``), a locally
trained BPE tokenizer with Gemma's special tokens (``<start_of_image>``,
``<image_soft_token>``, ``<end_of_image>``, turn markers) and a Gemma-style chat template,
a SigLIP tower at 224 px / patch 14 (16 x 16 patches, average-pooled 2 x 2 into the
8 x 8 = 64 soft tokens of one image; the released models pool 64 x 64 into 256) and a
small Gemma 3 text model whose first layer is a 64-token sliding window and second a
global layer, as the released models alternate them. The weights are random: only
equality between code paths means anything, never the text.

    python -m zspa_vllm.testing.tiny_gemma3 /tmp/tiny-gemma3
"""

from __future__ import annotations

import sys
from pathlib import Path

from zspa_vllm.testing.tiny_llava import bpe_tokenizer, rename_vision_tower_keys, sharpen

BOI, EOI, SOFT = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", BOI, EOI, SOFT]
# Gemma's vocabulary has single tokens for runs of newlines, and vLLM's Gemma 3 processor
# looks up "\n" ... "\n\n\n\n" by text (it merges the "\n\n" around an image with its
# neighbours); added tokens give the byte-level tokenizer the same units.
NEWLINES = ["\n", "\n\n", "\n\n\n", "\n\n\n\n"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] in ('image', 'image_url') %}<start_of_image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
IMAGE_SIZE, PATCH, TOKENS_PER_IMAGE = 224, 14, 64
SLIDING_WINDOW = 64


def _tokenizer():
    from tokenizers import AddedToken

    tok = bpe_tokenizer(
        SPECIALS,
        CHAT_TEMPLATE,
        unk="<unk>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": SOFT, "boi_token": BOI, "eoi_token": EOI},
    )
    tok.add_tokens([AddedToken(n, normalized=False, special=False) for n in NEWLINES])
    return tok


def build_tiny_gemma3(path: str | Path, seed: int = 0) -> Path:
    """Write the checkpoint to ``path`` (created) and return it. Deterministic in ``seed``."""
    import torch
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    text = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,  # the CPU attention kernels need >= 32
        query_pre_attn_scalar=32,
        sliding_window=SLIDING_WINDOW,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = SiglipVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        vision_use_head=False,
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=TOKENS_PER_IMAGE,
        boi_token_index=ids(BOI),
        eoi_token_index=ids(EOI),
        image_token_index=ids(SOFT),
    )
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).eval()
    sharpen(model, vision="vision_tower")
    with torch.no_grad():  # random, not zero: a zero projection maps every image to 0
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 0.25)
    model.save_pretrained(path)
    rename_vision_tower_keys(path)  # the released checkpoints' SigLIP names
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        tokenizer=tokenizer,
        image_seq_length=TOKENS_PER_IMAGE,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


if __name__ == "__main__":
    print(build_tiny_gemma3(sys.argv[1] if len(sys.argv) > 1 else "tiny-gemma3"))
