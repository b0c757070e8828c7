"""KV-cache bytes per token (zspa_vllm.seam.kv_size) on published model shapes.

Expected values are worked out by hand from the models' Hugging Face config.json files:
    LLaVA-1.5-7B (llava-hf/llava-1.5-7b-hf, Vicuna-7B text model): 32 layers, 32 KV heads
        (no GQA), hidden 4096 / 32 heads = head size 128, float16.
    Qwen2.5-VL-7B-Instruct: 28 layers, 4 KV heads (GQA, 28 query heads), hidden 3584 / 28 =
        head size 128, bfloat16.
    DeepSeek-V2-Lite (MLA): 27 layers, kv_lora_rank 512 + qk_rope_head_dim 64 = 576 per
        token and layer, bfloat16.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from zspa_vllm.seam.kv_size import KVLayout, from_vllm


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        # 32 x 2 x 32 x 128 x 2 bytes = 512 KiB per token
        (KVLayout(layers=32, kv_heads=32, head_size=128, dtype_bytes=2), 524_288),
        # 28 x 2 x 4 x 128 x 2 = 56 KiB: GQA makes Qwen's token 9x cheaper than LLaVA's
        (KVLayout(layers=28, kv_heads=4, head_size=128, dtype_bytes=2), 57_344),
        # the same with an fp8 KV cache
        (KVLayout(layers=28, kv_heads=4, head_size=128, dtype_bytes=1), 28_672),
        # MLA: one 576-wide latent per layer, no separate key and value
        (KVLayout(layers=27, kv_heads=1, head_size=576, dtype_bytes=2, mla=True), 31_104),
    ],
)
def test_bytes_per_token(layout, expected):
    assert layout.bytes_per_token() == expected


def vllm_config(layers, kv_heads, head, dtype, tp=1, cache="auto", window=None, **text):
    """A stand-in with the attributes of vLLM's configs that from_vllm reads."""

    model = SimpleNamespace(
        is_attention_free=False,
        is_hybrid=False,
        has_noops=False,
        use_mla=False,
        dtype=dtype,
        max_model_len=4096,
        hf_text_config=SimpleNamespace(**text),
        get_sliding_window=lambda: window,
        get_total_num_hidden_layers=lambda: layers,
        # vLLM: max(1, heads // tp) per rank (heads replicated when tp > heads)
        get_num_kv_heads=lambda parallel: max(1, kv_heads // parallel.tensor_parallel_size),
        get_head_size=lambda: head,
    )
    return SimpleNamespace(
        model_config=model,
        parallel_config=SimpleNamespace(tensor_parallel_size=tp),
        cache_config=SimpleNamespace(cache_dtype=cache),
    )


def test_llava_7b_from_vllm_config():
    layout = from_vllm(vllm_config(32, 32, 128, torch.float16))
    assert layout.bytes_per_token() == 524_288


def test_qwen_7b_tensor_parallel_counts_replicated_heads():
    # TP 2: 2 heads per rank, 4 in all; TP 8: 4 heads cannot split 8 ways, each rank keeps a
    # copy of one, 8 in all: twice the memory per token.
    assert from_vllm(vllm_config(28, 4, 128, torch.bfloat16, tp=2)).bytes_per_token() == 57_344
    assert from_vllm(vllm_config(28, 4, 128, torch.bfloat16, tp=8)).bytes_per_token() == 114_688


def test_kv_cache_dtype_overrides_the_model_dtype():
    layout = from_vllm(vllm_config(28, 4, 128, torch.bfloat16, cache="fp8"))
    assert layout.dtype_bytes == 1 and layout.bytes_per_token() == 28_672


def test_a_sliding_window_shorter_than_the_context_is_declined():
    assert from_vllm(vllm_config(28, 4, 128, torch.bfloat16, window=1024)) is None
    # Qwen2 configs carry a window they do not use; and a window >= the context drops nothing.
    unused = vllm_config(28, 4, 128, torch.bfloat16, window=1024, use_sliding_window=False)
    assert from_vllm(unused).bytes_per_token() == 57_344
    assert from_vllm(vllm_config(28, 4, 128, torch.bfloat16, window=32768)) is not None
