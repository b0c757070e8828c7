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

from zspa_vllm import envs, families, mrope
from zspa_vllm.seam.processor import PruningProcessorMixin
from zspa_vllm.seam.worker import PruningModelMixin, rows, scalars

logger = logging.getLogger(__name__)


class _QwenPruningProcessor(PruningProcessorMixin):
    # Unpruned token counts by item hash, for processor-cache hits (vLLM then hands us
    # no item data to read the grid from). Bounded: an entry is two small objects.
    _FULL_COUNTS_MAX = 1 << 16

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


QWEN2_VL = families.get("Qwen2VLForConditionalGeneration")
QWEN2_5_VL = families.get("Qwen2_5_VLForConditionalGeneration")
QWEN3_VL = families.get("Qwen3VLForConditionalGeneration")


class PruningQwen2VLProcessor(_QwenPruningProcessor, Qwen2VLMultiModalProcessor):
    zspa_family = QWEN2_VL


class PruningQwen2_5_VLProcessor(_QwenPruningProcessor, Qwen2_5_VLMultiModalProcessor):
    zspa_family = QWEN2_5_VL


class PruningQwen3VLProcessor(_QwenPruningProcessor, Qwen3VLMultiModalProcessor):
    zspa_family = QWEN3_VL


class _PrunedQwenVL(PruningModelMixin):
    """Mixed in before vLLM's Qwen2-VL / Qwen2.5-VL / Qwen3-VL model classes: the M-RoPE
    position plumbing (the pipeline itself is ``PruningModelMixin``'s)."""

    def _zspa_init(self, vllm_config) -> None:
        super()._zspa_init(vllm_config)
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
        sched = vllm_config.scheduler_config
        width = sched.max_num_batched_tokens + sched.max_num_seqs + 1
        # Per-token position offsets of the step being run (see module docstring).
        # Allocated once, on the model's device (vLLM builds the model under it), so
        # its address is fixed for CUDA graphs.
        self._zspa_delta = torch.zeros((3, width), dtype=torch.long)
        self._zspa_dirty = 0

    # -- positions, when a request arrives -----------------------------------------

    def get_mrope_input_positions(self, input_tokens, mm_features):
        # An item is pruned iff it has fewer placeholders than grid cells. (Its data may
        # hold only the grid here: vLLM drops the other fields of items it will not
        # encode again, e.g. on a cache hit.) With every token kept the layout is stock.
        items = self._zspa_media_items(input_tokens, mm_features)
        if items is not None:
            items = [replace(i, pruned=i.length < i.t * i.h * i.w) for i in items]
        if items is None or not any(i.pruned for i in items):
            return super().get_mrope_input_positions(input_tokens, mm_features)
        pos, delta = mrope.positions(len(input_tokens), items)
        return torch.from_numpy(pos), delta

    def _zspa_media_items(self, input_tokens, mm_features) -> list[mrope.MediaItem] | None:
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

    # -- encoder step (the pipeline is PruningModelMixin.embed_multimodal) --------

    def _zspa_item_tokens(self, media, kwargs) -> list[int]:
        merge = self.config.vision_config.spatial_merge_size**2
        return [int(g.prod()) // merge for g in rows(kwargs[media.grid])]

    def _zspa_pack(self, media, kwargs, chunk, kept) -> list[torch.Tensor]:
        """Kept rows with their grid offsets appended as extra columns (module docstring)."""
        merge = self.config.vision_config.spatial_merge_size
        grids = rows(kwargs[media.grid])
        factors = self._t_factors(media.modality, kwargs, len(grids))
        out = []
        for emb, rows_kept, grid, t_factor in zip(chunk, kept, grids, factors, strict=True):
            if len(rows_kept) == emb.shape[0]:  # all kept: stock rows at stock positions
                out.append(emb)
                continue
            t, h, w = (int(x) for x in grid.tolist())
            offsets = mrope.grid_offsets(t, h // merge, w // merge, t_factor)
            cols = mrope.encode(torch.from_numpy(offsets)[:, rows_kept.cpu()], emb.dtype)
            out.append(torch.cat([emb[rows_kept], cols.to(emb.device)], dim=1))
        return out

    def _zspa_main_width(self) -> int:
        """Width of the LLM-input columns of an item row (what the selector scores)."""
        return self.config.text_config.hidden_size

    def _zspa_width(self) -> int:
        """Width of one unpruned item row of ``embed_multimodal``."""
        return self._zspa_main_width()

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


@MULTIMODAL_REGISTRY.register_processor(
    PruningQwen2VLProcessor,
    info=Qwen2VLProcessingInfo,
    dummy_inputs=Qwen2VLDummyInputsBuilder,
)
class PrunedQwen2VLForConditionalGeneration(_PrunedQwenVL, Qwen2VLForConditionalGeneration):
    zspa_family = QWEN2_VL


@MULTIMODAL_REGISTRY.register_processor(
    PruningQwen2_5_VLProcessor,
    info=Qwen2_5_VLProcessingInfo,
    dummy_inputs=Qwen2_5_VLDummyInputsBuilder,
)
class PrunedQwen2_5_VLForConditionalGeneration(_PrunedQwenVL, Qwen2_5_VLForConditionalGeneration):
    zspa_family = QWEN2_5_VL


class _PrunedQwen3VL(_PrunedQwenVL):
    """What Qwen3-VL (dense and MoE) adds: rows that carry the deepstack features of several
    vision layers after the main embedding, all kept or dropped together (only the main
    columns are scored); and videos laid out frame by frame, each frame a budget unit."""

    def _zspa_main_width(self) -> int:
        return self.visual_dim

    def _zspa_width(self) -> int:
        return self.visual_dim + (self.multiscale_dim if self.use_deepstack else 0)

    def _zspa_media_items(self, input_tokens, mm_features) -> list[mrope.MediaItem] | None:
        # Qwen3-VL lays out every image and every video *frame* as a t = 1 grid at its own
        # offset (a frame's timestamp text and markers are text between them). The
        # parent's _iter_mm_grid_hw finds each frame's tokens in the prompt, pruned or not;
        # for an image it reports the full grid, so an image's count is its placeholder's.
        config = self.config
        merge = config.vision_config.spatial_merge_size
        items = []
        for f in sorted(mm_features, key=lambda f: f.mm_position.offset):
            if f.modality == "image":
                _, h, w = (int(x) for x in f.data["image_grid_thw"].data.tolist())
                items.append(
                    mrope.MediaItem(f.mm_position.offset, f.mm_position.length, 1, h // merge,
                                    w // merge)
                )  # fmt: skip
                continue
            frames = self._iter_mm_grid_hw(
                input_tokens,
                [f],
                video_token_id=config.video_token_id,
                vision_start_token_id=config.vision_start_token_id,
                vision_end_token_id=config.vision_end_token_id,
                spatial_merge_size=merge,
            )
            items += [mrope.MediaItem(offset, n, 1, h, w) for offset, h, w, n in frames]
        return items

    def _zspa_units(self, media, kwargs, chunk) -> list[list[int]] | None:
        """A video's budget units are its frames: each keeps ``keep_count(h*w, ratio)`` of
        its own tokens between its own markers (the prompt side cuts each frame's run)."""
        if media.modality != "video":
            return None
        merge = self.config.vision_config.spatial_merge_size**2
        return [[int(h * w) // merge] * int(t) for t, h, w in rows(kwargs[media.grid])]

    def _t_factors(self, modality: str, kwargs: dict, n: int) -> list[float]:
        # Every frame is its own t = 1 grid (timestamps are text): no temporal offset.
        return [0.0] * n


@MULTIMODAL_REGISTRY.register_processor(
    PruningQwen3VLProcessor,
    info=Qwen3VLProcessingInfo,
    dummy_inputs=Qwen3VLDummyInputsBuilder,
)
class PrunedQwen3VLForConditionalGeneration(_PrunedQwen3VL, Qwen3VLForConditionalGeneration):
    zspa_family = QWEN3_VL
