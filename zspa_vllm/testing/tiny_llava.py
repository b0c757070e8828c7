"""Build a tiny random-weight LLaVA-1.5-shaped checkpoint on disk (no model hub).

Real processor classes (CLIPImageProcessor + LlavaProcessor), a locally trained BPE
tokenizer with a chat template, a CLIP tower at 336 px / patch 14 (576 image tokens)
and a small Llama. Used by the tests and by ``scripts/demo``; the weights are random,
so only equality between code paths means anything, never the text.

    python -m zspa_vllm.testing.tiny_llava /tmp/tiny-llava
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

IMAGE_TOKEN = "<image>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or part['type'] == 'image_url' %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}\n"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
_CORPUS = [
    "what is in this image? describe the picture in detail.",
    "how many objects are there, and what colour is the car on the left?",
    "read the text in the sign. is there a cat or a dog? where is the person standing?",
    "USER: ASSISTANT: the image shows a red bus on a street next to a tall building.",
    "count the apples on the table; compare the sky with the sea; answer yes or no.",
]


def bpe_tokenizer(specials: list[str], chat_template: str, unk: str | None = None, **named):
    """A byte-level BPE tokenizer trained here on a small corpus (no hub), with
    ``specials`` as its first ids, wrapped for transformers; ``named`` are the special-token
    roles (``eos_token=...``, ``extra_special_tokens={...}``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **named)
    fast.chat_template = chat_template
    return fast


def _tokenizer():
    return bpe_tokenizer(
        ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN],
        CHAT_TEMPLATE,
        unk="<unk>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )


# Layer sizes. "tiny": tests (fast). "bench": the CPU benchmark model, shaped so that the
# cost split resembles LLaVA-1.5-7B's: the vision tower + projector are a few percent of an
# image prompt's prefill (CLIP-L/336 ~0.35 TFLOP vs ~8 TFLOP for 7B x 600 tokens, ~4 %),
# with the same 576 visual tokens. benchmarks/README.md records the measured split.
SCALES = {
    "tiny": {"vision": (32, 64, 2, 2), "text": (128, 256, 2, 4, 2)},
    "bench": {"vision": (128, 512, 3, 4), "text": (512, 1536, 6, 8, 8)},
}


def build_tiny_llava(
    path: str | Path, seed: int = 0, tower: str = "clip", scale: str = "tiny"
) -> Path:
    """Write the checkpoint to ``path`` (created) and return it. Deterministic in ``seed``.

    ``tower="clip"``: LLaVA-1.5 shape (CLIP 336/14, CLS dropped: 576 tokens, Llama).
    ``tower="siglip"``: llava-interleave-qwen shape (SigLIP 384/14, all 729 patch tokens,
    Qwen2 text model), the same vLLM architecture with another tower.
    """
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        Qwen2Config,
        SiglipImageProcessor,
        SiglipVisionConfig,
    )

    if tower not in ("clip", "siglip"):
        raise ValueError(f"tower must be 'clip' or 'siglip'; got {tower!r}")
    siglip = tower == "siglip"
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer()
    v_hidden, v_inter, v_layers, v_heads = SCALES[scale]["vision"]
    t_hidden, t_inter, t_layers, t_heads, t_kv_heads = SCALES[scale]["text"]
    tower_shape = {
        "hidden_size": v_hidden,
        "intermediate_size": v_inter,
        "num_hidden_layers": v_layers,
        "num_attention_heads": v_heads,
        "patch_size": 14,
    }
    vision = (
        SiglipVisionConfig(image_size=384, **tower_shape)
        if siglip
        else CLIPVisionConfig(image_size=336, projection_dim=v_hidden, **tower_shape)
    )
    text = (Qwen2Config if siglip else LlamaConfig)(
        vocab_size=len(tokenizer),
        hidden_size=t_hidden,  # head_dim >= 32: the CPU attention kernels need it
        intermediate_size=t_inter,
        num_hidden_layers=t_layers,
        num_attention_heads=t_heads,
        num_key_value_heads=t_kv_heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="full" if siglip else "default",
        vision_feature_layer=-1 if siglip else -2,
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    if scale == "tiny":
        sharpen(model, vision="vision_tower")
    model.save_pretrained(path)
    rename_vision_tower_keys(path)

    processor = LlavaProcessor(
        image_processor=(
            SiglipImageProcessor(size={"height": 384, "width": 384})
            if siglip
            else CLIPImageProcessor(
                size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}
            )
        ),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=0 if siglip else 1,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def sharpen(model, vision: str) -> None:
    """Redraw every weight matrix outside the vision tower (names containing ``vision``)
    with std 0.25, in place.

    Default init (std 0.02) makes every logit nearly equal, so any kept set of visual
    tokens (or any position) would give the same next-token distribution. Larger weights
    make the output depend clearly on WHICH tokens were kept and WHERE they sit: the
    equivalence tests must be able to fail.
    """
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and vision not in name:
                p.normal_(0.0, 0.25)


def rename_vision_tower_keys(path: Path) -> None:
    """transformers 5 saves ``vision_tower.*``; llava-hf and Gemma 3 checkpoints (and
    vLLM's loader) use ``vision_tower.vision_model.*``."""
    from safetensors.torch import load_file, save_file

    for shard in path.glob("*.safetensors"):
        tensors = load_file(shard)
        renamed = {}
        for key, value in tensors.items():
            for prefix in ("model.vision_tower.", "vision_tower."):
                if key.startswith(prefix) and not key.startswith(prefix + "vision_model."):
                    key = prefix + "vision_model." + key[len(prefix) :]
                    break
            renamed[key] = value.contiguous()
        save_file(renamed, shard, metadata={"format": "pt"})
    index = path / "model.safetensors.index.json"
    if index.exists():  # only for sharded checkpoints; ours is one file
        data = json.loads(index.read_text())
        raise NotImplementedError(f"sharded checkpoint: {len(data['weight_map'])} keys")


if __name__ == "__main__":
    print(
        build_tiny_llava(
            sys.argv[1] if len(sys.argv) > 1 else "tiny-llava",
            tower=sys.argv[2] if len(sys.argv) > 2 else "clip",
            scale=sys.argv[3] if len(sys.argv) > 3 else "tiny",
        )
    )
