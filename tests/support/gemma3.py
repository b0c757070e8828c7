"""The tiny Gemma 3 in tests: chat text, requests, one engine per fresh process, and the
independent HF transformers reference (pruned soft tokens dropped before the forward pass,
kept ones compacted: 1-D positions)."""

from __future__ import annotations

import functools

import torch

from tests.support.engine import greedy
from tests.support.qwen import qimage
from zspa_vllm import pruning
from zspa_vllm.testing.tiny_gemma3 import BOI, SOFT

IMG = BOI
TOKENS_PER_IMAGE = 64  # tiny_gemma3.TOKENS_PER_IMAGE, stated again: the tests' own number


def chat(*parts: str) -> str:
    return "<bos><start_of_turn>user\n" + "".join(parts) + "<end_of_turn>\n<start_of_turn>model\n"


def grequest(text: str, images=(), **kwargs) -> dict:
    data = {"image": list(images)} if images else {}
    return {"prompt": text, "multi_modal_data": data, "mm_processor_kwargs": kwargs}


def run_batches(payload: dict) -> dict:
    """For ``run_fresh``: one engine on ``payload["model"]`` (``payload["engine"]``:
    overrides), then each named batch of ``[text, [[seed, w, h]...], options]`` requests
    generated together. Per batch: ``[prompt ids, greedy tokens, {token: first-step
    logprob}]`` per request, or ``{"error": message}`` if the batch was refused."""
    from vllm import LLM

    from tests.support.engine import engine_kwargs

    llm = LLM(**engine_kwargs(payload["model"], **payload.get("engine", {})))
    out = {}
    for name, specs in payload["batches"].items():
        reqs = [grequest(t, [qimage(*s) for s in imgs], **kw) for t, imgs, kw in specs]
        try:
            outs = llm.generate(reqs, greedy(), use_tqdm=False)
        except ValueError as exc:
            out[name] = {"error": str(exc)}
            continue
        out[name] = [
            [
                list(o.prompt_token_ids),
                list(o.outputs[0].token_ids),
                {t: lp.logprob for t, lp in o.outputs[0].logprobs[0].items()},
            ]
            for o in outs
        ]
    return out


@functools.lru_cache(maxsize=1)
def _hf(path: str):
    import transformers

    model = transformers.Gemma3ForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    return model.eval(), transformers.AutoProcessor.from_pretrained(path)


def hf_reference(path, text, images, *, ratio, select, processor_kwargs=None, steps=4):
    """(first-step log-probs, greedy tokens, pruned prompt ids) from HF transformers.

    Each run of soft tokens in the processed prompt is one view (the image, or one
    pan-and-scan crop) and keeps ``keep_count(64, ratio)`` of its own tokens; the selector
    sees the text tokens of the templated prompt (placeholders and special tokens
    removed). Causal attention everywhere, as vLLM's CPU backend runs it (README,
    "Gemma 3")."""
    model, processor = _hf(path)
    inputs = processor(
        text=[text], images=list(images), return_tensors="pt", **(processor_kwargs or {})
    )
    ids = inputs["input_ids"][0]
    tok = processor.tokenizer
    soft = tok.convert_tokens_to_ids(SOFT)
    special = set(tok.all_special_ids)
    with torch.no_grad():
        views = model.model.get_image_features(inputs["pixel_values"]).pooler_output
        views = iter(views)  # [views, 64, hidden]: the images' views in prompt order
        table = model.get_input_embeddings()
        scope = [t for t in tok(text, add_special_tokens=False).input_ids if t not in special]
        prompt = table(torch.tensor(scope))
        embeds = table(ids)
        keep = torch.ones(len(ids), dtype=torch.bool)
        i = 0
        while i < len(ids):
            if int(ids[i]) != soft:
                i += 1
                continue
            feat = next(views)
            n = feat.shape[0]
            assert bool((ids[i : i + n] == soft).all()) and int(ids[i + n]) != soft
            embeds[i : i + n] = feat
            mask = torch.zeros(n, dtype=torch.bool)
            mask[select(feat, prompt, pruning.keep_count(n, ratio))] = True
            keep[i : i + n] = mask
            i += n
        assert next(views, None) is None
        x = embeds[keep]
        tokens, first = [], None
        for _ in range(steps):
            hidden = model.model.language_model(inputs_embeds=x[None]).last_hidden_state
            logprobs = torch.log_softmax(model.lm_head(hidden[0, -1]).double(), dim=-1)
            first = logprobs if first is None else first
            token = int(logprobs.argmax())
            tokens.append(token)
            x = torch.cat([x, table(torch.tensor([token]))])
    return first, tokens, ids[keep].tolist()


def soft_tokens(ids, soft: int) -> int:
    return sum(1 for t in ids if t == soft)
