"""Bytes of KV cache one prompt token occupies: what each pruned visual token frees.

Tokens are not bytes: an operator sizing replicas needs the memory. For a decoder whose
every attention layer keeps every token (LLaVA's Llama / Vicuna, Qwen2-VL, Qwen2.5-VL,
Qwen3-VL), one token holds, in each layer, a key and a value of ``head_size`` per KV head:

    bytes = layers x 2 x kv_heads x head_size x dtype_bytes

MLA (DeepSeek-style) stores one latent per token and layer instead of K and V (vLLM's head
size is then the latent width and its KV-head count 1). ``kv_heads`` counts every copy in
the replica: with tensor parallelism over more ranks than KV heads, vLLM replicates heads
so each rank has one (``max(1, heads // tp) * tp``), and the copies take memory too.
Models with sliding-window or non-attention layers keep a token in only some layers, so a
pruned token frees less; ``from_vllm`` declines them (None) rather than overstate.

Pure arithmetic; ``from_vllm`` reads the numbers from vLLM's configs (vLLM imported lazily).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KVLayout:
    layers: int  # attention layers, all pipeline stages
    kv_heads: int  # KV heads stored across all tensor-parallel ranks (copies included)
    head_size: int
    dtype_bytes: int  # KV-cache element size (fp8: 1; scales not counted)
    mla: bool = False  # one latent per token and layer, not a key and a value

    def bytes_per_token(self) -> int:
        per_layer = self.kv_heads * self.head_size * (1 if self.mla else 2)
        return self.layers * per_layer * self.dtype_bytes


def from_vllm(vllm_config: Any) -> KVLayout | None:
    """The KV layout of the loaded model and KV-cache dtype; None where a token is not kept
    in every layer (sliding windows, hybrid or attention-free models)."""
    from vllm.utils.torch_utils import get_kv_cache_torch_dtype

    model, parallel = vllm_config.model_config, vllm_config.parallel_config
    if model.is_attention_free or model.is_hybrid or model.has_noops:
        return None
    window = model.get_sliding_window()
    # Qwen2's config carries a window it does not use (use_sliding_window=False); a window at
    # least the context length drops nothing either.
    used = getattr(model.hf_text_config, "use_sliding_window", True) is not False
    if window and used and window < model.max_model_len:
        return None
    tp = parallel.tensor_parallel_size
    dtype = get_kv_cache_torch_dtype(vllm_config.cache_config.cache_dtype, model.dtype)
    return KVLayout(
        layers=model.get_total_num_hidden_layers(),
        kv_heads=model.get_num_kv_heads(parallel) * tp,
        head_size=model.get_head_size(),
        dtype_bytes=dtype.itemsize,
        mla=bool(model.use_mla),
    )
