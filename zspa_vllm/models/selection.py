"""Worker side of pruning, shared by every model family: read the per-item fields the
processor attached and select the kept rows of each item's encoder output."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from zspa_vllm import config, envs, greedy_kernel, selection_metrics
from zspa_vllm.models.processing import fields
from zspa_vllm.pruning import keep_count, peak_extra_bytes, select_batch

# Devices whose selection kernels are compiled (or loaded from Triton's disk cache).
_warm: set[torch.device] = set()


class ItemOptions:
    """The pruning fields of one modality's items in an ``embed_multimodal`` batch."""

    def __init__(self, prompt_ids, ratios, methods, core_ratios) -> None:
        self.prompt_ids: list[torch.Tensor] = rows(prompt_ids)
        self.ratios: list[float] = scalars(ratios)
        self.methods: list[int] = [int(m) for m in scalars(methods)]
        self.core_ratios: list[float] = scalars(core_ratios)

    @classmethod
    def pop(cls, kwargs: dict, modality: str) -> ItemOptions | None:
        """Remove this modality's fields from ``kwargs`` (the parent model must not see
        them); None when the batch carries none (pruning off for these items)."""
        values = [kwargs.pop(k, None) for k in fields(modality)]
        if values[1] is None:
            return None
        return cls(*values)


def rows(field: object) -> list[torch.Tensor]:
    """A batched field is one stacked tensor (equal shapes) or a list of tensors."""
    return list(field) if isinstance(field, (list, tuple)) else list(field.unbind(0))


def scalars(field: object) -> list:
    """One number per item of a batched [n, 1] field."""
    return [row.reshape(-1)[0].item() for row in rows(field)]


def select_rows(
    embeds: list[torch.Tensor], embed_input_ids, options: ItemOptions
) -> list[torch.Tensor]:
    """Sorted indices of the ``keep_count(N_i, ratio_i)`` rows each item keeps.

    Items of the same method are selected in one batched call (they may come from
    different requests). The prompt embeddings come from the LLM's own table, so they
    are exactly the vectors prefill would see.
    """
    device = embeds[0].device
    out: list[torch.Tensor | None] = [None] * len(embeds)
    by_method: dict[str, list[int]] = {}
    for i, m in enumerate(options.methods):
        by_method.setdefault(config.METHOD_NAMES[m], []).append(i)
    for method, idx in by_method.items():
        # One embedding lookup for every prompt of the batch, split back per item.
        ids = [options.prompt_ids[i] for i in idx]
        flat = embed_input_ids(torch.cat(ids).to(device, non_blocking=True))
        prompts = list(flat.split([len(t) for t in ids]))
        keeps = [keep_count(embeds[i].shape[0], options.ratios[i]) for i in idx]
        extra = {"core_ratio": [options.core_ratios[i] for i in idx]} if method == "zspa" else {}
        with selection_metrics.timed(method, len(idx), device):
            kept = select_batch(method, [embeds[i] for i in idx], prompts, keeps, **extra)
        for i, rows in zip(idx, kept, strict=True):
            out[i] = rows
    return out  # type: ignore[return-value]


def warm_up(embeds: torch.Tensor | Sequence[torch.Tensor]) -> None:
    """Prepare the selection kernel during vLLM's profiling run, once per device.

    Called on batches that prune nothing: vLLM's profiling run is the first of those and
    carries the largest batch of items the engine admits. Two things happen there:
    every kernel size up to the largest item is compiled (or loaded from Triton's disk
    cache), so no request pays a compile; and a buffer of ``peak_extra_bytes`` for that
    batch is allocated and freed, so vLLM's peak-memory profile, which sizes the KV cache,
    reserves the selector's memory too. A no-op on the CPU and with
    ``ZSPA_SELECT_BACKEND=torch``.
    """
    # ``embeds`` may be one stacked tensor (equal-size items), so no truth test on it.
    if len(embeds) == 0:
        return
    device = embeds[0].device
    if device.type != "cuda" or device in _warm or envs.select_backend() == "torch":
        return
    sizes = [e.shape[0] for e in embeds]
    greedy_kernel.warmup(device, max(sizes))
    reserve = torch.empty(peak_extra_bytes(sizes, embeds[0].shape[-1]), dtype=torch.uint8,
                          device=device)  # fmt: skip
    del reserve
    _warm.add(device)
