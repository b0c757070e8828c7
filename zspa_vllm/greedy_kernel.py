"""The greedy max-min fill in one Triton launch: the GPU path of ``zspa_vllm.pruning``.

Pure torch + Triton, no vLLM. On a GPU the per-step torch loop costs K x (a few small
launches and a host sync), which at N=576 took longer than the prefill it saved. Here the
caller computes the cosine Gram matrix once (one batched matmul) and this kernel runs the
whole fill: one program per image, the running score vector held in registers, each step
an on-chip argmax and one coalesced read of a Gram row. All images of a call share one
launch whatever their N (rows past an image's own N are padding).

Compilation: one kernel per ``BLOCK_N`` bucket (a power of two >= N). The sizes and
strides are not specialized (``do_not_specialize``), so N=576 and N=577 share a binary;
``warmup`` compiles every bucket up to a size once, and Triton caches the binaries on disk
(``TRITON_CACHE_DIR``), so no request pays a compile after start-up.

Tests run the kernel on the CPU with ``TRITON_INTERPRET=1`` (set before Triton is imported).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

from zspa_vllm._rows import to_device

__all__ = ["MAX_BLOCK_N", "available", "greedy_fill", "warmup"]

MAX_BLOCK_N = 16384
"""Largest N one program holds in registers (16 scores per thread at 32 warps). Larger
images take the torch loop; so do images whose Gram is past pruning's memory bound."""

_MIN_BLOCK_N = 16


@functools.cache
def available() -> bool:
    """Triton importable (it ships with PyPI's torch on Linux)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _kernel():
    # Imported lazily: TRITON_INTERPRET is read at import time, and the CPU path must not
    # pay Triton's import.
    import triton
    import triton.language as tl

    @triton.jit(do_not_specialize=["n", "steps_max", "stride_gb", "stride_gi", "stride_sb"])
    def greedy_fill_kernel(
        gram_ptr,  # fp32 [B, >=1, N]: cosines; row j of image b at b*stride_gb + j*stride_gi
        score_ptr,  # fp32 [B, N]: distance to the nearest kept token, -inf where not selectable
        steps_ptr,  # int32 [B]: tokens to add per image
        picks_ptr,  # int64 [B, steps_max]: out, -1 past an image's own steps (pre-filled)
        n,
        steps_max,
        stride_gb,
        stride_gi,
        stride_sb,
        BLOCK_N: tl.constexpr,
    ):
        b = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK_N)
        in_range = offs < n
        score = tl.load(score_ptr + b * stride_sb + offs, mask=in_range, other=-float("inf"))
        n_steps = tl.load(steps_ptr + b)
        gram = gram_ptr + b * stride_gb
        for t in range(0, n_steps):
            # First maximum: ties go to the lower index, as torch.argmax does.
            best = tl.max(score, axis=0)
            j = tl.min(tl.where(score == best, offs, BLOCK_N), axis=0)
            tl.store(picks_ptr + b * steps_max + t, j.to(tl.int64))
            row = tl.load(gram + j.to(tl.int64) * stride_gi + offs, mask=in_range, other=1.0)
            score = tl.minimum(score, 1.0 - row)
            score = tl.where(offs == j, -float("inf"), score)

    return greedy_fill_kernel


def _block_n(n: int) -> int:
    return max(_MIN_BLOCK_N, 1 << (n - 1).bit_length())


def _num_warps(block_n: int) -> int:
    # About 8 scores per thread keeps the vector in registers without spilling.
    return max(1, min(32, block_n // 256))


def greedy_fill(gram: torch.Tensor, score: torch.Tensor, steps: Sequence[int]) -> torch.Tensor:
    """Greedy max-min diversity fill of every image in one launch.

    Args:
        gram: ``[B, N, N]`` float32 cosine similarities (or ``[B, 1, N]`` when every
            image's first pick is row 0 and it takes one step: the warm-up uses this).
            Entries of padding columns may hold anything that is not NaN.
        score: ``[B, N]`` float32, each token's cosine distance to its nearest kept token;
            ``-inf`` for tokens already kept and for padding. Not modified.
        steps: B ints, tokens to add per image; each at most its selectable count. A host
            list, not a tensor: reading a device tensor's maximum would sync.

    Returns:
        ``[B, max(steps)]`` long, the added indices in the order chosen (ties to the lower
        index); ``-1`` past an image's own ``steps``. Same device as ``gram``.
    """
    b, _, n = gram.shape
    if n > MAX_BLOCK_N:
        raise ValueError(f"greedy_fill holds at most {MAX_BLOCK_N} tokens, got N={n}")
    assert gram.dtype == score.dtype == torch.float32 and gram.stride(2) == 1
    score = score.contiguous()
    steps_max = max(steps, default=0)
    picks = torch.full((b, steps_max), -1, dtype=torch.long, device=gram.device)
    if b == 0 or steps_max == 0:
        return picks
    block_n = _block_n(n)
    _kernel()[(b,)](
        gram, score, to_device(steps, torch.int32, gram.device), picks, n, steps_max,
        gram.stride(0), gram.stride(1), score.stride(0),
        BLOCK_N=block_n, num_warps=_num_warps(block_n),
    )  # fmt: skip
    return picks


def warmup(device: torch.device | str, max_tokens: int) -> int:
    """Compile (or load from Triton's disk cache) every bucket up to ``max_tokens``.

    Cheap in memory: each launch reads one ``[1, 1, BLOCK_N]`` row. Returns how many
    buckets were prepared (0 when Triton is missing or the device is not CUDA).
    """
    device = torch.device(device)
    if device.type != "cuda" or not available():
        return 0
    top = _block_n(min(max_tokens, MAX_BLOCK_N))
    sizes = [1 << e for e in range(int(math.log2(_MIN_BLOCK_N)), int(math.log2(top)) + 1)]
    for n in sizes:
        score = torch.full((1, n), -math.inf, device=device)
        score[0, 0] = 0.0
        greedy_fill(
            torch.zeros(1, 1, n, device=device),
            score,
            [1],
        )
    torch.cuda.synchronize(device)
    return len(sizes)
