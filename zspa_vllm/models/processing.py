"""API-server side of pruning, shared by every model family: one processor mixin.

``PruningProcessorMixin`` goes in front of a vLLM multimodal processor class and:
  * resolves and validates the request's pruning options (request > engine default);
  * emits ``keep_count(N, ratio)`` placeholders per pruned item instead of N;
  * attaches per-item fields for the worker (prompt text token ids, ratio, method, core
    ratio), one set per pruned modality;
  * puts the prompt ids and options into the request kwargs before vLLM hashes them, so
    every item's hash (the key of the processor cache, the encoder cache and the
    prefix-cache blocks) covers them: two requests share pruned tokens only if their
    media, prompt text and options are identical;
  * keeps every pruning key away from the HF processor (and its from_pretrained cache);
  * publishes one ``stats.PruneStats`` per real request with media.

A family supplies ``zspa_modalities`` and ``_zspa_tokens_before`` (how many tokens the
items would have had unpruned).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.processing import ProcessorInputs, PromptReplacement

from zspa_vllm import config, stats
from zspa_vllm.pruning import keep_count

# The prefix is private: any key a client sends with it is dropped, so it can never
# bypass validation.
PRIVATE = "zspa_"
# Request-level kwargs (processor -> hash -> per-item fields).
PROMPT_IDS = "zspa_prompt_ids"  # long [M]: the prompt's text token ids
RATIO = "zspa_ratio"  # float64: float64 keeps keep_count identical on both sides
METHOD = "zspa_method"  # long: index into config.METHOD_NAMES
CORE_RATIO = "zspa_core_ratio"  # float64
_DTYPES = {RATIO: torch.float64, METHOD: torch.long, CORE_RATIO: torch.float64}
# Marks vLLM's profiling inputs: they must keep the unpruned (maximum) token count.
PROFILING = "zspa_profiling"


def field(modality: str, key: str) -> str:
    """Per-item field name of ``key`` for ``modality`` (a field belongs to one modality)."""
    return f"{key}_{modality}"


def fields(modality: str) -> tuple[str, ...]:
    return tuple(field(modality, k) for k in (PROMPT_IDS, RATIO, METHOD, CORE_RATIO))


def strip_private(kwargs: Mapping[str, object]) -> dict[str, object]:
    return {k: v for k, v in kwargs.items() if not k.startswith(PRIVATE)}


class PruningProcessorMixin:
    """Mix in before a ``BaseMultiModalProcessor`` subclass."""

    # Modality -> key of the processed HF output with one row per item of it.
    zspa_modalities: Mapping[str, tuple[str, ...]] = {"image": ("pixel_values",)}

    def _zspa_placeholder_ids(self) -> set[int]:
        """Token ids that stand for media in the templated prompt (never prompt text)."""
        raise NotImplementedError

    def _zspa_tokens_before(self, inputs: ProcessorInputs, result) -> int:
        """Unpruned visual tokens of all pruned-modality items of this request."""
        raise NotImplementedError

    def get_dummy_inputs(self, seq_len, mm_counts, mm_options) -> ProcessorInputs:
        inputs = super().get_dummy_inputs(seq_len, mm_counts, mm_options)
        return replace(inputs, hf_processor_mm_kwargs={PROFILING: True})

    def apply(self, inputs: ProcessorInputs, timing_ctx):
        request = inputs.hf_processor_mm_kwargs
        profiling = bool(request.get(PROFILING))
        options = (
            config.PruneOptions()
            if profiling
            else config.resolve(request, self.info.ctx.get_mm_config().mm_processor_kwargs)
        )
        kwargs = strip_private(config.strip(request))
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
        """The prompt's text tokens: minus media placeholders and special tokens."""
        excluded = getattr(self, "_excluded_ids", None)
        if excluded is None:
            tokenizer = self.info.get_tokenizer()
            excluded = self._zspa_placeholder_ids()
            excluded |= set(getattr(tokenizer, "all_special_ids", ()))
            self._excluded_ids = excluded
        return torch.tensor([t for t in prompt if t not in excluded], dtype=torch.long)

    def _publish(self, inputs: ProcessorInputs, options, result) -> None:
        placeholders = [
            p for m in self.zspa_modalities for p in result["mm_placeholders"].get(m, [])
        ]
        if not placeholders:
            return
        stats.publish(
            stats.PruneStats(
                tokens_before=self._zspa_tokens_before(inputs, result),
                tokens_after=sum(p.get_num_embeds() for p in placeholders),
                ratio=options.ratio,
                method=options.method,
                prompt_token_ids=tuple(result["prompt_token_ids"]),
            )
        )

    def _call_hf_processor(self, hf_data, hf_kwargs):
        # Our keys must never reach the HF processor call or its from_pretrained cache.
        return super()._call_hf_processor(hf_data, strip_private(hf_kwargs))

    def _postprocess_hf_mm_data(self, mm_inputs, hf_processor_mm_kwargs, processed_data):
        processed = super()._postprocess_hf_mm_data(
            mm_inputs, hf_processor_mm_kwargs, processed_data
        )
        if RATIO not in hf_processor_mm_kwargs:
            return processed
        for modality, keys in self.zspa_modalities.items():
            rows = next((processed[k] for k in keys if processed.get(k) is not None), None)
            if rows is None:
                continue
            n = len(rows)
            # One row per item; every item of a request shares the request's values.
            ids, *scalars = fields(modality)
            processed[ids] = hf_processor_mm_kwargs[PROMPT_IDS].expand(n, -1).clone()
            for name, key in zip(scalars, (RATIO, METHOD, CORE_RATIO), strict=True):
                value = hf_processor_mm_kwargs[key]
                processed[name] = torch.full((n, 1), value, dtype=_DTYPES[key])
        return processed

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs):
        out = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        for modality in self.zspa_modalities:
            if field(modality, RATIO) in hf_inputs:
                out |= {k: MultiModalFieldConfig.batched(modality) for k in fields(modality)}
        return out

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = super()._get_prompt_updates(
            mm_items, strip_private(hf_processor_mm_kwargs), out_mm_kwargs
        )
        ratio = hf_processor_mm_kwargs.get(RATIO)
        if ratio is None:
            return updates
        return [_pruned(u, ratio) if u.modality in self.zspa_modalities else u for u in updates]


def _pruned(update: PromptReplacement, ratio: float) -> PromptReplacement:
    full = update.replacement
    if not callable(full):
        raise NotImplementedError(f"static {update.modality} replacement: {full!r}")

    def pruned(item_idx: int) -> list[int]:
        tokens = full(item_idx)  # N copies of the placeholder token
        if not isinstance(tokens, list):
            # Mixed text/embedding replacements (PromptUpdateDetails) need a layout
            # decision of their own; no supported family emits one.
            raise NotImplementedError(f"{update.modality} replacement of type {type(tokens)}")
        return tokens[: keep_count(len(tokens), ratio)]

    return PromptReplacement(modality=update.modality, target=update.target, replacement=pruned)
