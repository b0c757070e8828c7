"""Visual-token selectors: ZSPAPrune and the baselines that fit the same slot.

Pure torch, no vLLM and no FastAPI: this module is the algorithm, imported by the
model adapters (worker process), the processor (API process), tests and benchmarks.

Conventions shared by every selector:

* ``visual`` is ``[N, D]``: the visual tokens after the vision tower and projector,
  i.e. the vectors the LLM would receive. Any floating dtype, CPU or CUDA.
* ``prompt`` is ``[M, D]``: the LLM input embeddings of the prompt's text tokens, on
  the same device. ``M`` may be 0 (no text).
* ``keep`` is the budget ``K`` (>= 1), usually ``keep_count(N, prune_ratio)``.
* The result is a ``torch.long`` tensor of ``min(keep, N)`` indices into ``visual``,
  strictly increasing (original order), on ``visual.device``. If ``keep >= N`` every
  index is returned and nothing is computed.
* Similarities are computed in float32 (float64 inputs stay float64). Zero vectors have
  cosine 0 with everything (never NaN). Ties break toward the lower index.
* With no text tokens (``M == 0``) relevance is undefined; the prompt-aware selectors
  (``zspa``, ``relevance``) then fall back to ``divprune_select``, the prompt-agnostic
  diversity rule, so the request is still pruned to ``keep`` tokens.

Two backends compute the same selections (``ZSPA_SELECT_BACKEND``, see ``envs.py``):

* torch loop (CPU, and images too large for the kernel): memory O(N * D). The greedy
  max-min fill keeps a running ``[N]`` vector of the distance to the nearest kept token
  and computes one ``[N]`` row of similarities per step; seed-set distances are computed
  in column chunks of bounded size. On the CPU a full Gram matrix lost at every
  benchmarked shape (benchmarks/bench_selection.py): N^2 * D multiply-adds against
  keep * N * D.
* Gram + kernel (CUDA, float32 compute): one batched matmul gives every cosine, then the
  whole fill of every image runs as ONE Triton launch (``greedy_kernel.py``). On a GPU the
  loop's cost is K x (launches + host syncs), not arithmetic. Extra memory is the Gram,
  ``B * Nmax^2 * 4`` bytes, kept under ``gram_max_bytes()`` per launch by splitting the
  batch; a single image past it (N > 8192 by default) takes the torch loop.
  ``peak_extra_bytes`` bounds a whole call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from zspa_vllm import envs, gram_backend, greedy_kernel
from zspa_vllm._rows import BLOCK_ELEMS as _BLOCK_ELEMS
from zspa_vllm._rows import compute_dtype as _compute_dtype
from zspa_vllm._rows import core_size as _core_size
from zspa_vllm._rows import inv_norms as _inv_norms
from zspa_vllm._rows import lengths_mask as _lengths_mask
from zspa_vllm._rows import pad_rows as _pad_rows
from zspa_vllm.option import RATIO

__all__ = [
    "GRAM_MAX_BYTES",
    "METHODS",
    "divprune_select",
    "divprune_select_batch",
    "gram_max_bytes",
    "keep_count",
    "peak_extra_bytes",
    "random_select",
    "relevance_select",
    "select",
    "select_batch",
    "uniform_select",
    "zspa_order",
    "zspa_select",
    "zspa_select_batch",
]

DEFAULT_CORE_RATIO = 0.6
"""Share of the budget filled by relevance. The paper tunes it per task and publishes
no default; 0.6 is the common reimplementation choice (README, "How it works")."""


GRAM_MAX_BYTES = 1 << 28
"""Default bound on the float32 Gram matrices of one kernel launch (256 MiB: one 8192-token
image, or 16 images of 2048 tokens); ``ZSPA_GRAM_MAX_MIB`` overrides it. Larger batches are
split; a larger image uses the loop."""


def gram_max_bytes() -> int:
    """The Gram bound in force: ``ZSPA_GRAM_MAX_MIB`` when set, else ``GRAM_MAX_BYTES``."""
    mib = envs.gram_max_mib()
    return GRAM_MAX_BYTES if mib is None else mib << 20


def peak_extra_bytes(sizes: Sequence[int], d: int) -> int:
    """Upper bound on the extra memory of one ``select_batch`` call on the kernel backend.

    For images of ``sizes`` tokens of width ``d``: the float32 padded copy of the tokens
    (``B * Nmax * D * 4``; a view for one float32 image), one launch's Gram (at most
    ``gram_max_bytes()``), one gathered block of seed columns (at most 64 MiB) and O(B * N)
    vectors. The torch loop needs less (O(N * D)).
    """
    b, n = len(sizes), max(sizes, default=0)
    square = b * n * n * 4
    return (
        b * n * d * 4
        + min(gram_max_bytes(), square)
        + min(_BLOCK_ELEMS * 4, square)
        + (16 * b * n * 8)
    )


def keep_count(n: int, prune_ratio: float) -> int:
    """Number of visual tokens kept out of ``n`` at ``prune_ratio``.

    ``max(1, min(n, round(n * (1 - prune_ratio))))`` with Python's ``round``
    (banker's rounding), so the processor (which emits the placeholders) and the model
    (which selects the rows) always agree.

    Raises:
        ValueError: ``prune_ratio`` is not a real number in [0, 1) (NaN included), or
            ``n`` is not a positive integer.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    RATIO.check(prune_ratio)
    return max(1, min(n, round(n * (1 - prune_ratio))))


def _check_inputs(visual: torch.Tensor, prompt: torch.Tensor | None, keep: int) -> int:
    if not isinstance(visual, torch.Tensor) or visual.dim() != 2:
        raise ValueError(f"visual must be a 2-D tensor [N, D], got {_describe(visual)}")
    if not visual.is_floating_point():
        raise ValueError(f"visual must be floating point, got {visual.dtype}")
    if visual.shape[0] < 1:
        raise ValueError("visual must hold at least one token, got N=0")
    if prompt is not None:
        if not isinstance(prompt, torch.Tensor) or prompt.dim() != 2:
            raise ValueError(f"prompt must be a 2-D tensor [M, D], got {_describe(prompt)}")
        if prompt.shape[1] != visual.shape[1]:
            raise ValueError(
                f"prompt width D={prompt.shape[1]} differs from visual width D={visual.shape[1]}"
            )
        if prompt.device != visual.device:
            raise ValueError(f"prompt is on {prompt.device} but visual is on {visual.device}")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be a positive int, got {keep!r}")
    return visual.shape[0]


def _check_core_ratio(core_ratio: float) -> float:
    if (
        isinstance(core_ratio, bool)
        or not isinstance(core_ratio, (int, float))
        or not 0.0 <= core_ratio <= 1.0
    ):
        raise ValueError(f"core_ratio must be a number in [0, 1], got {core_ratio!r}")
    return float(core_ratio)


def _describe(x: object) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__


def _all(n: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, dtype=torch.long, device=device)


def _max_sim_to(
    rows: torch.Tensor, inv: torch.Tensor, cols: torch.Tensor, col_valid: torch.Tensor
) -> torch.Tensor:
    """``[B, N]`` max cosine of every token to the tokens ``cols`` ``[B, C]`` (where valid).

    Computed in column blocks so memory stays bounded by ``_BLOCK_ELEMS``.
    """
    b, n, _ = rows.shape
    batch = torch.arange(b, device=rows.device).unsqueeze(1)
    best = torch.full((b, n), -math.inf, dtype=rows.dtype, device=rows.device)
    step = max(1, _BLOCK_ELEMS // (b * n))
    for lo in range(0, cols.shape[1], step):
        block = cols[:, lo : lo + step]
        sims = torch.bmm(rows, rows[batch, block].transpose(1, 2))  # [B, N, C]
        sims *= inv.unsqueeze(2) * inv[batch, block].unsqueeze(1)
        sims.masked_fill_(~col_valid[:, None, lo : lo + step], -math.inf)
        best = torch.maximum(best, sims.amax(dim=2))
    return best


def _greedy_fill(
    rows: torch.Tensor,
    inv: torch.Tensor,
    chosen: torch.Tensor,
    min_dist: torch.Tensor,
    steps: torch.Tensor,
) -> torch.Tensor:
    """Greedy max-min diversity fill, batched over images.

    Each step adds, per image, the token whose cosine distance to its nearest kept token
    is largest, then lowers the running distances with one ``[N]`` row of similarities:
    O(N * D) work and O(N) extra memory per step.

    Args:
        rows: ``[B, N, D]`` tokens (padding rows are zero); ``inv``: ``[B, N]`` inverse norms.
        chosen: ``[B, N]`` bool, True for tokens already kept and for padding.
        min_dist: ``[B, N]`` cosine distance of every token to its nearest kept token.
        steps: ``[B]`` long, how many tokens to add per image.

    Returns:
        ``[B, max(steps)]`` long, the added indices in the order chosen; ``-1`` past an
        image's own ``steps``.
    """
    b = rows.shape[0]
    total = int(steps.max()) if b else 0
    batch = torch.arange(b, device=rows.device)
    picks = torch.full((b, total), -1, dtype=torch.long, device=rows.device)
    score = min_dist.masked_fill(chosen, -math.inf)
    for t in range(total):
        # argmax returns the first maximum: ties go to the lower index.
        j = score.argmax(dim=1)
        picks[:, t] = torch.where(steps > t, j, -1)
        sims = torch.bmm(rows, rows[batch, j].unsqueeze(2)).squeeze(2)  # [B, N]
        sims *= inv * inv[batch, j].unsqueeze(1)
        score = torch.minimum(score, 1.0 - sims)
        score[batch, j] = -math.inf
    return picks


def _sorted_result(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    # Parts are sliced to their exact lengths (no -1 padding), so no boolean mask and no
    # host sync is needed here.
    return torch.sort(torch.cat(parts)).values


def _relevance(rows: torch.Tensor, inv: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    """Cosine between each token of ``rows`` ``[N, D]`` and the mean prompt embedding."""
    p = prompt.to(rows.dtype).mean(dim=0)
    return (rows @ p) * inv * _inv_norms(p)


def _mark(chosen: torch.Tensor, idx: torch.Tensor, idx_valid: torch.Tensor) -> torch.Tensor:
    """Set ``chosen[b, idx[b, c]] = True`` wherever ``idx_valid[b, c]``."""
    batch = torch.arange(idx.shape[0], device=idx.device).unsqueeze(1).expand_as(idx)
    chosen[batch[idx_valid], idx[idx_valid]] = True
    return chosen


def _zspa_order_batch(
    visuals: Sequence[torch.Tensor],
    prompts: Sequence[torch.Tensor],
    keeps: Sequence[int],
    core_ratios: Sequence[float],
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """ZSPAPrune selections in the order they are made: ``(core, fill)`` per item.

    ``core`` is sorted by decreasing relevance, ``fill`` is in greedy order. Every item
    must have ``keep < N`` and ``M > 0``; the public functions route the other cases.
    """
    rows, inv, valid = _pad_rows(visuals)
    b, n_max, _ = rows.shape
    rel = torch.full((b, n_max), -math.inf, dtype=rows.dtype, device=rows.device)
    for i, (v, p) in enumerate(zip(visuals, prompts, strict=True)):
        n = v.shape[0]
        rel[i, :n] = _relevance(rows[i, :n], inv[i, :n], p)
    # Stable descending sort: equal relevance keeps index order, so ties go low.
    order = torch.sort(rel, dim=1, descending=True, stable=True).indices
    cores = [_core_size(k, c) for k, c in zip(keeps, core_ratios, strict=True)]
    core_idx = order[:, : max(cores)]
    core_valid = _lengths_mask(cores, core_idx.shape[1], rows.device)
    chosen = _mark(~valid, core_idx, core_valid)
    min_dist = 1.0 - _max_sim_to(rows, inv, core_idx, core_valid)
    steps = [k - c for k, c in zip(keeps, cores, strict=True)]
    fill = _greedy_fill(rows, inv, chosen, min_dist, torch.tensor(steps, device=rows.device))
    return [(core_idx[i, : cores[i]], fill[i, : steps[i]]) for i in range(b)]


def _divprune_order_batch(
    visuals: Sequence[torch.Tensor], keeps: Sequence[int]
) -> list[torch.Tensor]:
    """DivPrune selections in greedy order. Every item must have ``keep < N``.

    Seeded as DivPrune (Alvar et al., CVPR 2025) does: the first token is the one whose
    nearest neighbour is farthest away (largest min cosine distance to any other token);
    then greedy max-min distance. The seed needs every pairwise similarity (N^2 * D
    work), computed in row blocks so memory stays O(N * D).
    """
    rows, inv, valid = _pad_rows(visuals)
    b, n_max, _ = rows.shape
    nn_sim = torch.full((b, n_max), -math.inf, dtype=rows.dtype, device=rows.device)
    step = max(1, _BLOCK_ELEMS // (b * n_max))
    for lo in range(0, n_max, step):
        hi = min(n_max, lo + step)
        sims = torch.bmm(rows[:, lo:hi], rows.transpose(1, 2))  # [B, C, N]
        sims *= inv[:, lo:hi].unsqueeze(2) * inv.unsqueeze(1)
        sims.masked_fill_(~valid[:, None, :], -math.inf)
        diag = torch.arange(lo, hi, device=rows.device)
        sims[:, diag - lo, diag] = -math.inf  # a token is not its own neighbour
        nn_sim[:, lo:hi] = sims.amax(dim=2)
    # A one-token image has no neighbour (-inf similarity): it is trivially the seed.
    seed_score = (1.0 - nn_sim).masked_fill(~valid, -math.inf)
    seed = seed_score.argmax(dim=1, keepdim=True)  # first maximum: ties go low
    seed_valid = torch.ones_like(seed, dtype=torch.bool)
    chosen = _mark(~valid, seed, seed_valid)
    min_dist = 1.0 - _max_sim_to(rows, inv, seed, seed_valid)
    steps = torch.tensor([k - 1 for k in keeps], device=rows.device)
    fill = _greedy_fill(rows, inv, chosen, min_dist, steps)
    return [torch.cat([seed[i], fill[i, : keeps[i] - 1]]) for i in range(b)]


def _use_kernel(device: torch.device, dtype: torch.dtype, n: int) -> bool:
    backend = envs.select_backend()
    if backend == "torch" or dtype != torch.float32 or n > greedy_kernel.MAX_BLOCK_N:
        return False
    if n * n * 4 > gram_max_bytes():
        return False
    if backend == "triton":
        if not greedy_kernel.available():
            raise RuntimeError(f"{envs.SELECT_BACKEND}=triton but Triton is not installed")
        return True
    return device.type == "cuda" and greedy_kernel.available()


def _plan(indices: Sequence[int], visuals: Sequence[torch.Tensor]) -> list[tuple[list[int], bool]]:
    """Split ``indices`` into ``(group, use_kernel)`` runs that share one padded tensor.

    Kernel groups are sorted by N (less padding) and cut so each launch's Gram matrices
    fit ``gram_max_bytes()``; everything else runs as one torch group per device/D/dtype.
    """
    budget = gram_max_bytes()
    plan: list[tuple[list[int], bool]] = []
    for group in _batchable(indices, visuals):
        v0 = visuals[group[0]]
        dtype = _compute_dtype(v0)
        fits = [i for i in group if _use_kernel(v0.device, dtype, visuals[i].shape[0])]
        rest = [i for i in group if i not in fits]
        chunk: list[int] = []
        for i in sorted(fits, key=lambda i: visuals[i].shape[0]):
            n = visuals[i].shape[0]  # the largest so far: the chunk's padded width
            if chunk and (len(chunk) + 1) * n * n * 4 > budget:
                plan.append((chunk, True))
                chunk = []
            chunk.append(i)
        if chunk:
            plan.append((chunk, True))
        if rest:
            plan.append((rest, False))
    return plan


def _batchable(indices: Sequence[int], visuals: Sequence[torch.Tensor]) -> list[list[int]]:
    """Split ``indices`` into groups that can share one padded tensor (device, D, dtype)."""
    groups: dict[tuple[torch.device, int, torch.dtype], list[int]] = {}
    for i in indices:
        v = visuals[i]
        groups.setdefault((v.device, v.shape[1], _compute_dtype(v)), []).append(i)
    return list(groups.values())


def zspa_select_batch(
    visuals: Sequence[torch.Tensor],
    prompts: Sequence[torch.Tensor],
    keeps: Sequence[int],
    core_ratio: float | Sequence[float] = DEFAULT_CORE_RATIO,
) -> list[torch.Tensor]:
    """``zspa_select`` for several images at once (different ``N``, same ``D`` and device).

    The model side batches images from different requests: one call pads them to
    ``[B, Nmax, D]`` and runs the greedy steps for all of them together, so the
    per-step Python and kernel-launch overhead is paid once per batch, not per image.

    Args:
        visuals: B tensors ``[N_b, D]``.
        prompts: B tensors ``[M_b, D]`` (``M_b`` may be 0).
        keeps: B budgets.
        core_ratio: one value for all items, or one per item.

    Returns:
        B sorted ``torch.long`` index tensors, each as ``zspa_select`` would return.
    """
    n = len(visuals)
    if len(prompts) != n or len(keeps) != n:
        raise ValueError(
            f"visuals, prompts and keeps must have one entry per image, "
            f"got {n}, {len(prompts)}, {len(keeps)}"
        )
    ratios = [core_ratio] * n if isinstance(core_ratio, (int, float)) else list(core_ratio)
    if len(ratios) != n:
        raise ValueError(f"core_ratio must be one number or {n} numbers, got {len(ratios)}")
    ratios = [_check_core_ratio(r) for r in ratios]
    sizes = [_check_inputs(v, p, k) for v, p, k in zip(visuals, prompts, keeps, strict=True)]
    out: list[torch.Tensor | None] = [None] * n
    aware, agnostic = [], []
    for i, (v, p) in enumerate(zip(visuals, prompts, strict=True)):
        if keeps[i] >= sizes[i]:
            out[i] = _all(sizes[i], v.device)
        elif p.shape[0] == 0:
            agnostic.append(i)
        else:
            aware.append(i)
    for group, kernel in _plan(aware, visuals):
        picks = (gram_backend.zspa_order if kernel else _zspa_order_batch)(
            [visuals[i] for i in group],
            [prompts[i] for i in group],
            [keeps[i] for i in group],
            [ratios[i] for i in group],
        )
        for i, (core, fill) in zip(group, picks, strict=True):
            out[i] = _sorted_result([core, fill])
    _divprune_into(out, agnostic, visuals, keeps)
    return out  # type: ignore[return-value]


def _divprune_into(
    out: list, indices: Sequence[int], visuals: Sequence[torch.Tensor], keeps: Sequence[int]
) -> None:
    for group, kernel in _plan(indices, visuals):
        picks = (gram_backend.divprune_order if kernel else _divprune_order_batch)(
            [visuals[i] for i in group], [keeps[i] for i in group]
        )
        for i, order in zip(group, picks, strict=True):
            out[i] = _sorted_result([order])


def divprune_select_batch(
    visuals: Sequence[torch.Tensor],
    prompts: Sequence[torch.Tensor | None] | None,
    keeps: Sequence[int],
) -> list[torch.Tensor]:
    """``divprune_select`` for several images at once (prompts are ignored).

    Returns:
        One sorted ``torch.long`` index tensor per image, as ``divprune_select`` returns.
    """
    if len(keeps) != len(visuals):
        raise ValueError(
            f"visuals and keeps must have one entry per image, got {len(visuals)}, {len(keeps)}"
        )
    sizes = [_check_inputs(v, None, k) for v, k in zip(visuals, keeps, strict=True)]
    out: list[torch.Tensor | None] = [None] * len(visuals)
    todo = []
    for i, (v, n) in enumerate(zip(visuals, sizes, strict=True)):
        if keeps[i] >= n:
            out[i] = _all(n, v.device)
        else:
            todo.append(i)
    _divprune_into(out, todo, visuals, keeps)
    return out  # type: ignore[return-value]


def zspa_select(
    visual: torch.Tensor,
    prompt: torch.Tensor,
    keep: int,
    core_ratio: float = DEFAULT_CORE_RATIO,
) -> torch.Tensor:
    """ZSPAPrune: keep the tokens most relevant to the prompt, fill with the most diverse.

    1. prompt vector = mean of ``prompt`` rows; relevance = cosine(visual_i, prompt vector);
    2. core = the ``clamp(round(core_ratio * keep), 1, keep)`` most relevant tokens;
    3. fill to ``keep`` greedily, each step adding the token whose cosine distance
       (1 - cos) to its nearest kept token is largest (max-min diversity seeded with
       the core);
    4. return the kept indices in original order.

    Args:
        visual: ``[N, D]`` float tensor, post-projector visual tokens.
        prompt: ``[M, D]`` float tensor on the same device, input embeddings of the
            prompt's text tokens. ``M == 0`` falls back to ``divprune_select``.
        keep: budget ``K >= 1``; ``K >= N`` returns every index.
        core_ratio: share of ``K`` chosen by relevance, in [0, 1]; 1.0 equals
            ``relevance_select``.

    Returns:
        ``[min(K, N)]`` ``torch.long`` indices, strictly increasing, on ``visual.device``.

    Raises:
        ValueError: malformed shapes, devices, ``keep`` or ``core_ratio``.
    """
    return zspa_select_batch([visual], [prompt], [keep], core_ratio)[0]


def zspa_order(
    visual: torch.Tensor,
    prompt: torch.Tensor,
    keep: int,
    core_ratio: float = DEFAULT_CORE_RATIO,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(core, fill)`` indices of ``zspa_select`` in the order they were chosen.

    For diagnostics and tests: ``core`` by decreasing relevance, ``fill`` in greedy order.
    Requires ``keep < N`` and ``M > 0`` (the cases where the rule itself runs).
    """
    n = _check_inputs(visual, prompt, keep)
    if keep >= n or prompt.shape[0] == 0:
        raise ValueError("zspa_order needs keep < N and a non-empty prompt")
    ((_, kernel),) = _plan([0], [visual])
    order = gram_backend.zspa_order if kernel else _zspa_order_batch
    return order([visual], [prompt], [keep], [_check_core_ratio(core_ratio)])[0]


def relevance_select(visual: torch.Tensor, prompt: torch.Tensor, keep: int) -> torch.Tensor:
    """Top-``keep`` tokens by cosine to the mean prompt embedding (no diversity term).

    Same conventions as ``zspa_select``; ``M == 0`` falls back to ``divprune_select``.
    """
    n = _check_inputs(visual, prompt, keep)
    if keep >= n:
        return _all(n, visual.device)
    if prompt.shape[0] == 0:
        return divprune_select(visual, prompt, keep)
    rows = visual.to(_compute_dtype(visual))
    if _use_kernel(visual.device, rows.dtype, n):  # zspa's arithmetic on this backend
        valid = torch.ones(1, n, dtype=torch.bool, device=visual.device)
        rel = gram_backend.relevance_batch(
            rows.unsqueeze(0), _inv_norms(rows).unsqueeze(0), valid, [prompt]
        )[0]
    else:
        rel = _relevance(rows, _inv_norms(rows), prompt)
    top = torch.sort(rel, descending=True, stable=True).indices[:keep]
    return torch.sort(top).values


def divprune_select(visual: torch.Tensor, prompt: torch.Tensor | None, keep: int) -> torch.Tensor:
    """DivPrune: max-min diversity only, prompt-agnostic (``prompt`` is ignored).

    Seeded with the token whose nearest neighbour is farthest, as DivPrune does, then
    greedy max-min cosine distance. The seed costs N^2 * D (not memory: row blocks).
    """
    return divprune_select_batch([visual], None, [keep])[0]


def random_select(
    visual: torch.Tensor, prompt: torch.Tensor | None, keep: int, seed: int = 0
) -> torch.Tensor:
    """``keep`` tokens uniformly at random, deterministic for a given ``seed``.

    The permutation is drawn on the CPU with its own generator, so the result is the
    same on every device and does not touch the global RNG.
    """
    n = _check_inputs(visual, None, keep)
    if keep >= n:
        return _all(n, visual.device)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=gen)[:keep]
    return torch.sort(idx).values.to(visual.device)


def uniform_select(visual: torch.Tensor, prompt: torch.Tensor | None, keep: int) -> torch.Tensor:
    """``keep`` evenly spaced tokens: index ``floor((2i + 1) * N / (2 * keep))``.

    The centre of each of ``keep`` equal slices of the token sequence; strictly
    increasing because slices are at least one token wide.
    """
    n = _check_inputs(visual, None, keep)
    if keep >= n:
        return _all(n, visual.device)
    i = torch.arange(keep, dtype=torch.long, device=visual.device)
    return (2 * i + 1) * n // (2 * keep)


_Selector = Callable[..., torch.Tensor]

METHODS: dict[str, _Selector] = {
    "zspa": zspa_select,
    "relevance": relevance_select,
    "divprune": divprune_select,
    "random": random_select,
    "uniform": uniform_select,
}
"""The built-in one-image selectors by name. Requests, the server and the worker go
through the registry in ``zspa_vllm.selectors`` (built-ins plus entry-point plugins)."""


def select(
    method: str, visual: torch.Tensor, prompt: torch.Tensor, keep: int, **options: object
) -> torch.Tensor:
    """One image with the registered method ``method`` (``zspa_vllm.selectors``)."""
    return select_batch(method, [visual], [prompt], [keep], **options)[0]


def select_batch(
    method: str,
    visuals: Sequence[torch.Tensor],
    prompts: Sequence[torch.Tensor],
    keeps: Sequence[int],
    **options: object,
) -> list[torch.Tensor]:
    """Several images with the registered method ``method``, in one call where the method
    has a batch path (``zspa`` and ``divprune`` run as one padded batch)."""
    from zspa_vllm import selectors  # the registry imports this module

    return selectors.get(method)(visuals, prompts, keeps, **options)
