"""LLaVA-OneVision videos end to end on a tiny random-weight checkpoint (images: the 1-D family
tests, test_one_dim_families.py).

A video is its frames, each pooled to 3 x 3 tokens, in one run of ``<video>`` placeholders,
then one ``image_newline`` row: one budget per video over all its frames, the newline kept.
One engine in a fresh process with prefix caching and chunked prefill on (32-token steps),
against the independent HF transformers pipeline (``tests.support.onedim.hf_reference``: the
newline row found by equality with the learned vector, the same tokens dropped, kept ones
compacted)."""

from __future__ import annotations

import pytest

from tests.support.engine import run_fresh
from tests.support.onedim import assert_matches, count, hf_reference, run_batches
from tests.support.qwen import qimage, qvideo
from zspa_vllm import pruning

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
RATIOS = (0.0, 0.5, 0.75, 0.9)
LIMITS = {"limit_mm_per_prompt": {"image": 2, "video": 2}}
ENGINE = {"enable_chunked_prefill": True, "max_num_batched_tokens": 32, **LIMITS}
VIDEO = [7, 4, 168, 112]  # seed, frames, w, h: 4 frames x 9 tokens + the newline
IMAGE = [1, 200, 150]
ONE = "USER: <video>\nwhat happens here? ASSISTANT:"
BOTH = "USER: <video>\nwhat happens here?<image>\nhow many objects? ASSISTANT:"
TWO = "USER: <video>\nthe first<video>\nthe second ASSISTANT:"


def batches() -> dict:
    options = [(0.0, "zspa"), (0.5, "divprune"), (0.9, "zspa")]
    mixed = [
        [
            ONE.replace("here", f"q{i}"),
            [],
            {"prune_ratio": r, "prune_method": m},
            [[40 + i, *VIDEO[1:]]],
        ]
        for i, (r, m) in enumerate(options)
    ]
    return {
        **{f"length {r}": [[ONE, [], {"prune_ratio": r}, [VIDEO]]] for r in RATIOS},
        **{f"hf {r}": [[BOTH, [IMAGE], {"prune_ratio": r}, [VIDEO]]] for r in (0.0, 0.5, 0.9)},
        "mixed": mixed,
        **{f"single {i}": [req] for i, req in enumerate(mixed)},
        "again": [[BOTH, [IMAGE], {"prune_ratio": 0.5}, [VIDEO]]],
    }


@pytest.fixture(scope="module")
def runs(tiny_llava_onevision) -> dict:
    payload = {"model": tiny_llava_onevision, "engine": ENGINE, "batches": batches()}
    return run_fresh(run_batches, payload)


def _reference(path, text, ratio, select, images=(), steps=4):
    return hf_reference(
        path, text, [qimage(*s) for s in images], videos=[qvideo(*VIDEO)], token="<image>",
        video_token="<video>", ratio=ratio, select=select, steps=steps,
    )  # fmt: skip


@pytest.mark.parametrize("ratio", RATIOS)
def test_video_prompt_length(tiny_llava_onevision, runs, ratio):
    """The pruned prompt of the HF pipeline (one budget over the frames, newline kept): the
    same video-token count and length; ``keep_count(36, ratio) + 1`` by the stated rule."""
    ((ids, _, _),) = runs[f"length {ratio}"]
    want = _reference(tiny_llava_onevision, ONE, ratio, pruning.uniform_select, steps=1)[2]
    from transformers import AutoTokenizer

    video = AutoTokenizer.from_pretrained(tiny_llava_onevision).convert_tokens_to_ids("<video>")
    assert count(ids, video) == count(want, video) == pruning.keep_count(4 * 9, ratio) + 1
    assert len(ids) == len(want)


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.9])
def test_video_and_image_match_hf(tiny_llava_onevision, runs, ratio):
    run = runs[f"hf {ratio}"][0]
    ref = _reference(tiny_llava_onevision, BOTH, ratio, pruning.zspa_select, images=[IMAGE])
    assert_matches(run, ref)
    if ratio == 0.0:
        return  # nothing pruned: no other kept set to compare with
    other = _reference(tiny_llava_onevision, BOTH, ratio, pruning.uniform_select, images=[IMAGE])
    assert max(abs(lp - float(other[0][int(t)])) for t, lp in run[2].items()) > 1e-2


def test_mixed_video_batch_equals_single_runs(runs):
    assert runs["mixed"] == [runs[f"single {i}"][0] for i in range(3)]


def test_cached_repeat_equals_first_run(runs):
    assert runs["again"] == runs["hf 0.5"]


def test_two_videos_split_by_the_encoder_budget(tiny_llava_onevision):
    """Two videos in one step under an encoder budget of one video: two tower calls, and
    the result of one call (the second run's core ratio changes its cache keys only)."""
    options = {"prune_ratio": 0.5, "prune_method": "divprune"}
    videos = [VIDEO, [8, 4, 168, 112]]
    names = {"budget 1": 1, "budget all": 10**6}
    payload = {
        "model": tiny_llava_onevision,
        "engine": LIMITS,
        "batches": {
            name: [[TWO, [], options | {"prune_core_ratio": core}, videos]]
            for name, core in zip(names, (0.6, 0.5), strict=True)
        },
        "budgets": names,
    }
    runs = run_fresh(run_batches, payload)
    assert [runs["budget 1 calls"], runs["budget all calls"]] == [2, 1]
    assert runs["budget 1"] == runs["budget all"]


def test_video_at_ratio_zero_equals_plugin_disabled(tiny_llava_onevision, runs):
    stock = {"stock": [[BOTH, [IMAGE], {}, [VIDEO]]]}
    payload = {"model": tiny_llava_onevision, "engine": ENGINE, "batches": stock}
    disabled = run_fresh(run_batches, payload, {"ZSPA_DISABLE": "1"})["stock"]
    assert disabled == runs["hf 0.0"]


@pytest.mark.parametrize("checkpoint", ["tiny_llava_next", "tiny_llava_onevision"])
def test_precomputed_embeddings_with_a_ratio_are_refused(request, checkpoint):
    """Precomputed image embeddings (``enable_mm_embeds``) hold their newline rows, which only
    the model's learned vector identifies, so the prompt cannot be built pruned: a ratio is a
    clear error naming the field (not a crash), and the same request at ratio 0 is served."""
    path = request.getfixturevalue(checkpoint)
    prompt = "USER: <image>\ndescribe ASSISTANT:"
    embeds = [{"embeds": [3, 100, 128]}]  # the tiny text models' hidden size
    batches = {
        "pruned": [[prompt, embeds, {"prune_ratio": 0.5}]],
        "stock": [[prompt, embeds, {}]],
    }
    payload = {"model": path, "engine": {"enable_mm_embeds": True, **LIMITS}, "batches": batches}
    runs = run_fresh(run_batches, payload)
    error = runs["pruned"]["error"]
    assert "prune_ratio" in error and "embeddings" in error
    ((ids, tokens, _),) = runs["stock"]
    from transformers import AutoTokenizer

    image = AutoTokenizer.from_pretrained(path).convert_tokens_to_ids("<image>")
    assert count(ids, image) == 100  # every embedding row, unpruned
    assert len(tokens) == 4
