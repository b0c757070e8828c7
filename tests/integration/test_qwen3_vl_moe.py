"""Qwen3-VL-MoE end to end on a tiny random-weight MoE checkpoint (4 experts per layer).

Its vision side, M-RoPE layout and pruning code path are the dense Qwen3-VL's
(test_qwen3_vl.py covers them in depth); here one MoE checkpoint runs the main bar: exact
prompt lengths, logprobs against the independent HF pipeline (with a control that must
differ), ratio 0 equal to the plugin disabled, a mixed batch, and a video pruned per frame.

The engine runs in its own process (``tests.support.qwen.run_batches``): vLLM's parallel
groups are process-global, and a MoE engine created after the session's dense engines finds
no expert-parallel group."""

from __future__ import annotations

import pytest

from tests.support.engine import run_fresh
from tests.support.qwen import (
    CASES,
    IMG,
    VID,
    chat,
    hf_reference,
    qimage,
    run_batches,
    visual_tokens,
)
from zspa_vllm import pruning

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
V = "qwen3_vl_moe"
RATIOS = (0.0, 0.5, 0.75, 0.9)
TWO = CASES["two images"]
MIXED = [
    [chat(IMG, f"q{i}"), [[50 + i, 420, 280]], [], {"prune_ratio": r, "prune_method": m}]
    for i, (r, m) in enumerate([(0.0, "zspa"), (0.5, "divprune"), (0.9, "zspa")])
]
STOCK = [
    [chat(IMG, "what is in this image?"), [[41, 420, 280]], [], {}],
    [chat(VID, "v"), [], [42], {}],
]
HF_IMAGES = [list(s) for s in TWO[1]]
LENGTH_IMAGE = [[40, 480, 320]]  # N = 15 x 10 = 150 tokens
BATCHES = {
    **{f"hf {r}": [[TWO[0], HF_IMAGES, [], {"prune_ratio": r}]] for r in (0.5, 0.9)},
    **{f"length {r}": [[chat(IMG, "what?"), LENGTH_IMAGE, [], {"prune_ratio": r}]] for r in RATIOS},
    "mixed": MIXED,
    **{f"single {i}": [req] for i, req in enumerate(MIXED)},
    "stock": STOCK,
    "video": [[chat(VID, "what?"), [], [43], {"prune_ratio": 0.5}]],
    "video stock": [[chat(VID, "what?"), [], [43], {}]],
}


@pytest.fixture(scope="module")
def runs(tiny_qwen3_vl_moe) -> dict:
    return run_fresh(run_batches, {"model": tiny_qwen3_vl_moe, "variant": V, "batches": BATCHES})


@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_matches_hf_with_positions_of_the_unpruned_prompt(runs, tiny_qwen3_vl_moe, ratio):
    ((ids, (_, tokens, _), got),) = runs[f"hf {ratio}"]
    images = [qimage(s, w, h) for s, w, h in TWO[1]]
    ref = {"ratio": ratio, "select": pruning.zspa_select}
    want, want_tokens, want_ids = hf_reference(tiny_qwen3_vl_moe, V, TWO[0], images, **ref)
    assert ids == want_ids
    for token, logprob in got.items():
        assert logprob == pytest.approx(float(want[int(token)]), abs=1e-3)
    assert tokens == want_tokens
    control = {"ratio": ratio, "select": pruning.uniform_select}  # same count, other tokens
    other = hf_reference(tiny_qwen3_vl_moe, V, TWO[0], images, **control)[0]
    assert max(abs(lp - float(other[int(t)])) for t, lp in got.items()) > 1e-2


@pytest.mark.parametrize("ratio", RATIOS)
def test_prompt_length(runs, ratio):
    ((ids, _, _),) = runs[f"length {ratio}"]
    assert visual_tokens(ids) == pruning.keep_count(150, ratio)


def test_mixed_batch_equals_single_runs(runs):
    singles = [runs[f"single {i}"][0][1] for i in range(len(MIXED))]
    assert [sig for _, sig, _ in runs["mixed"]] == singles


def test_ratio_zero_equals_plugin_disabled(runs, tiny_qwen3_vl_moe):
    payload = {"model": tiny_qwen3_vl_moe, "variant": V, "batches": {"stock": STOCK}}
    stock = run_fresh(run_batches, payload, {"ZSPA_DISABLE": "1"})["stock"]
    assert [r[:2] for r in runs["stock"]] == [r[:2] for r in stock]


def test_video_prunes_frame_by_frame(runs):
    # 2 frames of 20 tokens (test_qwen3_vl.py); timestamps and markers all kept.
    ((ids, _, _),) = runs["video"]
    ((stock, _, _),) = runs["video stock"]
    assert visual_tokens(ids) == 2 * pruning.keep_count(20, 0.5)
    assert len(stock) - len(ids) == 2 * (20 - pruning.keep_count(20, 0.5))
