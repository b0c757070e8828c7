"""Build a tiny random-weight Qwen2-VL or Qwen2.5-VL checkpoint on disk (no model hub).

The real processor classes (``Qwen2VLImageProcessor``, ``Qwen2VLVideoProcessor``,
``Qwen2VLProcessor`` / ``Qwen2_5_VLProcessor``), a locally trained BPE tokenizer with
Qwen's special tokens and a Qwen-style chat template, a small vision tower (patch 14,
merge 2: an image of H x W pixels gives (H/28) * (W/28) visual tokens) and a small
Qwen2 text model with M-RoPE (``mrope_section`` [4, 6, 6] for head_dim 32). The weights
are random: only equality between code paths means anything, never the text.

    python -m zspa_vllm.testing.tiny_qwen_vl /tmp/tiny-qwen2-vl qwen2_vl [tiny|bench]
"""

from __future__ import annotations

import sys
from pathlib import Path

from zspa_vllm.testing.tiny_llava import bpe_tokenizer, sharpen

VARIANTS = (
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
    "qwen3_vl_moe",
    "qwen3_5",
    "qwen3_5_moe",
    "qwen3_5_attn",
)
SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] in ('image', 'image_url') %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] in ('video', 'video_url') %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Pixel bounds of the tiny processors: 2x2 to 16x16 merged tokens per image (a token is
# 28x28 pixels for Qwen2/2.5-VL, patch 14; 32x32 for Qwen3-VL, patch 16).
MIN_PIXELS = 56 * 56
MAX_PIXELS = 448 * 448
PATCH = {
    "qwen2_vl": 14,
    "qwen2_5_vl": 14,
    "qwen3_vl": 16,
    "qwen3_vl_moe": 16,
    "qwen3_5": 16,
    "qwen3_5_moe": 16,
    "qwen3_5_attn": 16,
}


def _tokenizer():
    return bpe_tokenizer(
        SPECIALS,
        CHAT_TEMPLATE,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
        },
    )


# Layer sizes. "tiny": tests (fast). "bench": the CPU benchmark model, shaped so that the
# cost split resembles Qwen2.5-VL-7B's at high resolution, where the vision tower is a
# sizeable share (~25 %) of an image prompt's prefill: up to 1024 visual tokens per image.
SCALES = {
    # text: hidden, intermediate, layers, heads, kv heads, mrope_section; vision: hidden,
    # intermediate, depth, heads; max image side in patches.
    "tiny": {"text": (128, 256, 2, 4, 2, [4, 6, 6]), "vision": (32, 64, 2, 2), "side": 32},
    "bench": {"text": (512, 1536, 6, 8, 8, [8, 12, 12]), "vision": (128, 512, 3, 4), "side": 64},
}


def build_tiny_qwen_vl(
    path: str | Path, variant: str = "qwen2_vl", seed: int = 0, scale: str = "tiny"
) -> Path:
    """Write the checkpoint to ``path`` (created) and return it. Deterministic in ``seed``."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen3_5Config,
        Qwen3_5ForConditionalGeneration,
        Qwen3_5MoeConfig,
        Qwen3_5MoeForConditionalGeneration,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLMoeConfig,
        Qwen3VLMoeForConditionalGeneration,
        Qwen3VLProcessor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}; got {variant!r}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIALS}
    t_hidden, t_inter, t_layers, t_heads, t_kv, section = SCALES[scale]["text"]
    v_hidden, v_inter, v_depth, v_heads = SCALES[scale]["vision"]
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": t_hidden,
        "intermediate_size": t_inter,
        "num_hidden_layers": t_layers,
        "num_attention_heads": t_heads,  # head_dim >= 32: the CPU attention kernels need it
        "num_key_value_heads": t_kv,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-6,
        # Without mrope_section vLLM does not enable M-RoPE (ENVIRONMENT.md).
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": section,
        },
        "bos_token_id": None,
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": False,
    }
    common = {
        "depth": v_depth,
        "num_heads": v_heads,
        "patch_size": PATCH[variant],
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "in_channels": 3,
    }
    # Qwen3-VL's tower (Qwen3.5's too, without deepstack).
    qwen3_vision = common | {
        "hidden_size": v_hidden,
        "out_hidden_size": t_hidden,
        "intermediate_size": v_inter,
        "num_position_embeddings": 256,  # a 16x16 table, interpolated per image
    }
    if variant == "qwen2_vl":
        vision = common | {"embed_dim": v_hidden, "hidden_size": t_hidden, "mlp_ratio": 2}
        config_cls, model_cls, proc_cls = (
            Qwen2VLConfig,
            Qwen2VLForConditionalGeneration,
            Qwen2VLProcessor,
        )
    elif variant in ("qwen3_vl", "qwen3_vl_moe"):
        text |= {"head_dim": t_hidden // t_heads}
        text["rope_parameters"] |= {"mrope_interleaved": True}
        vision = qwen3_vision | {"deepstack_visual_indexes": [0]}
        config_cls, model_cls, proc_cls = (
            Qwen3VLConfig,
            Qwen3VLForConditionalGeneration,
            Qwen3VLProcessor,
        )
        if variant == "qwen3_vl_moe":
            # Every layer sparse: 4 experts, 2 per token (the real checkpoints: 128 and 8).
            text |= {
                "num_experts": 4,
                "num_experts_per_tok": 2,
                # Neither it nor twice it is the hidden size: transformers tells the two expert
                # layouts apart by shape.
                "moe_intermediate_size": 3 * t_inter // 8,
                "decoder_sparse_step": 1,
                "mlp_only_layers": [],
                "norm_topk_prob": True,
            }
            config_cls, model_cls = Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration
    elif variant.startswith("qwen3_5"):
        # A Gated DeltaNet layer, then a full-attention layer with partial rotary (a quarter
        # of head_dim 64: 8 frequencies, M-RoPE sections 2 + 3 + 3), as the released
        # hybrids interleave them (3 : 1 there).
        text |= {
            "head_dim": 64,
            "layer_types": ["linear_attention", "full_attention"],
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 4,
            # vLLM's CPU Gated DeltaNet kernel takes head dims of 64 or more.
            "linear_key_head_dim": 64,
            "linear_value_head_dim": 64,
            "linear_conv_kernel_dim": 4,
        }
        if variant == "qwen3_5_attn":
            # Every layer full attention: no Gated DeltaNet, whose vLLM CPU kernel is
            # bfloat16-only, so this one runs in float32 (the exact bar of every family).
            text["layer_types"] = ["full_attention", "full_attention"]
        text["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.25,
            "mrope_section": [2, 3, 3],
            "mrope_interleaved": True,
        }
        vision = qwen3_vision  # no deepstack in Qwen3.5
        config_cls, model_cls, proc_cls = (
            Qwen3_5Config,
            Qwen3_5ForConditionalGeneration,
            Qwen3VLProcessor,
        )
        if variant == "qwen3_5_moe":
            # Every layer sparse (4 experts, 2 per token) plus the shared expert.
            text |= {
                "num_experts": 4,
                "num_experts_per_tok": 2,
                "moe_intermediate_size": 3 * t_inter // 8,
                "shared_expert_intermediate_size": 3 * t_inter // 8,
            }
            config_cls, model_cls = Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration
    else:
        vision = common | {
            "hidden_size": v_hidden,
            "out_hidden_size": t_hidden,
            "intermediate_size": v_inter,
            "window_size": 56,  # 2x2 merged tokens per window at this size
            "fullatt_block_indexes": [1],
            "tokens_per_second": 2,
        }
        config_cls, model_cls, proc_cls = (
            Qwen2_5_VLConfig,
            Qwen2_5_VLForConditionalGeneration,
            Qwen2_5_VLProcessor,
        )
    config = config_cls(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    if scale == "tiny":
        sharpen(model, vision="visual")
    model.save_pretrained(path)
    if variant in ("qwen3_vl_moe", "qwen3_5_moe"):
        _official_expert_layout(path)

    # Images from (4 patches)^2 to (side patches)^2: MIN_PIXELS / MAX_PIXELS at patch 14, tiny.
    lo, hi = (4 * PATCH[variant]) ** 2, (SCALES[scale]["side"] * PATCH[variant]) ** 2
    pixels = {"min_pixels": lo, "max_pixels": hi, "patch_size": PATCH[variant]}
    size = {"shortest_edge": lo, "longest_edge": hi}
    video_cls = Qwen3VLVideoProcessor if variant.startswith("qwen3") else Qwen2VLVideoProcessor
    processor = proc_cls(
        image_processor=Qwen2VLImageProcessor(size=size, **pixels),
        video_processor=video_cls(size=size, **pixels),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _official_expert_layout(path: Path) -> None:
    """Store the fused experts as Qwen's released checkpoints do ([E, hidden, 2 x inter] and
    [E, inter, hidden], what vLLM loads); transformers 5 saves its own in-memory layout
    (transposed) and accepts either on load (it compares shapes)."""
    from safetensors.torch import load_file, save_file

    for shard in path.glob("*.safetensors"):
        tensors = load_file(shard)
        for key, value in tensors.items():
            if key.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj")):
                tensors[key] = value.transpose(1, 2).contiguous()
        save_file(tensors, shard, metadata={"format": "pt"})


if __name__ == "__main__":
    print(
        build_tiny_qwen_vl(
            sys.argv[1] if len(sys.argv) > 1 else "tiny-qwen2-vl",
            variant=sys.argv[2] if len(sys.argv) > 2 else "qwen2_vl",
            scale=sys.argv[3] if len(sys.argv) > 3 else "tiny",
        )
    )
