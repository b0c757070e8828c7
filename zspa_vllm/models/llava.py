"""Prompt-aware pruning for vLLM's ``LlavaForConditionalGeneration``.

API-server process (``PruningLlavaProcessor``):
  * resolves and validates the request's pruning options (request > engine default);
  * emits ``keep_count(N, ratio)`` placeholders per image instead of N;
  * attaches per-image fields for the worker (prompt text token ids, ratio, method,
    core ratio), which also become part of every image's hash: the processor cache,
    the encoder cache and prefix caching are all keyed by that hash, so two requests
    share pruned tokens only if their image, prompt text and options are identical;
  * keeps every pruning key away from the HF processor (and its from_pretrained cache).

Worker (``PrunedLlavaForConditionalGeneration.embed_multimodal``): runs the vision tower
and projector as before, embeds the prompt ids with the LLM's own input-embedding table,
and returns exactly ``keep_count(N, ratio)`` rows per image, in original order.

LLaVA uses 1-D RoPE, so kept tokens simply occupy the contiguous placeholder positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from vllm.model_executor.models.llava import (
    LlavaDummyInputsBuilder,
    LlavaForConditionalGeneration,
    LlavaMultiModalProcessor,
    LlavaProcessingInfo,
    _build_llava_or_pixtral_hf_info,
    _build_llava_or_pixtral_hf_processor,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import ImageEmbeddingItems, ImageProcessorItems
from vllm.multimodal.processing import ProcessorInputs, PromptReplacement

from zspa_vllm import config, stats
from zspa_vllm.pruning import keep_count, select_batch

# Per-image fields, from the processor to the model. The prefix is private: any key a
# client sends with it is dropped, so it can never bypass validation.
_PRIVATE = "zspa_"
PROMPT_IDS = "zspa_prompt_ids"  # long [M]: the prompt's text token ids
RATIO = "zspa_ratio"  # float64 [1]: float64 keeps keep_count identical on both sides
METHOD = "zspa_method"  # long [1]: index into config.METHOD_NAMES
CORE_RATIO = "zspa_core_ratio"  # float64 [1]
_FIELDS = (PROMPT_IDS, RATIO, METHOD, CORE_RATIO)
# Marks vLLM's profiling inputs: they must keep the unpruned (maximum) token count.
_PROFILING = "zspa_profiling"


class PruningLlavaProcessor(LlavaMultiModalProcessor):
    def get_dummy_inputs(self, seq_len, mm_counts, mm_options) -> ProcessorInputs:
        inputs = super().get_dummy_inputs(seq_len, mm_counts, mm_options)
        return replace(inputs, hf_processor_mm_kwargs={_PROFILING: True})

    def apply(self, inputs: ProcessorInputs, timing_ctx):
        request = inputs.hf_processor_mm_kwargs
        profiling = bool(request.get(_PROFILING))
        options = (
            config.PruneOptions()
            if profiling
            else config.resolve(request, self.info.ctx.get_mm_config().mm_processor_kwargs)
        )
        kwargs = {k: v for k, v in config.strip(request).items() if not k.startswith(_PRIVATE)}
        if options.active:
            kwargs |= {
                PROMPT_IDS: self._text_token_ids(inputs.prompt),
                RATIO: options.ratio,
                METHOD: config.METHOD_NAMES.index(options.method),
                CORE_RATIO: options.core_ratio,
            }
        result = super().apply(replace(inputs, hf_processor_mm_kwargs=kwargs), timing_ctx)
        if not profiling:
            self._publish(inputs, options, result)
        return result

    def _text_token_ids(self, prompt: Sequence[int]) -> torch.Tensor:
        """The prompt's text tokens: minus image placeholders and special tokens."""
        excluded = getattr(self, "_excluded_ids", None)
        if excluded is None:
            tokenizer = self.info.get_tokenizer()
            excluded = {self.info.get_hf_config().image_token_index}
            excluded |= set(getattr(tokenizer, "all_special_ids", ()))
            self._excluded_ids = excluded
        return torch.tensor([t for t in prompt if t not in excluded], dtype=torch.long)

    def _publish(self, inputs: ProcessorInputs, options, result) -> None:
        items = inputs.mm_data_items.get("image")
        placeholders = result["mm_placeholders"].get("image", [])
        if items is None or not placeholders:
            return
        before = sum(self._num_visual_tokens(items, i) for i in range(len(placeholders)))
        stats.publish(
            stats.PruneStats(
                tokens_before=before,
                tokens_after=sum(p.get_num_embeds() for p in placeholders),
                ratio=options.ratio,
                method=options.method,
                prompt_token_ids=tuple(result["prompt_token_ids"]),
            )
        )

    def _num_visual_tokens(self, images, item_idx: int) -> int:
        """Unpruned token count of one image, as the stock processor computes it."""
        if isinstance(images, ImageEmbeddingItems):
            return images.get_feature_size(item_idx)
        assert isinstance(images, ImageProcessorItems)
        size = images.get_image_size(item_idx)
        return self.info.get_num_image_tokens(image_width=size.width, image_height=size.height)

    def _call_hf_processor(self, hf_data, hf_kwargs):
        # Our keys must never reach the HF processor call or its from_pretrained cache.
        clean = {k: v for k, v in hf_kwargs.items() if not k.startswith(_PRIVATE)}
        return super()._call_hf_processor(hf_data, clean)

    def _postprocess_hf_mm_data(self, mm_inputs, hf_processor_mm_kwargs, processed_data):
        processed = super()._postprocess_hf_mm_data(
            mm_inputs, hf_processor_mm_kwargs, processed_data
        )
        if RATIO not in hf_processor_mm_kwargs:
            return processed
        images = processed.get("pixel_values", processed.get("image_embeds"))
        n = len(images) if images is not None else 0
        # One row per image; every image of a request shares the request's values.
        processed[PROMPT_IDS] = hf_processor_mm_kwargs[PROMPT_IDS].expand(n, -1).clone()
        for key, dtype in (
            (RATIO, torch.float64),
            (METHOD, torch.long),
            (CORE_RATIO, torch.float64),
        ):
            processed[key] = torch.full((n, 1), hf_processor_mm_kwargs[key], dtype=dtype)
        return processed

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs):
        fields = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        if RATIO in hf_inputs:
            fields |= {key: MultiModalFieldConfig.batched("image") for key in _FIELDS}
        return fields

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        ratio = hf_processor_mm_kwargs.get(RATIO)
        if ratio is None:
            return updates
        (update,) = updates
        full = update.replacement

        def pruned(item_idx: int) -> list[int]:
            tokens = full(item_idx)  # N copies of the image token
            return tokens[: keep_count(len(tokens), ratio)]

        return [PromptReplacement(modality="image", target=update.target, replacement=pruned)]


def _build_processor(info, dummy_inputs):
    if isinstance(info, LlavaProcessingInfo):
        return PruningLlavaProcessor(info, dummy_inputs)
    # Pixtral-HF towers (variable patch grids) are not supported yet: stock processing.
    return _build_llava_or_pixtral_hf_processor(info, dummy_inputs)


@MULTIMODAL_REGISTRY.register_processor(
    _build_processor,
    info=_build_llava_or_pixtral_hf_info,
    dummy_inputs=LlavaDummyInputsBuilder,
)
class PrunedLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    def embed_multimodal(self, **kwargs: object):
        fields = {key: kwargs.pop(key, None) for key in _FIELDS}
        embeds = super().embed_multimodal(**kwargs)
        if fields[RATIO] is None:
            return embeds  # no image in this batch asked for pruning
        return prune_embeddings(
            list(embeds),
            self.get_language_model().embed_input_ids,
            _rows(fields[PROMPT_IDS]),
            _scalars(fields[RATIO]),
            _scalars(fields[METHOD]),
            _scalars(fields[CORE_RATIO]),
        )


def _rows(field: object) -> list[torch.Tensor]:
    """A batched field is one stacked tensor (equal shapes) or a list of tensors."""
    return list(field) if isinstance(field, (list, tuple)) else list(field.unbind(0))


def _scalars(field: object) -> list:
    return [row.reshape(-1)[0].item() for row in _rows(field)]


def prune_embeddings(
    embeds: list[torch.Tensor],
    embed_input_ids,
    prompt_ids: list[torch.Tensor],
    ratios: list[float],
    methods: list[int],
    core_ratios: list[float],
) -> tuple[torch.Tensor, ...]:
    """Keep ``keep_count(N_i, ratio_i)`` rows of each image, chosen by its method.

    Images of the same method are selected in one batched call (they may come from
    different requests). The prompt embeddings come from the LLM's own table, so they
    are exactly the vectors prefill would see.
    """
    device = embeds[0].device
    out: list[torch.Tensor | None] = [None] * len(embeds)
    by_method: dict[str, list[int]] = {}
    for i, m in enumerate(methods):
        by_method.setdefault(config.METHOD_NAMES[int(m)], []).append(i)
    for method, idx in by_method.items():
        prompts = [embed_input_ids(prompt_ids[i].to(device)) for i in idx]
        keeps = [keep_count(embeds[i].shape[0], ratios[i]) for i in idx]
        options = {"core_ratio": [core_ratios[i] for i in idx]} if method == "zspa" else {}
        kept = select_batch(method, [embeds[i] for i in idx], prompts, keeps, **options)
        for i, rows in zip(idx, kept, strict=True):
            out[i] = embeds[i][rows]
    return tuple(out)  # type: ignore[arg-type]
