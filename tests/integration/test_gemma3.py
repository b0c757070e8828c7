"""Gemma 3 end to end on a tiny random-weight checkpoint (real HF config and processor).

One engine in a fresh process (``tests.support.gemma3.run_batches``) with prefix caching
and chunked prefill on (a 32-token step budget: every image prompt is prefilled in
several chunks); the bar of every family: exact prompt lengths, logprobs against the
independent HF pipeline (with a control that must differ), ratio 0 equal to the plugin
disabled and to HF, a mixed batch equal to single runs, and pan-and-scan crops pruned
view by view."""

from __future__ import annotations

import pytest

from tests.support.engine import run_fresh
from tests.support.gemma3 import IMG, TOKENS_PER_IMAGE, chat, hf_reference, run_batches, soft_tokens
from tests.support.qwen import qimage
from zspa_vllm import pruning

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
RATIOS = (0.0, 0.5, 0.75, 0.9)
ENGINE = {"enable_chunked_prefill": True, "max_num_batched_tokens": 32}
TWO = (
    chat(IMG, "compare the sky with the sea", IMG, "how many objects?"),
    [[2, 280, 448], [3, 336, 336]],
)
ONE = (chat(IMG, "what is in this image?"), [[1, 300, 200]])
WIDE = (chat(IMG, "read the text in the sign."), [[5, 640, 300]])  # pan-and-scan: 2 crops
MIXED = [
    [chat(IMG, f"q{i}"), [[50 + i, 300, 200]], {"prune_ratio": r, "prune_method": m}]
    for i, (r, m) in enumerate([(0.0, "zspa"), (0.5, "divprune"), (0.9, "zspa")])
]
STOCK = [[*ONE, {}], [chat("no image here"), [], {}]]
BATCHES = {
    **{f"length {r}": [[*ONE, {"prune_ratio": r}]] for r in RATIOS},
    **{f"hf {r}": [[*TWO, {"prune_ratio": r}]] for r in (0.0, 0.5, 0.9)},
    "mixed": MIXED,
    **{f"single {i}": [req] for i, req in enumerate(MIXED)},
    "stock": STOCK,
    # The same request again: its image and prompt blocks now come from the caches.
    "again": [[*TWO, {"prune_ratio": 0.5}]],
}


# Pan-and-scan as an engine option (vLLM sizes its encoder cache for the most crops). The
# minimum crop side scales with the tiny image size (released: 256 px for 896 px images):
# vLLM profiles a tall image of max_num_crops x 224 px, whose crops must still count.
PAN_AND_SCAN_KWARGS = {"do_pan_and_scan": True, "pan_and_scan_min_crop_size": 64}
PAN_AND_SCAN = ENGINE | {"mm_processor_kwargs": PAN_AND_SCAN_KWARGS}


@pytest.fixture(scope="module")
def runs(tiny_gemma3) -> dict:
    return run_fresh(run_batches, {"model": tiny_gemma3, "engine": ENGINE, "batches": BATCHES})


@pytest.fixture(scope="module")
def pan_and_scan(tiny_gemma3) -> dict:
    batches = {str(r): [[*WIDE, {"prune_ratio": r}]] for r in (0.0, 0.5)}
    payload = {"model": tiny_gemma3, "engine": PAN_AND_SCAN, "batches": batches}
    return run_fresh(run_batches, payload)


def _soft(path) -> int:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path).convert_tokens_to_ids("<image_soft_token>")


@pytest.mark.parametrize("ratio", RATIOS)
def test_prompt_length(runs, tiny_gemma3, ratio):
    ((ids, _, _),) = runs[f"length {ratio}"]
    ((unpruned, _, _),) = runs["length 0.0"]
    keep = pruning.keep_count(TOKENS_PER_IMAGE, ratio)
    assert soft_tokens(ids, _soft(tiny_gemma3)) == keep
    assert len(ids) == len(unpruned) - (TOKENS_PER_IMAGE - keep)  # structure tokens all kept


def _check_against_hf(got_run, path, text, seeds, ratio, **kw):
    ids, tokens, got = got_run
    images = [qimage(*s) for s in seeds]
    want, want_tokens, want_ids = hf_reference(
        path, text, images, ratio=ratio, select=pruning.zspa_select, **kw
    )
    assert ids == want_ids
    for token, logprob in got.items():
        assert logprob == pytest.approx(float(want[int(token)]), abs=1e-3)
    assert tokens == want_tokens
    return images, got


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.9])
def test_matches_hf_with_kept_tokens_compacted(runs, tiny_gemma3, ratio):
    images, got = _check_against_hf(runs[f"hf {ratio}"][0], tiny_gemma3, *TWO, ratio)
    if ratio == 0.0:
        return  # nothing pruned: no other kept set to compare with
    control = {"ratio": ratio, "select": pruning.uniform_select}  # same count, other tokens
    other = hf_reference(tiny_gemma3, TWO[0], images, **control)[0]
    assert max(abs(lp - float(other[int(t)])) for t, lp in got.items()) > 1e-2


@pytest.mark.parametrize("ratio", [0.0, 0.5])
def test_pan_and_scan_prunes_each_view(pan_and_scan, tiny_gemma3, ratio):
    ((ids, _, _),) = pan_and_scan[str(ratio)]
    views = 3  # the image and its two crops
    keep = pruning.keep_count(TOKENS_PER_IMAGE, ratio)
    assert soft_tokens(ids, _soft(tiny_gemma3)) == views * keep
    _check_against_hf(
        pan_and_scan[str(ratio)][0], tiny_gemma3, *WIDE, ratio, processor_kwargs=PAN_AND_SCAN_KWARGS
    )


def test_mixed_batch_equals_single_runs(runs):
    singles = [runs[f"single {i}"][0] for i in range(len(MIXED))]
    assert runs["mixed"] == singles


def test_cached_repeat_equals_first_run(runs):
    assert runs["again"] == runs["hf 0.5"]


def test_ratio_zero_equals_plugin_disabled(runs, tiny_gemma3):
    payload = {"model": tiny_gemma3, "engine": ENGINE, "batches": {"stock": STOCK}}
    stock = run_fresh(run_batches, payload, {"ZSPA_DISABLE": "1"})["stock"]
    assert runs["stock"] == stock
