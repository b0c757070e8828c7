"""The Gram + one-launch-kernel backend of the greedy selectors (pure torch + Triton).

One batched matmul gives every cosine of every image (padded to the largest N); the seeds
(relevance core, DivPrune's most isolated token) come from batched ops on it, and the whole
greedy fill runs as one Triton launch (``greedy_kernel.py``): a fixed number of launches
per call and no host sync, where the torch loop in ``pruning.py`` pays K x (launches +
sync). ``pruning._plan`` decides which images come here and keeps each launch's Gram
under ``pruning.gram_max_bytes()``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from zspa_vllm import greedy_kernel
from zspa_vllm._rows import (
    BLOCK_ELEMS,
    core_size,
    inv_norms,
    lengths_mask,
    pad_rows,
    to_device,
)


def cosine_gram(rows: torch.Tensor, inv: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[B, N, N]`` cosines of ``rows``; padding columns and the diagonal are ``-inf``.

    A token is never its own neighbour (DivPrune's seed) and ``-inf`` can never be a max
    or lower a min distance, so the greedy kernel reads rows of this matrix as they are.
    Scaled in place: no second ``[B, N, N]`` buffer.
    """
    g = torch.bmm(rows, rows.transpose(1, 2))
    g.mul_(inv.unsqueeze(2)).mul_(inv.unsqueeze(1))
    g.masked_fill_(~valid.unsqueeze(1), -math.inf)
    g.diagonal(dim1=1, dim2=2).fill_(-math.inf)
    return g


def mark_scatter(valid: torch.Tensor, idx: torch.Tensor, idx_valid: torch.Tensor) -> torch.Tensor:
    """``~valid`` with ``idx[b, c]`` set wherever ``idx_valid[b, c]`` (no host sync)."""
    hits = torch.zeros(valid.shape, dtype=torch.int32, device=valid.device)
    hits.scatter_add_(1, idx, idx_valid.to(torch.int32))
    return ~valid | (hits > 0)


def prompt_vectors(prompts: Sequence[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """``[B, D]`` mean of each prompt's rows, in a fixed number of launches."""
    lengths = [p.shape[0] for p in prompts]
    device = prompts[0].device
    # Segment id of every prompt row, built on the device; ``output_size`` spares the sync
    # repeat_interleave would need to size its output (and a Python list of every row).
    counts = to_device(lengths, torch.long, device)
    seg = torch.repeat_interleave(
        torch.arange(len(prompts), device=device), counts, output_size=sum(lengths)
    )
    flat = torch.cat(list(prompts)).to(dtype)
    sums = flat.new_zeros((len(prompts), flat.shape[1])).index_add_(0, seg, flat)
    return sums / counts.to(dtype).unsqueeze(1)


def max_gram_over(g: torch.Tensor, cols: torch.Tensor, col_valid: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` max of ``g[b, i, cols[b, c]]`` over valid ``c``, gathered in column blocks
    of at most ``BLOCK_ELEMS`` so a large core never costs a second Gram-sized buffer.
    A core token's own (diagonal, ``-inf``) entry does not matter: it is chosen already."""
    b, n, _ = g.shape
    best = torch.full((b, n), -math.inf, dtype=g.dtype, device=g.device)
    step = max(1, BLOCK_ELEMS // (b * n))
    for lo in range(0, cols.shape[1], step):
        block = cols[:, lo : lo + step]
        sims = g.gather(2, block.unsqueeze(1).expand(b, n, block.shape[1]))
        sims.masked_fill_(~col_valid[:, None, lo : lo + step], -math.inf)
        best = torch.maximum(best, sims.amax(dim=2))
    return best


def relevance_batch(
    rows: torch.Tensor, inv: torch.Tensor, valid: torch.Tensor, prompts: Sequence[torch.Tensor]
) -> torch.Tensor:
    """``[B, N]`` relevance of padded ``rows`` (``-inf`` on padding), batched: this
    backend's form of ``pruning._relevance``. Float rounding differs from it, so each backend uses
    one form for ``zspa`` and ``relevance`` alike (core_ratio 1.0 == relevance_select)."""
    p = prompt_vectors(prompts, rows.dtype)
    rel = torch.bmm(rows, p.unsqueeze(2)).squeeze(2) * inv * inv_norms(p).unsqueeze(1)
    return rel.masked_fill_(~valid, -math.inf)


def zspa_order(
    visuals: Sequence[torch.Tensor],
    prompts: Sequence[torch.Tensor],
    keeps: Sequence[int],
    core_ratios: Sequence[float],
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``pruning._zspa_order_batch`` on this backend (same contract)."""
    rows, inv, valid = pad_rows(visuals)
    b, n_max, _ = rows.shape
    g = cosine_gram(rows, inv, valid)
    rel = relevance_batch(rows, inv, valid, prompts)
    order = torch.sort(rel, dim=1, descending=True, stable=True).indices
    cores = [core_size(k, c) for k, c in zip(keeps, core_ratios, strict=True)]
    core_idx = order[:, : max(cores)]
    core_valid = lengths_mask(cores, core_idx.shape[1], rows.device)
    chosen = mark_scatter(valid, core_idx, core_valid)
    score = (1.0 - max_gram_over(g, core_idx, core_valid)).masked_fill_(chosen, -math.inf)
    steps = [k - c for k, c in zip(keeps, cores, strict=True)]
    fill = greedy_kernel.greedy_fill(g, score, steps)
    return [(core_idx[i, : cores[i]], fill[i, : steps[i]]) for i in range(b)]


def divprune_order(visuals: Sequence[torch.Tensor], keeps: Sequence[int]) -> list[torch.Tensor]:
    """``pruning._divprune_order_batch`` on this backend (same contract)."""
    rows, inv, valid = pad_rows(visuals)
    b, n_max, _ = rows.shape
    g = cosine_gram(rows, inv, valid)
    # Diagonal and padding are -inf: the max is over real neighbours only.
    seed = (1.0 - g.amax(dim=2)).masked_fill_(~valid, -math.inf).argmax(dim=1, keepdim=True)
    chosen = mark_scatter(valid, seed, torch.ones_like(seed, dtype=torch.bool))
    score = (1.0 - max_gram_over(g, seed, torch.ones_like(chosen[:, :1]))).masked_fill_(
        chosen, -math.inf
    )
    fill = greedy_kernel.greedy_fill(g, score, [k - 1 for k in keeps])
    return [torch.cat([seed[i], fill[i, : keeps[i] - 1]]) for i in range(b)]
