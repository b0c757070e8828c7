"""API-server side of pruning, shared by every model family: one processor mixin.

``PruningProcessorMixin`` goes in front of a vLLM multimodal processor class and:
  * resolves and validates the request's pruning options (request > engine default);
  * emits ``keep_count(N, ratio)`` placeholders per pruned item instead of N;
  * attaches per-item fields for the worker (the text token ids of the item's prompt
    scope, ratio, method, core ratio), one set per pruned modality;
  * salts every item's hash (the key of the processor cache, the encoder cache and the
    prefix-cache blocks) with the options (request kwargs, hashed by vLLM) and with the
    text of the item's own scope (``scope.py``): two requests share an item's pruned
    tokens exactly when media, scope text and options are identical, and a later chat
    turn finds an earlier image under the same hash;
  * keeps every pruning key away from the HF processor (and its from_pretrained cache);
  * publishes one ``stats.PruneStats`` per real request with media.

A family supplies ``zspa_family`` (its spec: modalities, placeholder tokens, item keys) and
``_zspa_tokens_before`` (how many tokens the items would have had unpruned).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import torch
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import ImageEmbeddingItems, ImageProcessorItems
from vllm.multimodal.processing import ProcessorInputs, PromptReplacement, PromptUpdateDetails

from zspa_vllm import config, families, scope, selectors, stats
from zspa_vllm.pruning import keep_count

# The prefix is private: any key a client sends with it is dropped, so it can never
# bypass validation.
PRIVATE = "zspa_"
# Request-level kwargs (processor -> hash -> per-item fields). The per-item fields are
# decoded by name in the worker (``seam/worker.ItemOptions``).
SCOPE_IDS = "zspa_scope_ids"  # {modality: [long [M_i] per item]}: each item's scope text ids
PROMPT_IDS = "zspa_prompt_ids"  # per-item field: long [M_i], the item's scope text ids
RATIO = "zspa_ratio"  # float64: float64 keeps keep_count identical on both sides
METHOD = "zspa_method"  # long: index into config.method_names()
OPTION = "zspa_opt_"  # + a selector option's name (core_ratio...): float64
# Marks vLLM's profiling inputs: they must keep the unpruned (maximum) token count.
PROFILING = "zspa_profiling"


def scalar_fields() -> dict[str, torch.dtype]:
    """One number per item: the ratio, the method, and every registered selector option."""
    options = {OPTION + name: torch.float64 for name in selectors.options()}
    return {RATIO: torch.float64, METHOD: torch.long, **options}


def field(modality: str, key: str) -> str:
    """Per-item field name of ``key`` for ``modality`` (a field belongs to one modality)."""
    return f"{key}_{modality}"


def fields(modality: str) -> tuple[str, ...]:
    return tuple(field(modality, k) for k in (PROMPT_IDS, *scalar_fields()))


def strip_private(kwargs: Mapping[str, object]) -> dict[str, object]:
    return {k: v for k, v in kwargs.items() if not k.startswith(PRIVATE)}


class PruningProcessorMixin:
    """Mix in before a ``BaseMultiModalProcessor`` subclass."""

    zspa_family: families.Family

    @property
    def zspa_modalities(self) -> dict[str, tuple[str, ...]]:
        """Modality -> keys of the processed HF output with one row per item of it."""
        return {m.modality: m.item_keys for m in self.zspa_family.media}

    def _zspa_placeholder_ids(self) -> set[int]:
        """Token ids that stand for media in the templated prompt (never prompt text)."""
        return set(self._zspa_item_tokens().values())

    def _zspa_tokens_before(self, inputs: ProcessorInputs, result) -> int:
        """Unpruned visual tokens of all pruned-modality items of this request."""
        raise NotImplementedError

    def _zspa_item_tokens(self) -> Mapping[str, int]:
        """Modality -> the one token that stands for each item in the templated prompt."""
        hf_config = self.info.get_hf_config()
        return {m.modality: getattr(hf_config, m.placeholder) for m in self.zspa_family.media}

    def get_dummy_inputs(self, seq_len, mm_counts, mm_options) -> ProcessorInputs:
        inputs = super().get_dummy_inputs(seq_len, mm_counts, mm_options)
        # Keep what vLLM put there (engine-level processor kwargs: the profiled maximum).
        return replace(
            inputs, hf_processor_mm_kwargs={**inputs.hf_processor_mm_kwargs, PROFILING: True}
        )

    def apply(self, inputs: ProcessorInputs, timing_ctx):
        request = inputs.hf_processor_mm_kwargs
        profiling = bool(request.get(PROFILING))
        options = (
            config.PruneOptions()
            if profiling
            else config.resolve(request, self.info.ctx.get_mm_config().mm_processor_kwargs)
        )
        unpruned = set(inputs.mm_data_items) - set(self.zspa_family.modalities)
        if options.active and unpruned:
            # Never prune some items and silently leave the others: refuse, naming them.
            raise ValueError(
                f"{config.RATIO_KEY} must be 0 for requests with {', '.join(sorted(unpruned))} "
                f"on {self.zspa_family.architecture}: zspa-vllm prunes its "
                f"{' and '.join(self.zspa_family.modalities)} only"
            )
        kwargs = strip_private(config.strip(request))
        if options.active:
            kwargs |= {
                SCOPE_IDS: self._scope_ids(inputs, options.scope),
                RATIO: options.ratio,
                METHOD: config.method_names().index(options.method),
                **{OPTION + name: value for name, value in options.params.items()},
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

    def _generation_header(self) -> list[int] | None:
        if not hasattr(self, "_zspa_header"):
            hf_processor = self.info.get_hf_processor()
            self._zspa_header = scope.generation_header(
                self.info.get_tokenizer(), getattr(hf_processor, "chat_template", None)
            )
        return self._zspa_header

    def _scope_ids(self, inputs: ProcessorInputs, rule: str) -> dict[str, list[torch.Tensor]]:
        """Modality -> the scope text ids of each of its items (see ``scope.py``)."""
        prompt = list(inputs.prompt)
        header = self._generation_header() if rule == "turn" else None
        out = {}
        for modality, token in self._zspa_item_tokens().items():
            items = inputs.mm_data_items.get(modality)
            if items is None:
                continue
            positions = [i for i, t in enumerate(prompt) if t == token]
            if len(positions) != len(items):  # not one placeholder per item: whole prompt
                positions = [len(prompt)] * len(items)
            ends = scope.scope_ends(prompt, positions, header)
            by_end = {e: self._text_token_ids(prompt[:e]) for e in set(ends)}
            out[modality] = [by_end[e] for e in ends]
        return out

    def _get_mm_hashes(self, inputs: ProcessorInputs):
        request = inputs.hf_processor_mm_kwargs
        scopes = request.get(SCOPE_IDS)
        if scopes is None:
            return super()._get_mm_hashes(inputs)
        # vLLM hashes each item with the request's kwargs (the options); the scope text is
        # per item, so it salts each item's hash on its own.
        others = {k: v for k, v in request.items() if k != SCOPE_IDS}
        hashes = super()._get_mm_hashes(replace(inputs, hf_processor_mm_kwargs=others))
        return {
            m: [_salted(h, scopes[m][i]) if m in scopes else h for i, h in enumerate(hs)]
            for m, hs in hashes.items()
        }

    def _get_cache_missing_processor_kwargs(self, inputs: ProcessorInputs, mm_is_cached):
        kwargs = super()._get_cache_missing_processor_kwargs(inputs, mm_is_cached)
        scopes = kwargs.get(SCOPE_IDS)
        if scopes is None:
            return kwargs
        # Only cache misses are processed (and get fields): keep their scopes, in order.
        missing = {}
        for m, ids in scopes.items():
            hits = mm_is_cached.get(m, [False] * len(ids))
            missing[m] = [s for s, hit in zip(ids, hits, strict=True) if not hit]
        return {**kwargs, SCOPE_IDS: missing}

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

    def _apply_hf_processor_main(self, mm_items, hf_kwargs):
        # Our keys must never reach an HF processor call or vLLM's get_hf_processor cache
        # (keyed on the kwargs: every distinct value would build a processor; a list is
        # unhashable). Some families (Qwen3-VL) call get_hf_processor(**kwargs) inside this
        # method, so strip here, then add the per-item fields from the full kwargs.
        processed = super()._apply_hf_processor_main(mm_items, strip_private(hf_kwargs))
        return self._add_fields(hf_kwargs, processed)

    def _add_fields(self, hf_processor_mm_kwargs, processed):
        if RATIO not in hf_processor_mm_kwargs:
            return processed
        for modality, keys in self.zspa_modalities.items():
            rows = next((processed[k] for k in keys if processed.get(k) is not None), None)
            if rows is None:
                continue
            n = len(rows)
            # One row per item: its own scope text ids (lengths may differ: a list), and
            # the request's options.
            scopes = hf_processor_mm_kwargs[SCOPE_IDS][modality]
            assert len(scopes) == n, f"{len(scopes)} {modality} scopes for {n} items"
            processed[field(modality, PROMPT_IDS)] = list(scopes)
            for key, dtype in scalar_fields().items():
                value = hf_processor_mm_kwargs[key]
                processed[field(modality, key)] = torch.full((n, 1), value, dtype=dtype)
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
        fixed = functools.partial(self._zspa_fixed_slots, mm_items)
        return [
            _pruned(u, ratio, fixed) if u.modality in self.zspa_modalities else u for u in updates
        ]

    def _zspa_fixed_slots(self, mm_items, modality: str, item_idx: int) -> int:
        """Embedding slots of an item that are structure, never pruned and not in its
        budget (LLaVA-NeXT's image_newline rows); the worker keeps the same rows
        (``PruningModelMixin._zspa_fixed_rows``)."""
        return 0


class ImageTokensFromInfo:
    """``_zspa_tokens_before`` for families whose ``ProcessingInfo.get_num_image_tokens``
    takes the image size, the HF processor and the processor kwargs (Gemma 3, InternVL):
    the stock count (pan-and-scan crops and tiles included), or the embedding rows."""

    def _zspa_tokens_before(self, inputs: ProcessorInputs, result) -> int:
        items = inputs.mm_data_items.get_items("image", (ImageEmbeddingItems, ImageProcessorItems))
        n = len(result["mm_placeholders"].get("image", []))
        if isinstance(items, ImageEmbeddingItems):
            return sum(items.get_feature_size(i) for i in range(n))
        kwargs = strip_private(config.strip(inputs.hf_processor_mm_kwargs))
        processor = self.info.get_hf_processor(**kwargs)
        sizes = [items.get_image_size(i) for i in range(n)]
        return sum(
            self.info.get_num_image_tokens(
                image_width=size.width, image_height=size.height, processor=processor,
                mm_kwargs=kwargs,
            )
            for size in sizes
        )  # fmt: skip


def _salted(item_hash: str, scope_ids: torch.Tensor) -> str:
    digest = hashlib.sha256(item_hash.encode())
    digest.update(np.asarray(scope_ids, dtype="<i8").tobytes())
    return digest.hexdigest()


def _pruned(update: PromptReplacement, ratio: float, fixed) -> PromptReplacement:
    full = update.replacement
    if not callable(full):
        raise NotImplementedError(f"static {update.modality} replacement: {full!r}")

    def pruned(item_idx: int):
        tokens = full(item_idx)
        if isinstance(tokens, list):  # N copies of the placeholder token
            n_fixed = fixed(update.modality, item_idx)
            return tokens[: keep_count(len(tokens) - n_fixed, ratio) + n_fixed]
        if isinstance(tokens, PromptUpdateDetails) and tokens.is_embed is not None:
            return _pruned_details(tokens, ratio)
        raise NotImplementedError(f"{update.modality} replacement of type {type(tokens)}")

    return PromptReplacement(modality=update.modality, target=update.target, replacement=pruned)


def _pruned_details(details: PromptUpdateDetails, ratio: float) -> PromptUpdateDetails:
    """Structure tokens around the embeddings (Gemma 3's "\n\n<start_of_image>" ...
    "<end_of_image>\n\n", the text between pan-and-scan crops) stay; each contiguous run
    of embedding positions is one budget unit and keeps the first
    ``keep_count(run, ratio)`` of its slots (the worker fills them with the unit's kept
    tokens, in order: ``seam/worker.select_units``)."""
    full = list(details.full)
    is_embed = details.is_embed(full).tolist()
    slot = embed_token(full, is_embed)
    out, run = [], 0
    for token, embed in zip([*full, None], [*is_embed, False], strict=True):
        if embed:
            run += 1
            continue
        if run:
            out += [slot] * keep_count(run, ratio)
            run = 0
        if token is not None:
            out.append(token)
    return PromptUpdateDetails(full=out, is_embed=details.is_embed)


def embed_token(full: list[int], is_embed: list[bool]) -> int:
    """The one token id of the embedding slots (a mix would need a layout of its own)."""
    ids = {t for t, e in zip(full, is_embed, strict=True) if e}
    if len(ids) != 1:
        raise NotImplementedError(f"embedding slots of several token ids: {sorted(ids)}")
    return ids.pop()
