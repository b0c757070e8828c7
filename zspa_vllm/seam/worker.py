"""Worker side of pruning, one pipeline for every model family.

``PruningModelMixin.embed_multimodal`` (the encoder step of every vLLM model runner): pop
the per-item fields the processor attached -> run the parent's vision tower in sub-batches
that stay within the encoder budget -> select each item's kept rows (``select_rows``) ->
pack them by the family's position strategy (1-D: the kept rows; M-RoPE: ``qwen_vl``
appends each kept token's position offsets). The family spec (``zspa_vllm.families``)
says which inputs belong to which modality, how to cut them by item and which columns are
scored; a family class adds only ``_zspa_item_tokens`` (unpruned tokens per item) and, for
M-RoPE, its position plumbing."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from zspa_vllm import config, envs, families, greedy_kernel, selectors
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

    def repeat(self, counts: Sequence[int]) -> ItemOptions:
        """Item i's options ``counts[i]`` times each (one entry per budget unit)."""
        out = object.__new__(ItemOptions)

        def rep(values: list) -> list:
            return [v for v, c in zip(values, counts, strict=True) for _ in range(c)]

        out.prompt_ids, out.ratios, out.methods = (
            rep(self.prompt_ids), rep(self.ratios), rep(self.methods)
        )  # fmt: skip
        out.params = {k: rep(v) for k, v in self.params.items()}
        return out

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


def select_units(
    embeds: list[torch.Tensor], units: list[list[int]] | None, embed_input_ids, options
) -> list[torch.Tensor]:
    """``select_rows`` with each item cut into its budget units (``units[i]``: the token
    counts of item i's units, in order); the kept rows of an item, sorted."""
    if units is None:
        return select_rows(embeds, embed_input_ids, options)
    parts = [p for e, u in zip(embeds, units, strict=True) for p in e.split(u)]
    kept = iter(select_rows(parts, embed_input_ids, options.repeat([len(u) for u in units])))
    out = []
    for u in units:
        # Each unit's kept indices, shifted by where the unit starts in its item.
        starts = itertools.accumulate(u[:-1], initial=0)
        out.append(torch.cat([next(kept) + s for s in starts]))
    return out


def _with_fixed(kept: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """Kept indices among the non-structure rows -> sorted item rows, structure included."""
    visual = (~fixed).nonzero().squeeze(-1)
    rows_kept = torch.cat([visual[kept.to(visual.device)], fixed.nonzero().squeeze(-1)])
    return rows_kept.sort().values


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


class PruningModelMixin:
    """Mix in before a vLLM multimodal model class; set ``zspa_family``."""

    zspa_family: families.Family

    # vLLM builds a model as cls(vllm_config=..., prefix=...) only when __init__ names both.
    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._zspa_init(vllm_config)

    def _zspa_init(self, vllm_config) -> None:
        if getattr(vllm_config.compilation_config, "cudagraph_mm_encoder", False):
            raise ValueError(
                f"zspa-vllm: encoder CUDA graphs (cudagraph_mm_encoder) bypass "
                f"embed_multimodal, where {self.zspa_family.architecture} prunes; turn them "
                f"off, or set {envs.DISABLE}=1 to run stock vLLM."
            )
        selection_metrics.configure(vllm_config)
        # The encoder tokens vLLM profiled memory for (one step's vision-tower load).
        self._zspa_encoder_budget = vllm_config.scheduler_config.max_num_encoder_input_tokens

    def embed_multimodal(self, **kwargs: object):
        family = self.zspa_family
        options = {m: ItemOptions.pop(kwargs, m) for m in family.modalities}
        if not any(options.values()):
            embeds = super().embed_multimodal(**kwargs)
            warm_up(embeds)
            return embeds
        embeds: list[torch.Tensor] = []
        # A loop: zero-arg super() fails inside a comprehension.
        for sub in self._zspa_encoder_batches(kwargs):
            embeds += super().embed_multimodal(**sub)
        out: list[torch.Tensor] = []
        start = 0
        for media in self._zspa_order(kwargs):
            n = self._zspa_num_items(media, kwargs)
            chunk = list(embeds[start : start + n])
            start += n
            opts = options[media.modality]
            if opts is None:
                out += chunk
                continue
            scored = [self._zspa_scored(e) for e in chunk]
            units = self._zspa_units(media, kwargs, chunk)
            fixed = self._zspa_fixed_rows(media, kwargs, chunk)
            if fixed is not None:  # structure rows: out of the budget, always kept
                scored = [e[~f] for e, f in zip(scored, fixed, strict=True)]
            table = self.get_language_model().embed_input_ids
            kept = select_units(scored, units, table, opts)
            if fixed is not None:
                kept = [_with_fixed(k, f) for k, f in zip(kept, fixed, strict=True)]
            out += self._zspa_pack(media, kwargs, chunk, kept)
        assert start == len(embeds), (start, len(embeds))
        return tuple(out)

    # -- what a family may override ------------------------------------------------

    def _zspa_item_tokens(self, media: families.Media, kwargs: dict) -> list[int]:
        """Unpruned encoder-output tokens of each item of ``media`` in ``kwargs``."""
        raise NotImplementedError

    def _zspa_units(self, media, kwargs, chunk) -> list[list[int]] | None:
        """Per item, the token counts of its budget units when an item has several (each
        unit keeps ``keep_count(n_unit, ratio)`` of its own tokens: the prompt side,
        ``seam/processor._pruned``, cuts each run of the item's placeholders the same
        way); None: one budget per item."""
        return None

    def _zspa_fixed_rows(self, media, kwargs, chunk) -> list[torch.Tensor] | None:
        """Per item, a bool mask of its structure rows (never pruned, not in the budget;
        the prompt side keeps as many slots: ``PruningProcessorMixin._zspa_fixed_slots``);
        None: every row is a visual token."""
        return None

    def _zspa_scored(self, emb: torch.Tensor) -> torch.Tensor:
        """The columns the selector scores (``Family.scored``)."""
        if self.zspa_family.scored == "main":
            return emb[:, : self._zspa_main_width()]
        return emb

    def _zspa_main_width(self) -> int:
        raise NotImplementedError

    def _zspa_pack(self, media, kwargs, chunk, kept) -> list[torch.Tensor]:
        """1-D positions: the kept rows, in order, fill the item's placeholders."""
        return [e[k] for e, k in zip(chunk, kept, strict=True)]

    # -- the family-neutral parts --------------------------------------------------

    def _zspa_order(self, kwargs: dict) -> list[families.Media]:
        """The modalities of ``kwargs`` in the order the parent encodes them (the order
        of their input keys, as vLLM's models parse them)."""
        by_key = {k: m for m in self.zspa_family.media for k in m.input_keys}
        present = dict.fromkeys(by_key[k].modality for k in kwargs if k in by_key)
        return [self.zspa_family.medium(m) for m in present]

    def _zspa_num_items(self, media: families.Media, kwargs: dict) -> int:
        for key in (media.grid, media.rows):
            if key is not None and key in kwargs:
                return len(rows(kwargs[key]))
        key = next(k for k in media.input_keys if k in kwargs)
        return len(kwargs[key])

    def _zspa_encoder_batches(self, kwargs: dict):
        """Split one modality's batch so no vision-tower call sees more unpruned tokens
        than the encoder budget vLLM profiled memory for.

        vLLM's scheduler fills that budget with *pruned* token counts while the tower runs
        on full items, so one step may carry several times the profiled load (vLLM's V1
        runner encodes EVS videos one at a time for the same reason). Only inputs the
        family spec knows how to cut by item are split; anything else goes through whole.
        An item over the budget on its own runs alone.
        """
        present = [m for m in self.zspa_family.media if m.pixels in kwargs]
        if len(present) != 1 or set(kwargs) - present[0].split_keys - set(present[0].shared):
            yield kwargs
            return
        media = present[0]
        tokens = self._zspa_item_tokens(media, kwargs)
        if media.grid is not None:  # pixel rows per item: its patches
            pixel_rows = [int(g.prod()) for g in rows(kwargs[media.grid])]
        elif media.rows is not None:  # stated per item (an image and its crops)
            pixel_rows = [int(n) for n in scalars(kwargs[media.rows])]
        else:  # one pixel row (an image tensor) per item
            pixel_rows = [1] * len(tokens)
        budget = self._zspa_encoder_budget
        start, first, used = 0, 0, 0
        for i, n in enumerate([*tokens, None]):
            if n is not None and (i == first or used + n <= budget):
                used += n
                continue
            stop = start + sum(pixel_rows[first:i])
            sub = {
                k: v if k in media.shared else _slice_items(v, first, i) for k, v in kwargs.items()
            }
            sub[media.pixels] = kwargs[media.pixels][start:stop]
            yield sub
            if n is not None:
                start, first, used = stop, i, n


def _slice_items(value, first: int, stop: int):
    """Items [first, stop) of a per-item (batched) field; pixels are sliced by the caller."""
    return value[first:stop] if isinstance(value, (torch.Tensor, list, tuple)) else value
