"""The plugin inside the real vLLM 0.32 engine (CPU) on a tiny random-weight LLaVA."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.support.engine import image, request, run_fresh, tower_probe
from tests.support.llava import (
    QUESTION,
    RATIOS,
    generate,
    generate_requests,
    image_tokens,
    signature,
    text_token_count,
)
from zspa_vllm import pruning

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.mark.parametrize("ratio", RATIOS)
def test_prompt_length(llm, ratio):
    (out,) = generate(llm, request(QUESTION, image(0), prune_ratio=ratio))
    assert len(out.prompt_token_ids) == text_token_count(llm, QUESTION) + pruning.keep_count(
        576, ratio
    )


def hf_logprobs(path: str, prompt_ids: list[int], img, question: str, select) -> torch.Tensor:
    """Next-token log-probs of the HF model fed inputs_embeds pruned outside vLLM."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(path)
    pixels = processor.image_processor(img, return_tensors="pt")["pixel_values"]
    cfg = model.config
    with torch.no_grad():
        feats = model.get_image_features(
            pixel_values=pixels,
            vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        )
        feats = getattr(feats, "pooler_output", feats)  # transformers 5 wraps the output
        feats = (feats[0] if isinstance(feats, (list, tuple)) else feats).reshape(-1, 128)
        table = model.get_input_embeddings()
        # DESIGN §1: the prompt's text tokens = the templated prompt minus image
        # placeholders minus special tokens, embedded with the LLM's own table.
        tok = processor.tokenizer
        text = tok(f"USER: <image>\n{question} ASSISTANT:").input_ids
        text = [t for t in text if t != cfg.image_token_index and t not in tok.all_special_ids]
        keep = sum(1 for t in prompt_ids if t == cfg.image_token_index)
        kept = feats[select(feats, table(torch.tensor(text)), keep)]
        ids = torch.tensor(prompt_ids)
        embeds = table(ids.clamp(max=table.num_embeddings - 1))
        embeds[ids == cfg.image_token_index] = kept
        logits = model(inputs_embeds=embeds[None]).logits[0, -1]
    return torch.log_softmax(logits.double(), dim=-1)


@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
def test_matches_hf_with_pruning_outside_vllm(llm, tiny_llava, ratio):
    img = image(1)
    (out,) = generate(llm, request(QUESTION, img, prune_ratio=ratio))
    want = hf_logprobs(tiny_llava, out.prompt_token_ids, img, QUESTION, pruning.zspa_select)
    got = out.outputs[0].logprobs[0]
    assert out.outputs[0].token_ids[0] == int(want.argmax())
    for token, lp in got.items():
        assert lp.logprob == pytest.approx(float(want[token]), abs=1e-3)
    # The comparison can fail: another kept set (same count) gives clearly other logprobs.
    other = hf_logprobs(tiny_llava, out.prompt_token_ids, img, QUESTION, pruning.uniform_select)
    assert max(abs(lp.logprob - float(other[t])) for t, lp in got.items()) > 1e-2


def run_isolated(tiny_llava: str, env: dict, reqs: list) -> list:
    """Generate in a fresh process (the plugin registers once per process)."""
    return run_fresh(generate_requests, {"model": tiny_llava, "requests": reqs}, env)


def test_ratio_zero_equals_plugin_disabled(llm, tiny_llava):
    spec = [[QUESTION, [2], {}], ["count the apples", [3, 4], {"prune_ratio": 0.0}]]
    stock = run_isolated(tiny_llava, {"ZSPA_DISABLE": "1"}, spec)
    outs = generate(
        llm, request(QUESTION, image(2)), request("count the apples", image(3), image(4))
    )
    for (ids, sig), out in zip(stock, outs, strict=True):
        assert ids == list(out.prompt_token_ids)
        assert json.loads(json.dumps(signature(out))) == sig


def test_plugin_disabled_really_is_stock(tiny_llava):
    # Guards the test above: with ZSPA_DISABLE the ratio is ignored by stock vLLM
    # (576 placeholders), so the two runs really compared plugin against stock.
    ((ids, _),) = run_isolated(tiny_llava, {"ZSPA_DISABLE": "1"}, [[QUESTION, [2], {}]])
    assert image_tokens(ids) == 576


def test_same_image_different_prompts_never_share_pruned_tokens(llm):
    img = image(5)
    qa, qb = "what colour is the car?", "how many apples are on the table?"
    solo_a = signature(generate(llm, request(qa, img, prune_ratio=0.75))[0])
    solo_b = signature(generate(llm, request(qb, img, prune_ratio=0.75))[0])
    assert solo_a != solo_b  # otherwise the test could not tell them apart
    batch = generate(llm, request(qa, img, prune_ratio=0.75), request(qb, img, prune_ratio=0.75))
    assert [signature(o) for o in batch] == [solo_a, solo_b]
    # One after the other, with every cache warm, in both orders.
    for q, want in ((qb, solo_b), (qa, solo_a), (qb, solo_b)):
        assert signature(generate(llm, request(q, img, prune_ratio=0.75))[0]) == want


def test_mixed_batch_equals_single_runs(llm):
    methods = list(pruning.METHODS)
    reqs = [
        request(
            f"question {i}: describe the picture",
            image(10 + i),
            prune_ratio=[0.0, 0.5, 0.75, 0.9][i % 4],
            prune_method=methods[i % len(methods)],
        )
        for i in range(8)
    ]
    reqs[3]["multi_modal_data"]["image"].append(image(99))  # two images in one prompt
    reqs[3]["prompt"] = reqs[3]["prompt"].replace("<image>", "<image><image>")
    reqs[6]["mm_processor_kwargs"]["prune_core_ratio"] = 0.2
    singles = [signature(generate(llm, r)[0]) for r in reqs]
    batch = generate(llm, *reqs)
    assert [signature(o) for o in batch] == singles
    n_images = [len(r["multi_modal_data"]["image"]) for r in reqs]
    for out, r, n in zip(batch, reqs, n_images, strict=True):
        keep = pruning.keep_count(576, r["mm_processor_kwargs"]["prune_ratio"])
        assert image_tokens(out.prompt_token_ids) == n * keep


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"prune_ratio": -0.1}, "prune_ratio"),
        ({"prune_ratio": 1.0}, "prune_ratio"),
        ({"prune_ratio": math.nan}, "prune_ratio"),
        ({"prune_ratio": "abc"}, "prune_ratio"),
        ({"prune_ratio": 0.5, "prune_method": "topk"}, "prune_method"),
        ({"prune_ratio": 0.5, "prune_core_ratio": 2}, "prune_core_ratio"),
        ({"prune_rato": 0.5}, "prune_rato"),
    ],
)
def test_bad_options_are_rejected_and_the_engine_keeps_serving(llm, options, field):
    with pytest.raises(ValueError, match=field):
        generate(llm, request(QUESTION, image(0), **options))
    (out,) = generate(llm, request(QUESTION, image(0), prune_ratio=0.5))
    assert len(out.prompt_token_ids) == text_token_count(llm, QUESTION) + 288


def test_client_cannot_smuggle_private_fields(llm):
    # zspa_* keys are the processor->model channel; a client setting them directly
    # must not bypass validation or change the token count.
    (out,) = generate(llm, request(QUESTION, image(0), zspa_ratio=0.9))
    assert image_tokens(out.prompt_token_ids) == 576


def test_engine_default_and_request_override(tiny_llava):
    # Engine default 0.75 (LLM(mm_processor_kwargs=...)); a request's 0 wins over it.
    env = {"ZSPA_TEST_ENGINE_OVERRIDES": json.dumps({"mm_processor_kwargs": {"prune_ratio": 0.75}})}
    outs = run_isolated(
        tiny_llava, env, [[QUESTION, [0], {}], [QUESTION, [0], {"prune_ratio": 0.0}]]
    )
    assert [image_tokens(ids) for ids, _ in outs] == [144, 576]


def test_stats_hook_reports_each_request_once(llm):
    from zspa_vllm import stats

    seen: list[stats.PruneStats] = []
    unsubscribe = stats.add_listener(seen.append)
    try:
        reqs = [
            request(QUESTION, image(30), prune_ratio=0.75, prune_method="random"),
            request("compare", image(31), image(32), prune_ratio=0.5),
            request(QUESTION, image(30), prune_ratio=0.75, prune_method="random"),  # cache hit
            request(QUESTION, image(33)),  # pruning off
            request("no image here"),
        ]
        outs = generate(llm, *reqs)
    finally:
        unsubscribe()
    by_prompt = {s.prompt_token_ids: s for s in seen}
    assert len(seen) == 4  # text-only prompts publish nothing
    want = [(576, 144, 0.75, "random"), (1152, 576, 0.5, "zspa"), (576, 144, 0.75, "random")]
    want.append((576, 576, 0.0, "zspa"))
    for out, (before, after, ratio, method) in zip(outs, want, strict=False):
        got = by_prompt[tuple(out.prompt_token_ids)]
        assert (got.tokens_before, got.tokens_after, got.ratio, got.method) == (
            before,
            after,
            ratio,
            method,
        )
        assert image_tokens(out.prompt_token_ids) == after


@pytest.mark.parametrize("ratio", RATIOS)
def test_siglip_tower_prunes_and_matches_hf(siglip_llm, tiny_llava_siglip, ratio):
    # Same vLLM architecture, other tower (llava-interleave-qwen): 729 tokens, no CLS.
    img = image(6, 384)
    (out,) = generate(siglip_llm, request(QUESTION, img, prune_ratio=ratio))
    assert image_tokens(out.prompt_token_ids) == pruning.keep_count(729, ratio)
    want = hf_logprobs(tiny_llava_siglip, out.prompt_token_ids, img, QUESTION, pruning.zspa_select)
    for token, lp in out.outputs[0].logprobs[0].items():
        assert lp.logprob == pytest.approx(float(want[token]), abs=1e-3)


def test_warm_up_takes_stacked_or_listed_embeds():
    # embed_multimodal may return one stacked tensor (equal-size images) or a sequence;
    # a truth test on the tensor once killed the engine on every unpruned batch.
    import torch

    from zspa_vllm.seam.worker import warm_up

    for embeds in (torch.zeros(2, 5, 8), [torch.zeros(5, 8)], (), torch.zeros(0, 5, 8)):
        warm_up(embeds)  # on the CPU a no-op, never an error


def test_vision_tower_runs_within_the_encoder_budget(llm):
    """vLLM's scheduler admits images by their pruned count, so one step may hold more full
    images than the profiled encoder budget: the tower then runs on sub-batches, with the
    same result as one call."""
    import functools

    images = (image(60), image(61), image(62))
    runs = []
    # One image per call; everything in one call. divprune ignores prune_core_ratio, which
    # still enters the images' hashes: the second run misses every cache, selects the same.
    for budget, core in ((576, 0.6), (10**6, 0.5)):
        req = request("compare the three pictures", *images, prune_ratio=0.9,
                      prune_method="divprune", prune_core_ratio=core)  # fmt: skip
        llm.apply_model(functools.partial(tower_probe, tower="vision_tower", budget=budget))
        try:
            (out,) = generate(llm, req)
        finally:
            (calls,) = llm.apply_model(
                functools.partial(tower_probe, tower="vision_tower", budget=None)
            )
        runs.append((calls, signature(out), image_tokens(out.prompt_token_ids)))
    (split_calls, split, n_split), (whole_calls, whole, n_whole) = runs
    assert (split_calls, whole_calls) == (3, 1)
    assert split == whole and n_split == n_whole == 3 * pruning.keep_count(576, 0.9)


def test_encoder_batches_split_llava_pixels_by_image():
    from types import SimpleNamespace

    import torch

    from zspa_vllm.seam.llava import PrunedLlavaForConditionalGeneration

    class Fake(PrunedLlavaForConditionalGeneration):
        def __init__(self, budget):
            self.config = SimpleNamespace(
                vision_config=SimpleNamespace(image_size=336, patch_size=14),
                vision_feature_select_strategy="default",
            )
            self._zspa_encoder_budget = budget

    pixels = torch.arange(5.0)[:, None, None, None].expand(5, 3, 2, 2)
    for budget, sizes in ((576, [1] * 5), (1200, [2, 2, 1]), (100, [1] * 5), (10**4, [5])):
        batches = list(Fake(budget)._zspa_encoder_batches({"pixel_values": pixels}))
        assert [len(b["pixel_values"]) for b in batches] == sizes, budget
        assert torch.equal(torch.cat([b["pixel_values"] for b in batches]), pixels)
    # Precomputed embeddings are not encoded: never split.
    assert len(list(Fake(576)._zspa_encoder_batches({"image_embeds": pixels}))) == 1
