"""Multi-turn chats keep their prefix cache while pruned: each image is selected with the
text of its own turn (``prune_scope="turn"``, the default), so later turns find the
earlier images' hashes, encoder outputs and KV blocks again (real engine, tiny LLaVA)."""

from __future__ import annotations

import pytest

from tests.support.engine import greedy, image
from tests.support.llava import IMAGE_TOKEN_ID, signature
from zspa_vllm import pruning

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

QUESTIONS = ["what is in this image?", "and what colour is the sky?", "is it day or night?"]


def conversation(llm, img, questions, **prune):
    """One chat: the image in the first user message; returns each turn's output."""
    messages, outs = [], []
    for i, q in enumerate(questions):
        parts = [{"type": "image_pil", "image_pil": img}] if i == 0 else []
        messages.append({"role": "user", "content": [*parts, {"type": "text", "text": q}]})
        (out,) = llm.chat(messages, greedy(4), mm_processor_kwargs=prune, use_tqdm=False)
        outs.append(out)
        messages.append({"role": "assistant", "content": out.outputs[0].text})
    return outs, messages


def block_floor(llm, n: int) -> int:
    block = llm.llm_engine.vllm_config.cache_config.block_size
    return n // block * block


def test_later_turns_hit_the_prefix_cache_for_everything_before_them(llm):
    llm.reset_prefix_cache()
    outs, _ = conversation(llm, image(40), QUESTIONS, prune_ratio=0.75)
    keep = pruning.keep_count(576, 0.75)
    for out in outs:
        assert sum(t == IMAGE_TOKEN_ID for t in out.prompt_token_ids) == keep
    for prev, out in zip(outs, outs[1:], strict=False):
        # Each turn starts with the whole previous prompt (scope text unchanged), so every
        # full block of it is a hit, image blocks included.
        assert out.prompt_token_ids[: len(prev.prompt_token_ids)] == prev.prompt_token_ids
        assert out.num_cached_tokens >= block_floor(llm, len(prev.prompt_token_ids)) > 0


def test_prompt_scope_is_todays_rule_and_loses_the_cache(llm):
    llm.reset_prefix_cache()
    outs, _ = conversation(llm, image(41), QUESTIONS[:2], prune_ratio=0.75, prune_scope="prompt")
    first_image = outs[1].prompt_token_ids.index(IMAGE_TOKEN_ID)
    # The second turn's text re-selects (and re-hashes) the image: nothing from the image on hits.
    assert outs[1].num_cached_tokens <= first_image
    # A single question: both scopes are the same text, so the same selection.
    llm.reset_prefix_cache()
    (turn,) = conversation(llm, image(41), QUESTIONS[:1], prune_ratio=0.75)[0]
    assert signature(turn) == signature(outs[0])


def test_cached_turns_answer_as_a_cold_engine_would(llm):
    # No stale reuse: each warm turn equals the same request on an empty prefix cache, and
    # a second conversation on the same image with other text is not served the first's
    # selection.
    llm.reset_prefix_cache()
    warm_a, messages_a = conversation(llm, image(42), QUESTIONS, prune_ratio=0.75)
    warm_b, _ = conversation(llm, image(42), ["how many cars are there?"], prune_ratio=0.75)
    assert signature(warm_b[0]) != signature(warm_a[0])
    for turn in range(len(QUESTIONS)):
        llm.reset_prefix_cache()
        (cold,) = llm.chat(
            messages_a[: 2 * turn + 1], greedy(4), mm_processor_kwargs={"prune_ratio": 0.75},
            use_tqdm=False,
        )  # fmt: skip
        assert cold.num_cached_tokens == 0
        assert signature(cold) == signature(warm_a[turn])


def test_qwen_chat_keeps_its_prefix_cache_and_answers_as_cold(qwen):
    # The Qwen template (<|im_start|>assistant header) and M-RoPE positions: turn 2 reuses
    # turn 1 from the prefix cache and answers exactly as on an empty cache.
    _, _, engine = qwen
    engine.reset_prefix_cache()
    # 448 x 448 = 256 visual tokens; at 0.5 the first prompt fills at least one 128-token block.
    outs, messages = conversation(engine, image(43, size=448), QUESTIONS[:2], prune_ratio=0.5)
    first, second = outs
    assert second.prompt_token_ids[: len(first.prompt_token_ids)] == first.prompt_token_ids
    assert second.num_cached_tokens >= block_floor(engine, len(first.prompt_token_ids)) > 0
    engine.reset_prefix_cache()
    (cold,) = engine.chat(
        messages[:3], greedy(4), mm_processor_kwargs={"prune_ratio": 0.5}, use_tqdm=False
    )
    assert cold.num_cached_tokens == 0 and signature(cold) == signature(second)
