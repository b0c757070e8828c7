"""The 1-D RoPE families in tests (LLaVA-NeXT, Gemma 3, InternVL, Mistral 3): requests, one
engine per fresh process, and the independent HF transformers reference (pruned visual tokens
dropped before the forward pass, kept ones compacted)."""

from __future__ import annotations

import functools

import torch

from tests.support.engine import greedy
from tests.support.qwen import qimage, qvideo
from zspa_vllm import pruning


def request(text: str, images=(), videos=(), **kwargs) -> dict:
    data = {"image": list(images)} if images else {}
    if videos:
        data["video"] = list(videos)
    return {"prompt": text, "multi_modal_data": data, "mm_processor_kwargs": kwargs}


def run_batches(payload: dict) -> dict:
    """For ``run_fresh``: one engine on ``payload["model"]`` (``payload["engine"]``:
    overrides), then each named batch of ``[text, [[seed, w, h]...], options]`` requests
    generated together. Per batch: ``[prompt ids, greedy tokens, {token: first-step
    logprob}]`` per request, or ``{"error": message}`` if the batch was refused.

    ``payload["budgets"]``: batch name -> the encoder budget to run it under; the number of
    vision-tower calls it made is returned as ``"<name> calls"``."""
    from vllm import LLM

    from tests.support.engine import engine_kwargs, tower_probe

    llm = LLM(**engine_kwargs(payload["model"], **payload.get("engine", {})))
    out = {}
    for name, specs in payload["batches"].items():
        reqs = [
            request(
                t, [_image(s) for s in imgs], [qvideo(*v) for v in vids[0]] if vids else (), **kw
            )
            for t, imgs, kw, *vids in specs
        ]
        budget = payload.get("budgets", {}).get(name)
        if budget is not None:
            llm.apply_model(functools.partial(tower_probe, tower="vision_tower", budget=budget))
        try:
            outs = llm.generate(reqs, greedy(), use_tqdm=False)
        except ValueError as exc:
            out[name] = {"error": str(exc)}
            continue
        finally:
            if budget is not None:
                probe = functools.partial(tower_probe, tower="vision_tower", budget=None)
                (out[f"{name} calls"],) = llm.apply_model(probe)
        out[name] = [
            [
                list(o.prompt_token_ids),
                list(o.outputs[0].token_ids),
                {t: lp.logprob for t, lp in o.outputs[0].logprobs[0].items()},
            ]
            for o in outs
        ]
    return out


def _image(spec):
    """``[seed, w, h]``: an image; ``{"embeds": [seed, rows, dim]}``: precomputed embeddings
    (random, for an engine with ``enable_mm_embeds``)."""
    if isinstance(spec, dict):
        seed, n, dim = spec["embeds"]
        return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    return qimage(*spec)


@functools.lru_cache(maxsize=1)
def _hf(path: str):
    import transformers

    model = transformers.AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
    return model.eval(), transformers.AutoProcessor.from_pretrained(path)


def hf_reference(
    path, text, images, *, token, ratio, select, videos=(), video_token=None,
    processor_kwargs=None, steps=4,
):  # fmt: skip
    """(first-step log-probs, greedy tokens, pruned prompt ids) from HF transformers.

    ``token``: the visual token of the processed prompt (``video_token``: a video's). Each
    contiguous run of it is one budget unit (an InternVL or LLaVA-NeXT image with all its
    tiles or crops, a Gemma 3 view, a Mistral 3 row of the image grid, a LLaVA-OneVision
    video) and takes the next rows of the vision features, in prompt order; it keeps
    ``keep_count(run, ratio)`` of them. The selector sees the text tokens of the templated
    prompt (placeholders and special tokens removed). Positions are those of the pruned
    prompt (1-D: compacted); causal attention, as vLLM's CPU backend runs every model."""
    model, processor = _hf(path)
    media = {"images": list(images)} if images else {}
    if videos:
        media["videos"] = list(videos)
    inputs = processor(text=[text], **media, return_tensors="pt", **(processor_kwargs or {}))
    ids = inputs["input_ids"][0]
    tok = processor.tokenizer
    feats = {}  # visual token id -> the features its runs take, in prompt order
    with torch.no_grad():
        if images:
            sizes = {"image_sizes": inputs["image_sizes"]} if "image_sizes" in inputs else {}
            f = model.model.get_image_features(pixel_values=inputs["pixel_values"], **sizes)
            feats[tok.convert_tokens_to_ids(token)] = _rows(f)
        if videos:
            f = model.model.get_video_features(pixel_values_videos=inputs["pixel_values_videos"])
            feats[tok.convert_tokens_to_ids(video_token)] = _rows(f)
        special = set(tok.all_special_ids) | set(feats)
        table = model.get_input_embeddings()
        scope = [t for t in tok(text, add_special_tokens=False).input_ids if t not in special]
        prompt = table(torch.tensor(scope))
        embeds = table(ids)
        keep = torch.ones(len(ids), dtype=torch.bool)
        # LLaVA-NeXT / OneVision: rows equal to the learned image_newline are structure,
        # always kept and outside the budget.
        newline = getattr(model.model, "image_newline", None)
        taken = dict.fromkeys(feats, 0)
        i = 0
        while i < len(ids):
            visual = int(ids[i])
            if visual not in feats:
                i += 1
                continue
            n = 1
            while i + n < len(ids) and int(ids[i + n]) == visual:
                n += 1
            feat = feats[visual][taken[visual] : taken[visual] + n]
            taken[visual] += n
            embeds[i : i + n] = feat
            fixed = torch.zeros(n, dtype=torch.bool)
            if newline is not None:
                fixed = (feat == newline).all(dim=-1)
            scored = (~fixed).nonzero().squeeze(-1)
            mask = fixed.clone()
            kept = select(feat[scored], prompt, pruning.keep_count(len(scored), ratio))
            mask[scored[kept]] = True
            keep[i : i + n] = mask
            i += n
        assert all(taken[t] == len(f) for t, f in feats.items()), taken
        x = embeds[keep]
        tokens, first = [], None
        for _ in range(steps):
            hidden = model.model.language_model(inputs_embeds=x[None]).last_hidden_state
            logprobs = torch.log_softmax(model.lm_head(hidden[0, -1]).double(), dim=-1)
            first = logprobs if first is None else first
            token_id = int(logprobs.argmax())
            tokens.append(token_id)
            x = torch.cat([x, table(torch.tensor([token_id]))])
    return first, tokens, ids[keep].tolist()


def _rows(feats) -> torch.Tensor:
    """Every view's (or frame's) feature rows, in prompt order."""
    feats = getattr(feats, "pooler_output", feats)
    if isinstance(feats, (list, tuple)):  # one tensor per image (Mistral 3, LLaVA-NeXT)
        feats = torch.cat(list(feats))
    return feats.reshape(-1, feats.shape[-1])


def assert_matches(run, reference) -> None:
    """A ``run_batches`` result equals an ``hf_reference``: the same pruned prompt, the
    first step's log-probs within 1e-3, the same greedy tokens."""
    import pytest

    ids, tokens, got = run
    want, want_tokens, want_ids = reference
    assert ids == want_ids
    for token, logprob in got.items():
        assert logprob == pytest.approx(float(want[int(token)]), abs=1e-3)
    assert tokens == want_tokens


def count(ids, token_id: int) -> int:
    return sum(1 for t in ids if t == token_id)
