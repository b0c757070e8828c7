"""Qwen3-VL: images pruned like Qwen2-VL's (deepstack features kept with their rows);
videos frame by frame (each frame between its timestamp text and markers is a budget unit
and a t = 1 grid). Same HF reference as test_qwen_vl.py."""

from __future__ import annotations

import functools
import json

import pytest

from tests.support.engine import engine_kwargs, tower_record
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
V = "qwen3_vl"


@pytest.fixture(scope="session")
def qwen3(tiny_qwen3_vl):
    from vllm import LLM

    return LLM(**engine_kwargs(tiny_qwen3_vl, limit_mm_per_prompt={"image": 4, "video": 2}))


@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_hf_with_positions_of_the_unpruned_prompt(qwen3, tiny_qwen3_vl, case, ratio):
    text, specs = CASES[case]
    images = [qimage(s, w, h) for s, w, h in specs]
    (out,) = generate(qwen3, qrequest(V, text, images, prune_ratio=ratio))
    ref = {"ratio": ratio, "select": pruning.zspa_select}
    want, tokens, ids = hf_reference(tiny_qwen3_vl, V, text, images, **ref)
    assert list(out.prompt_token_ids) == ids
    got = out.outputs[0].logprobs[0]
    for token, lp in got.items():
        assert lp.logprob == pytest.approx(float(want[token]), abs=1e-3)
    assert list(out.outputs[0].token_ids) == tokens
    naive = hf_reference(tiny_qwen3_vl, V, text, images, naive=True, **ref)
    assert max(abs(lp.logprob - float(naive[0][t])) for t, lp in got.items()) > 1e-2


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.9])
def test_prompt_length_per_image_size(qwen3, ratio):
    # (w, h) -> N = (h/32) * (w/32) after the resize (Qwen3-VL: patch 16, merge 2).
    sizes = {(64, 64): 4, (256, 256): 64, (480, 320): 150, (512, 512): 256, (128, 384): 48}
    for (w, h), n in sizes.items():
        (out,) = generate(
            qwen3, qrequest(V, chat(IMG, "what?"), [qimage(7, w, h)], prune_ratio=ratio)
        )
        assert visual_tokens(out.prompt_token_ids) == pruning.keep_count(n, ratio)


@pytest.fixture(scope="session")
def qwen3_chunked(tiny_qwen3_vl):
    """32-token prefill chunks: every image is split across steps. Session-scoped: an
    in-process engine's shutdown tears down the parallel groups the others use."""
    from vllm import LLM

    return LLM(
        **engine_kwargs(
            tiny_qwen3_vl,
            limit_mm_per_prompt={"image": 4, "video": 2},
            enable_chunked_prefill=True,
            max_num_batched_tokens=32,
            max_model_len=1024,
        )
    )


def test_chunked_prefill_and_prefix_cache_equal_unchunked(qwen3, qwen3_chunked):
    chunked = qwen3_chunked
    reqs = [
        qrequest(V, CASES["two images"][0], [qimage(2, 320, 448), qimage(3)], prune_ratio=0.5),
        qrequest(V, chat(IMG, "what is this?"), [qimage(11, 512, 512)], prune_ratio=0.75),
        qrequest(V, chat(IMG, "and", VID), [qimage(12)], [qvideo(12)], prune_ratio=0.5),
    ]
    want = [signature(o) for o in generate(qwen3, *reqs)]
    for _ in range(2):
        assert [signature(o) for o in generate(chunked, *reqs)] == want


def test_cache_safety_and_mixed_batch(qwen3):
    img = qimage(13)
    qa, qb = chat(IMG, "what colour is the car?"), chat(IMG, "how many apples?")
    reqs = [
        qrequest(V, qa, [img], prune_ratio=0.75),
        qrequest(V, qb, [img], prune_ratio=0.75),
        qrequest(V, qa, [img], prune_ratio=0.5, prune_method="divprune"),
        qrequest(V, qa, [img]),
        qrequest(V, chat(VID, "a video, unpruned"), videos=[qvideo(14)]),
        qrequest(V, chat(VID, "a video, pruned"), videos=[qvideo(14)], prune_ratio=0.5),
        qrequest(V, chat("no image here")),
    ]
    singles = [signature(generate(qwen3, r)[0]) for r in reqs]
    assert singles[0] != singles[1]  # the prompts really select differently
    assert [signature(o) for o in generate(qwen3, *reqs)] == singles
    assert [signature(o) for o in generate(qwen3, *reversed(reqs))] == singles[::-1]


# A video of 4 frames at 168 x 112: a (2, 8, 10) patch grid, i.e. 2 frames of 4 x 5 = 20
# tokens after the 2 x 2 merge, each frame after its own "<t seconds>" text.
FRAMES, PER_FRAME = 2, 20
VIDEO_CASES = {
    "video": (chat(VID, "what happens in this video?"), [], [43]),
    "image and video": (
        chat(IMG, "compare the picture", VID, "with the clip"),
        [(44, 480, 320)],
        [45],
    ),
}


@pytest.mark.parametrize("ratio", [0.5, 0.9])
@pytest.mark.parametrize("case", list(VIDEO_CASES))
def test_video_matches_hf_frame_by_frame(qwen3, tiny_qwen3_vl, case, ratio):
    """The HF pipeline gets the video's vision-tower output from vLLM's own (stock) tower:
    on this tiny checkpoint vLLM 0.32's Qwen3-VL video tower differs from HF's by ~2e-2 on
    identical pixels, with the plugin off too, which no pruning test can absorb. Everything
    pruning touches stays independent: the prompt (HF processor), the frame-by-frame
    selection, the M-RoPE positions (HF's get_rope_index), deepstack, the language model."""
    text, image_specs, video_seeds = VIDEO_CASES[case]
    images = [qimage(s, w, h) for s, w, h in image_specs]
    videos = [qvideo(s) for s in video_seeds]
    qwen3.apply_model(functools.partial(tower_record, tower="visual", on=True))
    try:
        (out,) = generate(qwen3, qrequest(V, text, images, videos, prune_ratio=ratio))
    finally:
        (calls,) = qwen3.apply_model(functools.partial(tower_record, tower="visual", on=False))
    # The request's vision-tower calls: its images (if any), then its one video.
    ref = {"ratio": ratio, "select": pruning.zspa_select, "video_features": [calls[-1]]}
    want, tokens, ids = hf_reference(tiny_qwen3_vl, V, text, images, videos, **ref)
    assert list(out.prompt_token_ids) == ids
    got = out.outputs[0].logprobs[0]
    for token, lp in got.items():
        assert lp.logprob == pytest.approx(float(want[token]), abs=1e-3)
    assert list(out.outputs[0].token_ids) == tokens
    naive = hf_reference(tiny_qwen3_vl, V, text, images, videos, naive=True, **ref)
    assert max(abs(lp.logprob - float(naive[0][t])) for t, lp in got.items()) > 1e-2


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.9])
def test_video_prompt_length_frame_by_frame(qwen3, ratio):
    text, _, (seed,) = VIDEO_CASES["video"]
    (out,) = generate(qwen3, qrequest(V, text, videos=[qvideo(seed)], prune_ratio=ratio))
    (stock,) = generate(qwen3, qrequest(V, text, videos=[qvideo(seed)]))
    keep = FRAMES * pruning.keep_count(PER_FRAME, ratio)
    assert visual_tokens(out.prompt_token_ids) == keep
    # Only video tokens go: every timestamp and marker stays.
    assert len(stock.prompt_token_ids) - len(out.prompt_token_ids) == FRAMES * PER_FRAME - keep


def test_ratio_zero_equals_plugin_disabled(qwen3, tiny_qwen3_vl):
    specs = [[chat(IMG, "what is in this image?"), [30], [], {}], [chat(VID, "v"), [], [32], {}]]
    stock = run_isolated(tiny_qwen3_vl, V, {"ZSPA_DISABLE": "1"}, specs)
    reqs = [
        qrequest(V, t, [qimage(s) for s in i], [qvideo(s) for s in v], **kw)
        for t, i, v, kw in specs
    ]
    assert [json.loads(json.dumps(signature(o))) for o in generate(qwen3, *reqs)] == stock
