"""Padded token batches shared by the selector backends (pure torch, no vLLM)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Norms below this are treated as zero vectors: cosine 0 with everything, never NaN.
NORM_EPS = 1e-12
# Upper bound on the elements of one [B, N, C] similarity block (64 MiB in float32).
# Keeps seed-set distances O(N * D) in memory whatever the core size is.
BLOCK_ELEMS = 1 << 24


def core_size(keep: int, core_ratio: float) -> int:
    return min(keep, max(1, round(core_ratio * keep)))


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def inv_norms(x: torch.Tensor) -> torch.Tensor:
    """``1 / ||row||``; a zero row gets a huge factor times a zero dot product, i.e. 0."""
    return torch.linalg.vector_norm(x, dim=-1).clamp_min(NORM_EPS).reciprocal()


def pad_rows(visuals: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack ``visuals`` as ``[B, Nmax, D]`` in the compute dtype, zero-padded.

    Returns ``(rows, inv_norms [B, Nmax], valid [B, Nmax])``. Rows are not normalised:
    cosines are dot products scaled by the two inverse norms, which saves writing a
    normalised copy of every token (measured: the division alone cost more than the
    whole greedy fill at N=576, D=4096). A single image is a view, not a copy.
    """
    first = visuals[0]
    dtype = compute_dtype(first)
    if len(visuals) == 1:
        rows = first.to(dtype).unsqueeze(0)
    else:
        n_max = max(v.shape[0] for v in visuals)
        rows = first.new_zeros((len(visuals), n_max, first.shape[1]), dtype=dtype)
        for b, v in enumerate(visuals):
            rows[b, : v.shape[0]] = v
    valid = lengths_mask([v.shape[0] for v in visuals], rows.shape[1], first.device)
    return rows, inv_norms(rows), valid


def lengths_mask(lengths: Sequence[int], width: int, device: torch.device) -> torch.Tensor:
    return torch.arange(width, device=device) < to_device(lengths, torch.long, device).unsqueeze(1)


def to_device(values: Sequence, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small host list as a tensor on ``device``, without a host sync on CUDA.

    A copy from pageable memory synchronizes the stream first (CUDA's documented
    behaviour), so it would wait for everything queued, e.g. the vision tower; a pinned
    buffer copied with ``non_blocking`` does not (torch's pinned-memory cache keeps the
    buffer alive until the copy is done).
    """
    t = torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
