"""Worker side of pruning, shared by every model family: read the per-item fields the
processor attached and select the kept rows of each item's encoder output."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from zspa_vllm import config, envs, greedy_kernel, selectors
from zspa_vllm.pruning import keep_count, peak_extra_bytes
from zspa_vllm.seam import selection_metrics
from zspa_vllm.seam.processor import METHOD, OPTION, PRIVATE, PROMPT_IDS, RATIO, field

# Devices whose selection kernels are compiled (or loaded from Triton's disk cache).
_warm: set[torch.device] = set()


class ItemOptions:
    """The pruning fields of one modality's items in an ``embed_multimodal`` batch, decoded
    by name (``seam/processor.scalar_fields``)."""

    def __init__(self, values: dict[str, object]) -> None:
        self.prompt_ids: list[torch.Tensor] = rows(values[PROMPT_IDS])
        self.ratios: list[float] = scalars(values[RATIO])
        self.methods: list[int] = [int(m) for m in scalars(values[METHOD])]
        # Selector option name -> one value per item.
        self.params: dict[str, list[float]] = {
            k.removeprefix(OPTION): scalars(v) for k, v in values.items() if k.startswith(OPTION)
        }

    @classmethod
    def pop(cls, kwargs: dict, modality: str) -> ItemOptions | None:
        """Remove this modality's fields from ``kwargs`` (the parent model must not see
        them); None when the batch carries none (pruning off for these items)."""
        suffix = field(modality, "")
        values = {
            k.removesuffix(suffix): kwargs.pop(k)
            for k in list(kwargs)
            if k.startswith(PRIVATE) and k.endswith(suffix)
        }
        if values.get(RATIO) is None:
            return None
        return cls(values)


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
    names = config.method_names()
    for i, m in enumerate(options.methods):
        by_method.setdefault(names[m], []).append(i)
    for method, idx in by_method.items():
        spec = selectors.get(method)
        # One embedding lookup for every prompt of the batch, split back per item.
        ids = [options.prompt_ids[i] for i in idx]
        flat = embed_input_ids(torch.cat(ids).to(device, non_blocking=True))
        prompts = list(flat.split([len(t) for t in ids]))
        keeps = [keep_count(embeds[i].shape[0], options.ratios[i]) for i in idx]
        # Each method gets its own options (the processor sends every registered one).
        params = {o.name: [options.params[o.name][i] for i in idx] for o in spec.options}
        with selection_metrics.timed(method, len(idx), device):
            kept = spec([embeds[i] for i in idx], prompts, keeps, **params)
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
