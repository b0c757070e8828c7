"""The tiny LLaVA in tests: its token ids, generation and comparable outputs."""

from __future__ import annotations

from tests.support.engine import greedy

RATIOS = [0.0, 0.5, 0.75, 0.9]
QUESTION = "what is in this image?"
IMAGE_TOKEN_ID = 4  # <image>: the fifth special token of the tiny tokenizer (tiny_llava.py)


def image_tokens(ids) -> int:
    return sum(1 for t in ids if t == IMAGE_TOKEN_ID)


def text_token_count(llm, question: str) -> int:
    tok = llm.get_tokenizer()
    return len(tok(f"USER: \n{question} ASSISTANT:", add_special_tokens=True).input_ids)


def generate(llm, *reqs, n: int = 4):
    return llm.generate(list(reqs), greedy(n), use_tqdm=False)


def signature(out) -> tuple:
    """Greedy tokens and the first step's top logprobs, rounded for float32 noise."""
    first = out.outputs[0].logprobs[0]
    return (
        tuple(out.outputs[0].token_ids),
        tuple(sorted((t, round(lp.logprob, 3)) for t, lp in first.items())),
    )


def generate_requests(payload: dict) -> list:
    """For ``run_fresh``: ``payload["requests"]`` as ``[question, image seeds, options]``
    on ``payload["model"]``; ``[prompt token ids, signature]`` per request."""
    from vllm import LLM

    from tests.support.engine import engine_kwargs, image, request

    llm = LLM(**engine_kwargs(payload["model"]))
    reqs = [request(q, *[image(s) for s in seeds], **kw) for q, seeds, kw in payload["requests"]]
    outs = llm.generate(reqs, greedy(), use_tqdm=False)
    return [[list(o.prompt_token_ids), signature(o)] for o in outs]
