"""Plain float64 reference of ZSPAPrune / DivPrune, written from the papers (README, method).

Deliberately independent of ``zspa_vllm.pruning``: full Gram matrix, Python-level
sorting and bookkeeping, no batching, no running-update tricks. Slow and obvious.
Each function also returns the score vector of every step, so a test can tell a
real divergence from a near-tie that float32 may legitimately break the other way.
"""

from __future__ import annotations

import torch


def _unit(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    norms = x.norm(dim=-1, keepdim=True)
    return torch.where(norms > 0, x / norms.clamp_min(1e-300), torch.zeros_like(x))


def relevance(visual: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    p = _unit(prompt.double().mean(dim=0))
    return _unit(visual) @ p


def top_by_relevance(rel: torch.Tensor, k: int) -> list[int]:
    # Highest first; equal scores: lower index first.
    return sorted(range(rel.shape[0]), key=lambda i: (-float(rel[i]), i))[:k]


def greedy_max_min(
    dist: torch.Tensor, start: list[int], steps: int
) -> tuple[list[int], list[torch.Tensor]]:
    """Add ``steps`` tokens, each maximising its min distance to the kept set."""
    kept = list(start)
    nearest = dist[:, kept].min(dim=1).values
    picks, scores = [], []
    for _ in range(steps):
        score = nearest.clone()
        score[kept] = float("-inf")
        j = _first_max(score)
        scores.append(score)
        picks.append(j)
        kept.append(j)
        nearest = torch.minimum(nearest, dist[:, j])
    return picks, scores


def _first_max(score: torch.Tensor) -> int:
    return int((score == score.max()).nonzero()[0, 0])


def zspa(visual, prompt, keep, core_ratio=0.6):
    """Returns (core, fill, rel, fill_scores)."""
    rel = relevance(visual, prompt)
    k = min(keep, max(1, round(core_ratio * keep)))
    core = top_by_relevance(rel, k)
    u = _unit(visual)
    dist = 1.0 - u @ u.T
    fill, scores = greedy_max_min(dist, core, keep - k)
    return core, fill, rel, scores


def divprune(visual, keep):
    """Returns (order, scores): seed = token whose nearest neighbour is farthest."""
    u = _unit(visual)
    dist = 1.0 - u @ u.T
    n = dist.shape[0]
    nn = dist.clone()
    nn.fill_diagonal_(float("inf"))
    seed_score = nn.min(dim=1).values if n > 1 else torch.zeros(1, dtype=torch.float64)
    seed = _first_max(seed_score)
    fill, scores = greedy_max_min(dist, [seed], keep - 1)
    return [seed, *fill], [seed_score, *scores]
