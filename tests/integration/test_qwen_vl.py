"""The plugin inside real vLLM 0.32 (CPU) on tiny random-weight Qwen2-VL and Qwen2.5-VL.

The reference is an independent HF transformers pipeline: M-RoPE position ids from HF's
own ``get_rope_index`` on the UNPRUNED prompt, then the pruned visual tokens dropped
(embeddings and position ids together) before the forward pass, and greedy decoding at
the positions that follow the unpruned prompt.
"""

from __future__ import annotations

import functools
import json

import pytest
import torch

from tests.support.engine import engine_kwargs, fresh_process, start_engine, tower_probe
from tests.support.qwen import (
    CASES,
    IMG,
    VID,
    chat,
    generate,
    hf_reference,
    qimage,
    qrequest,
    qvideo,
    run_isolated,
    signature,
    visual_tokens,
)
from zspa_vllm import pruning

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_hf_with_positions_of_the_unpruned_prompt(qwen, case, ratio):
    variant, path, llm = qwen
    text, specs = CASES[case]
    images = [qimage(s, w, h) for s, w, h in specs]
    (out,) = generate(llm, qrequest(variant, text, images, prune_ratio=ratio))
    want, tokens, ids = hf_reference(
        path, variant, text, images, ratio=ratio, select=pruning.zspa_select
    )
    assert list(out.prompt_token_ids) == ids  # same text, same kept count per image
    got = out.outputs[0].logprobs[0]
    for token, lp in got.items():
        assert lp.logprob == pytest.approx(float(want[token]), abs=1e-3)
    assert list(out.outputs[0].token_ids) == tokens  # decode positions continue right
    # The comparison can fail: other kept tokens, or the right tokens at compacted
    # positions, give clearly other log-probs.
    for control in (
        hf_reference(path, variant, text, images, ratio=ratio, select=pruning.uniform_select),
        hf_reference(
            path, variant, text, images, ratio=ratio, select=pruning.zspa_select, naive=True
        ),
    ):
        assert max(abs(lp.logprob - float(control[0][t])) for t, lp in got.items()) > 1e-2


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.9])
def test_prompt_length_per_image_size(qwen, ratio):
    variant, _, llm = qwen
    # (w, h) -> N = (h/28) * (w/28) after the processor's resize (min 56x56, max 448x448).
    sizes = {(56, 56): 4, (224, 224): 64, (420, 280): 150, (448, 448): 256, (112, 336): 48}
    text = "what is in this image?"
    (bare,) = generate(llm, {"prompt": chat(text)})
    for (w, h), n in sizes.items():
        (out,) = generate(
            llm, qrequest(variant, chat(IMG, text), [qimage(7, w, h)], prune_ratio=ratio)
        )
        # The placeholder itself is one token of the bare prompt's template.
        assert len(out.prompt_token_ids) == len(bare.prompt_token_ids) + 2 + pruning.keep_count(
            n, ratio
        )
        assert visual_tokens(out.prompt_token_ids) == pruning.keep_count(n, ratio)


@pytest.mark.parametrize("ratio", [0.5, 0.75])
def test_video_matches_hf(qwen, ratio):
    variant, path, llm = qwen
    video = qvideo(8, frames=6)  # 3 temporal grid steps of 4x6 merged tokens: N = 72
    text = chat(VID, "what happens in this video?")
    (out,) = generate(llm, qrequest(variant, text, videos=[video], prune_ratio=ratio))
    assert visual_tokens(out.prompt_token_ids) == pruning.keep_count(72, ratio)
    want, tokens, ids = hf_reference(
        path, variant, text, videos=[video], ratio=ratio, select=pruning.zspa_select
    )
    assert list(out.prompt_token_ids) == ids
    for token, lp in out.outputs[0].logprobs[0].items():
        assert lp.logprob == pytest.approx(float(want[token]), abs=1e-3)
    assert list(out.outputs[0].token_ids) == tokens


def test_image_and_video_in_one_prompt_matches_hf(qwen):
    variant, path, llm = qwen
    img, video = qimage(9, 336, 224), qvideo(10)
    text = chat(IMG, "and then", VID, "describe both")
    (out,) = generate(llm, qrequest(variant, text, [img], [video], prune_ratio=0.75))
    want, tokens, ids = hf_reference(
        path, variant, text, [img], [video], ratio=0.75, select=pruning.zspa_select
    )
    assert list(out.prompt_token_ids) == ids
    for token, lp in out.outputs[0].logprobs[0].items():
        assert lp.logprob == pytest.approx(float(want[token]), abs=1e-3)
    assert list(out.outputs[0].token_ids) == tokens


@pytest.fixture(scope="session")
def qwen_chunked(qwen):
    """Same checkpoint, prefill in 32-token chunks: every image is split across steps."""
    from vllm import LLM

    variant, path, _ = qwen
    engine = LLM(
        **engine_kwargs(
            path,
            limit_mm_per_prompt={"image": 4, "video": 2},
            enable_chunked_prefill=True,
            max_num_batched_tokens=32,
            max_model_len=1024,
            block_size=32,
        )
    )
    return variant, engine


def test_chunked_prefill_equals_unchunked(qwen, qwen_chunked):
    variant, _, llm = qwen
    _, chunked = qwen_chunked
    reqs = [
        qrequest(
            variant, CASES["two images"][0], [qimage(2, 280, 448), qimage(3)], prune_ratio=0.5
        ),
        qrequest(variant, chat(IMG, "what is this?"), [qimage(11, 448, 448)], prune_ratio=0.75),
        qrequest(variant, chat(VID, "what happens?"), videos=[qvideo(12)], prune_ratio=0.5),
    ]
    want = [signature(o) for o in generate(llm, *reqs)]
    # Twice: the second round also hits the prefix cache part-way through the images.
    for _ in range(2):
        assert [signature(o) for o in generate(chunked, *reqs)] == want


def test_same_image_different_prompts_never_share_pruned_tokens(qwen):
    variant, _, llm = qwen
    img = qimage(13)
    qa, qb = chat(IMG, "what colour is the car?"), chat(IMG, "how many apples are on the table?")
    solo_a = signature(generate(llm, qrequest(variant, qa, [img], prune_ratio=0.75))[0])
    solo_b = signature(generate(llm, qrequest(variant, qb, [img], prune_ratio=0.75))[0])
    batch = generate(
        llm,
        qrequest(variant, qa, [img], prune_ratio=0.75),
        qrequest(variant, qb, [img], prune_ratio=0.75),
    )
    assert [signature(o) for o in batch] == [solo_a, solo_b]
    for q, want in ((qb, solo_b), (qa, solo_a), (qb, solo_b)):
        assert signature(generate(llm, qrequest(variant, q, [img], prune_ratio=0.75))[0]) == want


def test_mixed_batch_equals_single_runs(qwen):
    variant, _, llm = qwen
    methods = list(pruning.METHODS)
    reqs = []
    for i in range(8):
        prune = {"prune_ratio": [0.0, 0.5, 0.75, 0.9][i % 4], "prune_method": methods[i % 5]}
        if i % 3 == 2:
            reqs.append(
                qrequest(variant, chat(VID, f"video {i}"), videos=[qvideo(20 + i)], **prune)
            )
        else:
            reqs.append(qrequest(variant, chat(IMG, f"question {i}"), [qimage(20 + i)], **prune))
    reqs.append(qrequest(variant, chat("no image here")))
    singles = [signature(generate(llm, r)[0]) for r in reqs]
    assert [signature(o) for o in generate(llm, *reqs)] == singles


def test_ratio_zero_equals_plugin_disabled(qwen):
    variant, path, llm = qwen
    specs = [
        [chat(IMG, "what is in this image?"), [30], [], {}],
        [chat(IMG, "and", VID, "describe"), [31], [32], {"prune_ratio": 0.0}],
    ]
    stock = run_isolated(path, variant, {"ZSPA_DISABLE": "1"}, specs)
    reqs = [
        qrequest(variant, t, [qimage(s) for s in i], [qvideo(s) for s in v], **kw)
        for t, i, v, kw in specs
    ]
    assert [json.loads(json.dumps(signature(o))) for o in generate(llm, *reqs)] == stock
    assert visual_tokens(stock[0][0]) == 150  # stock really ignored nothing: full count


def test_stats_report_unpruned_size_on_processor_cache_hits(qwen):
    from zspa_vllm import stats

    variant, _, llm = qwen
    seen: list[stats.PruneStats] = []
    unsubscribe = stats.add_listener(seen.append)
    try:
        req = qrequest(
            variant, chat(IMG, "the same again", VID), [qimage(40)], [qvideo(41)], prune_ratio=0.5
        )
        generate(llm, req)
        generate(llm, req)  # identical: a processor-cache hit, no item data to read
    finally:
        unsubscribe()
    # 150 image tokens + 2 x 4 x 6 video tokens (4 frames of 168x112).
    assert [(s.tokens_before, s.tokens_after) for s in seen] == [(150 + 48, 75 + 24)] * 2


def test_engine_video_pruning_rate_is_refused(tiny_qwen2_5_vl):
    # vLLM implements --video-pruning-rate (EVS) for Qwen2.5-VL (and Qwen3-VL), not Qwen2-VL.
    payload = {"path": tiny_qwen2_5_vl, "video_pruning_rate": 0.5}
    proc = fresh_process(start_engine, payload)
    assert proc.returncode != 0
    assert "--video-pruning-rate" in proc.stderr and "ZSPA_DISABLE=1" in proc.stderr


def test_encoder_batches_stay_within_the_budget():
    from types import SimpleNamespace

    from zspa_vllm import families
    from zspa_vllm.seam.qwen_vl import _PrunedQwenVL

    class Fake(_PrunedQwenVL):
        zspa_family = families.get("Qwen2VLForConditionalGeneration")

        def __init__(self):
            self.config = SimpleNamespace(vision_config=SimpleNamespace(spatial_merge_size=2))
            self._zspa_encoder_budget = 20

    # Patches per item 64, 16, 4, 48, 256 -> merged tokens (2x2) 16, 4, 1, 12, 64.
    grids = torch.tensor([[1, 8, 8], [1, 4, 4], [1, 2, 2], [2, 4, 6], [1, 16, 16]])
    pixels = torch.arange(int(grids.prod(-1).sum()), dtype=torch.float32)[:, None]
    kwargs = {"pixel_values": pixels, "image_grid_thw": grids}
    batches = list(Fake()._zspa_encoder_batches(kwargs))
    # 16 + 4 = 20 fits; 1 + 12 fits; 64 is over budget alone (one item always runs).
    assert [b["image_grid_thw"].tolist() for b in batches] == [
        grids[:2].tolist(),
        grids[2:4].tolist(),
        grids[4:].tolist(),
    ]
    assert torch.equal(torch.cat([b["pixel_values"] for b in batches]), pixels)
    for b in batches:
        assert len(b["pixel_values"]) == int(b["image_grid_thw"].prod(-1).sum())
    # An unknown per-item key: no split (it could not be sliced correctly).
    assert len(list(Fake()._zspa_encoder_batches(kwargs | {"other": grids}))) == 1


def test_vision_tower_split_by_budget_matches_hf(qwen):
    variant, path, llm = qwen
    text = CASES["two images"][0]
    images = [qimage(50, 448, 280), qimage(51, 224, 336)]
    llm.apply_model(functools.partial(tower_probe, tower="visual", budget=1))
    try:
        (out,) = generate(llm, qrequest(variant, text, images, prune_ratio=0.75))
    finally:
        (calls,) = llm.apply_model(functools.partial(tower_probe, tower="visual", budget=None))
    assert calls == 2  # both images were scheduled in one step, encoded one at a time
    want, tokens, ids = hf_reference(
        path, variant, text, images, ratio=0.75, select=pruning.zspa_select
    )
    assert list(out.prompt_token_ids) == ids
    for token, lp in out.outputs[0].logprobs[0].items():
        assert lp.logprob == pytest.approx(float(want[token]), abs=1e-3)
    assert list(out.outputs[0].token_ids) == tokens
