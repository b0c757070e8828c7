"""Prompt-aware pruning for vLLM's ``Qwen2VLForConditionalGeneration`` and
``Qwen2_5_VLForConditionalGeneration`` (M-RoPE), images and videos, and for the images of
``Qwen3VLForConditionalGeneration``.

API-server process: the processors below (``seam/processor.py`` does the work). A
video is one item with one budget: ``keep_count(T*H*W, ratio)`` tokens chosen across all
its frames together (the selector sees every frame at once, so redundant frames give up
tokens first).

Worker, three hooks that every vLLM model runner calls in the same order (V1 GPU, V1
CPU and the V2 GPU runner alike), so no runner-specific hook is needed:
  * ``get_mrope_input_positions`` (when a request arrives): unpruned positions for text
    and decode, pruned placeholders at their item's origin (``zspa_vllm.mrope``);
  * ``embed_multimodal`` (encoder step): vision tower, selection, then the kept rows
    with their grid offsets appended as extra columns;
  * ``embed_input_ids`` (every step, before the forward): strips the columns and writes
    the offsets into a persistent per-token buffer, which ``forward`` adds to the
    positions in place (and clears). The add is an ordinary tensor op on fixed buffers,
    so a captured CUDA graph replays it too.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import replace

import torch
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.model_executor.models.qwen2_vl import (
    Qwen2VLDummyInputsBuilder,
    Qwen2VLForConditionalGeneration,
    Qwen2VLMultiModalProcessor,
    Qwen2VLProcessingInfo,
)
from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMultiModalProcessor,
    Qwen3VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.processing import ProcessorInputs
from vllm.multimodal.utils import copy_mm_embedding_modality

from zspa_vllm import config, envs, mrope
from zspa_vllm.seam import selection_metrics
from zspa_vllm.seam.processor import PROFILING, PruningProcessorMixin
from zspa_vllm.seam.worker import ItemOptions, rows, scalars, select_rows, warm_up

logger = logging.getLogger(__name__)

MODALITIES = ("image", "video")
# Keys _encoder_batches knows how to split by item.
_SPLITTABLE = {
    "pixel_values",
    "image_grid_thw",
    "pixel_values_videos",
    "video_grid_thw",
    "second_per_grid_ts",
    "timestamps",
}
# kwargs key -> modality, as the parent models parse them (first key wins the order).
_MODALITY_OF_KEY = {
    "pixel_values": "image",
    "image_embeds": "image",
    "pixel_values_videos": "video",
    "video_embeds": "video",
}


class _QwenPruningProcessor(PruningProcessorMixin):
    zspa_modalities = {"image": ("image_grid_thw",), "video": ("video_grid_thw",)}
    # Unpruned token counts by item hash, for processor-cache hits (vLLM then hands us
    # no item data to read the grid from). Bounded: an entry is two small objects.
    _FULL_COUNTS_MAX = 1 << 16

    def _zspa_item_tokens(self) -> dict[str, int]:
        hf = self.info.get_hf_config()
        return {"image": hf.image_token_id, "video": hf.video_token_id}

    def _zspa_tokens_before(self, inputs: ProcessorInputs, result) -> int:
        counts = self.__dict__.setdefault("_full_counts", OrderedDict())
        merge = self.info.get_hf_config().vision_config.spatial_merge_size ** 2
        total = 0
        for modality in self.zspa_modalities:
            placeholders = result["mm_placeholders"].get(modality, [])
            items = result["mm_kwargs"].get(modality) or [None] * len(placeholders)
            hashes = result["mm_hashes"].get(modality) or [None] * len(placeholders)
            for item, key, ph in zip(items, hashes, placeholders, strict=True):
                if item is not None:
                    n = int(item[f"{modality}_grid_thw"].data.prod()) // merge
                    counts[key] = n
                    counts.move_to_end(key)
                    if len(counts) > self._FULL_COUNTS_MAX:
                        counts.popitem(last=False)
                else:
                    n = counts.get(key)
                    if n is None:  # evicted here but still cached by vLLM: rare
                        logger.warning("zspa: unknown unpruned size of a cached %s", modality)
                        n = ph.get_num_embeds()
                total += n
        return total


class PruningQwen2VLProcessor(_QwenPruningProcessor, Qwen2VLMultiModalProcessor):
    pass


class PruningQwen2_5_VLProcessor(_QwenPruningProcessor, Qwen2_5_VLMultiModalProcessor):
    pass


class PruningQwen3VLProcessor(_QwenPruningProcessor, Qwen3VLMultiModalProcessor):
    # Images only: a Qwen3-VL video interleaves per-frame timestamp text with its frames
    # (README, "Qwen3-VL"), which the per-video budget does not handle yet.
    zspa_modalities = {"image": ("image_grid_thw",)}

    def apply(self, inputs: ProcessorInputs, timing_ctx):
        request = inputs.hf_processor_mm_kwargs
        if "video" in inputs.mm_data_items and not request.get(PROFILING):
            engine = self.info.ctx.get_mm_config().mm_processor_kwargs
            if config.resolve(request, engine).active:
                raise ValueError(
                    f"{config.RATIO_KEY} must be 0 for requests with videos on "
                    "Qwen3VLForConditionalGeneration: zspa-vllm prunes its images only"
                )
        return super().apply(inputs, timing_ctx)


class _PrunedQwenVL:
    """Mixed in before vLLM's Qwen2-VL / Qwen2.5-VL / Qwen3-VL model classes."""

    def _zspa_init(self, vllm_config) -> None:
        selection_metrics.configure(vllm_config)
        arch = next(c.__name__ for c in type(self).__mro__ if c.__module__.startswith("vllm."))
        how = f"or set {envs.DISABLE}=1 to run stock vLLM"
        mm = vllm_config.model_config.get_multimodal_config()
        if getattr(mm, "video_pruning_rate", None):
            raise ValueError(
                f"zspa-vllm: --video-pruning-rate (vLLM's EVS) cannot be combined with "
                f"zspa-vllm's pruning of {arch}: both prune video tokens and rewrite M-RoPE "
                f"positions. Use the per-request prune_ratio (videos included), {how}."
            )
        if vllm_config.parallel_config.pipeline_parallel_size > 1:
            raise ValueError(
                f"zspa-vllm: pruning {arch} with pipeline parallelism is not supported "
                f"(kept tokens' M-RoPE positions are fixed on the first stage only). "
                f"Use tensor parallelism, {how}."
            )
        if getattr(vllm_config.parallel_config, "enable_dbo", False):
            raise ValueError(
                f"zspa-vllm: pruning {arch} with --enable-dbo is not supported; {how}."
            )
        if getattr(vllm_config.compilation_config, "cudagraph_mm_encoder", False):
            raise ValueError(
                f"zspa-vllm: encoder CUDA graphs (cudagraph_mm_encoder) bypass "
                f"embed_multimodal, where {arch} prunes; turn them off, {how}."
            )
        sched = vllm_config.scheduler_config
        width = sched.max_num_batched_tokens + sched.max_num_seqs + 1
        # Per-token position offsets of the step being run (see module docstring).
        # Allocated once, on the model's device (vLLM builds the model under it), so
        # its address is fixed for CUDA graphs.
        self._zspa_delta = torch.zeros((3, width), dtype=torch.long)
        self._zspa_encoder_budget = sched.max_num_encoder_input_tokens
        self._zspa_dirty = 0

    # -- positions, when a request arrives -----------------------------------------

    def get_mrope_input_positions(self, input_tokens, mm_features):
        # An item is pruned iff it has fewer placeholders than grid cells. (Its data may
        # hold only the grid here: vLLM drops the other fields of items it will not
        # encode again, e.g. on a cache hit.) With every token kept the layout is stock.
        items = self._zspa_media_items(mm_features)
        if items is not None:
            items = [replace(i, pruned=i.length < i.t * i.h * i.w) for i in items]
        if items is None or not any(i.pruned for i in items):
            return super().get_mrope_input_positions(input_tokens, mm_features)
        pos, delta = mrope.positions(len(input_tokens), items)
        return torch.from_numpy(pos), delta

    def _zspa_media_items(self, mm_features) -> list[mrope.MediaItem] | None:
        """The request's media as the parent lays them out (None: leave it to the parent)."""
        features = sorted(
            (f for f in mm_features if f.modality != "prompt_embeds"),
            key=lambda f: f.mm_position.offset,
        )
        return [
            mrope.MediaItem(offset, f.mm_position.length, t, h, w, t_factor)
            for f, (offset, t, h, w, t_factor) in zip(
                features, self.iter_mm_grid_thw(features), strict=True
            )
        ]

    # -- encoder step -------------------------------------------------------------

    def embed_multimodal(self, **kwargs: object):
        options = {m: ItemOptions.pop(kwargs, m) for m in MODALITIES}
        if not any(options.values()):
            embeds = super().embed_multimodal(**kwargs)
            warm_up(embeds)
            return embeds
        embeds: list[torch.Tensor] = []
        for sub in self._encoder_batches(kwargs):  # (zero-arg super() fails in a comprehension)
            embeds += super().embed_multimodal(**sub)
        order = list(dict.fromkeys(_MODALITY_OF_KEY[k] for k in kwargs if k in _MODALITY_OF_KEY))
        merge = self.config.vision_config.spatial_merge_size
        out: list[torch.Tensor] = []
        start = 0
        for modality in order:
            grids = rows(kwargs[f"{modality}_grid_thw"])
            chunk = embeds[start : start + len(grids)]
            start += len(grids)
            opts = options[modality]
            if opts is None:
                out += chunk
                continue
            factors = self._t_factors(modality, kwargs, len(grids))
            main = [self._zspa_main(e) for e in chunk]
            kept_rows = select_rows(main, self.get_language_model().embed_input_ids, opts)
            for emb, kept, grid, t_factor in zip(chunk, kept_rows, grids, factors, strict=True):
                if len(kept) == emb.shape[0]:  # all kept: stock rows at stock positions
                    out.append(emb)
                    continue
                t, h, w = (int(x) for x in grid.tolist())
                offsets = mrope.grid_offsets(t, h // merge, w // merge, t_factor)
                cols = mrope.encode(torch.from_numpy(offsets)[:, kept.cpu()], emb.dtype)
                out.append(torch.cat([emb[kept], cols.to(emb.device)], dim=1))
        assert start == len(embeds), (start, len(embeds))
        return tuple(out)

    def _zspa_main(self, emb: torch.Tensor) -> torch.Tensor:
        """The columns the LLM input receives (what the selector scores)."""
        return emb

    def _zspa_width(self) -> int:
        """Width of one unpruned item row of ``embed_multimodal``."""
        return self.config.text_config.hidden_size

    def _encoder_batches(self, kwargs: dict):
        """Split one modality's batch so no vision-tower call sees more unpruned tokens
        than the encoder budget vLLM profiled memory for.

        vLLM's scheduler fills that budget with *pruned* token counts while the tower runs
        on full images, so one step may carry several times the profiled load (vLLM's
        V1 runner encodes EVS videos one at a time for the same reason). Only the plain
        pixel layout is split; anything else goes through whole.
        """
        present = [m for m in MODALITIES if f"{m}_grid_thw" in kwargs]
        pixels = {"image": "pixel_values", "video": "pixel_values_videos"}
        if len(present) != 1 or set(kwargs) - _SPLITTABLE or pixels[present[0]] not in kwargs:
            yield kwargs
            return
        modality = present[0]
        grids = torch.stack(rows(kwargs[f"{modality}_grid_thw"]))
        patches = grids.prod(-1).tolist()
        merge = self.config.vision_config.spatial_merge_size**2
        budget = self._zspa_encoder_budget
        start, first, used = 0, 0, 0
        for i, n in enumerate(patches + [None]):
            if i < len(patches) and (i == first or used + n // merge <= budget):
                used += n // merge
                continue
            stop = start + sum(patches[first:i])
            sub = {k: _slice_items(v, first, i) for k, v in kwargs.items()}
            sub[pixels[modality]] = kwargs[pixels[modality]][start:stop]
            yield sub
            if i < len(patches):
                start, first, used = stop, i, n // merge

    def _t_factors(self, modality: str, kwargs: dict, n: int) -> list[float]:
        """Temporal position step per item, as the parent's ``iter_mm_grid_thw``."""
        if modality == "image":
            return [1.0] * n
        tokens_per_second = getattr(self.config.vision_config, "tokens_per_second", 1.0)
        seconds = kwargs.get("second_per_grid_ts")
        per_item = scalars(seconds) if seconds is not None else [1.0] * n
        return [s * tokens_per_second for s in per_item]

    # -- every step -------------------------------------------------------------

    def embed_input_ids(self, input_ids, multimodal_embeddings=None, *, is_multimodal=None):
        # Offsets belong to the step whose inputs are embedded now: drop any left by a call
        # no forward consumed (a drafter embedding with the target's table, say).
        if self._zspa_dirty:
            self._zspa_delta[:, : self._zspa_dirty].zero_()
            self._zspa_dirty = 0
        hidden = self._zspa_width()
        wide = [e.shape[-1] == hidden + mrope.CHANNELS for e in (multimodal_embeddings or ())]
        if not any(wide):
            return super().embed_input_ids(
                input_ids, multimodal_embeddings, is_multimodal=is_multimodal
            )
        stripped, offsets = [], []
        for emb, has_offsets in zip(multimodal_embeddings, wide, strict=True):
            if has_offsets:
                stripped.append(copy_mm_embedding_modality(emb, emb[:, :hidden]))
                offsets.append(mrope.decode(emb[:, hidden:]))
            else:  # an unpruned item: its placeholders already hold their positions
                stripped.append(emb)
                offsets.append(torch.zeros((3, emb.shape[0]), dtype=torch.long, device=emb.device))
        idx = is_multimodal.nonzero().squeeze(-1)
        values = torch.cat(offsets, dim=1)
        if idx.numel() == values.shape[1]:  # otherwise the parent raises a clear error
            delta = self._zspa_delta
            delta[:, idx.to(delta.device)] = values.to(delta.device)
            self._zspa_dirty = int(idx[-1]) + 1 if idx.numel() else 0
        return super().embed_input_ids(input_ids, stripped, is_multimodal=is_multimodal)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kw):
        if positions.ndim == 2:
            # Unconditional (a no-op add of zeros when nothing was pruned), so that a
            # captured CUDA graph contains it: the offsets of this step were written
            # by embed_input_ids, outside any graph. positions is the runner's own
            # buffer, rewritten before every step, so the in-place add lasts one step.
            n = positions.shape[1]
            if n > self._zspa_delta.shape[1]:
                raise RuntimeError(f"zspa: {n} tokens in one step > {self._zspa_delta.shape[1]}")
            delta = self._zspa_delta[:, :n]
            positions.add_(delta)
            delta.zero_()
            self._zspa_dirty = 0
        return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kw)


def _slice_items(value, first: int, stop: int):
    """Items [first, stop) of a per-item (batched) field; pixels are sliced by the caller."""
    return value[first:stop] if isinstance(value, (torch.Tensor, list, tuple)) else value


@MULTIMODAL_REGISTRY.register_processor(
    PruningQwen2VLProcessor,
    info=Qwen2VLProcessingInfo,
    dummy_inputs=Qwen2VLDummyInputsBuilder,
)
class PrunedQwen2VLForConditionalGeneration(_PrunedQwenVL, Qwen2VLForConditionalGeneration):
    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._zspa_init(vllm_config)


@MULTIMODAL_REGISTRY.register_processor(
    PruningQwen2_5_VLProcessor,
    info=Qwen2_5_VLProcessingInfo,
    dummy_inputs=Qwen2_5_VLDummyInputsBuilder,
)
class PrunedQwen2_5_VLForConditionalGeneration(_PrunedQwenVL, Qwen2_5_VLForConditionalGeneration):
    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._zspa_init(vllm_config)


@MULTIMODAL_REGISTRY.register_processor(
    PruningQwen3VLProcessor,
    info=Qwen3VLProcessingInfo,
    dummy_inputs=Qwen3VLDummyInputsBuilder,
)
class PrunedQwen3VLForConditionalGeneration(_PrunedQwenVL, Qwen3VLForConditionalGeneration):
    """Images only (see PruningQwen3VLProcessor). Rows carry the deepstack features of
    several vision layers after the main embedding; all are kept or dropped together."""

    def __init__(self, *, vllm_config, prefix: str = "model"):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._zspa_init(vllm_config)

    def _zspa_main(self, emb: torch.Tensor) -> torch.Tensor:
        return emb[:, : self.visual_dim]

    def _zspa_width(self) -> int:
        return self.visual_dim + (self.multiscale_dim if self.use_deepstack else 0)

    def _zspa_media_items(self, mm_features) -> list[mrope.MediaItem] | None:
        # Pruned requests carry images only (the processor refuses videos with a ratio),
        # and Qwen3-VL places an image exactly as Qwen2-VL does: t = 0, h, w from its
        # origin. A video's per-frame layout is the parent's business (never pruned).
        if any(f.modality != "image" for f in mm_features):
            return None
        merge = self.config.vision_config.spatial_merge_size
        items = []
        for f in sorted(mm_features, key=lambda f: f.mm_position.offset):
            _, h, w = (int(x) for x in f.data["image_grid_thw"].data.tolist())
            items.append(
                mrope.MediaItem(
                    f.mm_position.offset, f.mm_position.length, 1, h // merge, w // merge
                )
            )
        return items
