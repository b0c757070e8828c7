"""Qwen3-VL-MoE end to end on a tiny random-weight MoE checkpoint (4 experts per layer).

Its vision side, M-RoPE layout and pruning code path are the dense Qwen3-VL's
(test_qwen3_vl.py covers them in depth); here one MoE checkpoint runs the main bar: exact
prompt lengths, logprobs against the independent HF pipeline (with a control that must
differ), ratio 0 equal to the plugin disabled, a mixed batch, and videos refused."""

from __future__ import annotations

import json

import pytest

from tests.support.engine import engine_kwargs
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
V = "qwen3_vl_moe"


@pytest.fixture(scope="session")
def moe(tiny_qwen3_vl_moe):
    from vllm import LLM

    return LLM(**engine_kwargs(tiny_qwen3_vl_moe, limit_mm_per_prompt={"image": 4, "video": 2}))


@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_matches_hf_with_positions_of_the_unpruned_prompt(moe, tiny_qwen3_vl_moe, ratio):
    text, specs = CASES["two images"]
    images = [qimage(s, w, h) for s, w, h in specs]
    (out,) = generate(moe, qrequest(V, text, images, prune_ratio=ratio))
    ref = {"ratio": ratio, "select": pruning.zspa_select}
    want, tokens, ids = hf_reference(tiny_qwen3_vl_moe, V, text, images, **ref)
    assert list(out.prompt_token_ids) == ids
    got = out.outputs[0].logprobs[0]
    for token, lp in got.items():
        assert lp.logprob == pytest.approx(float(want[token]), abs=1e-3)
    assert list(out.outputs[0].token_ids) == tokens
    control = {"ratio": ratio, "select": pruning.uniform_select}  # same count, other tokens
    other = hf_reference(tiny_qwen3_vl_moe, V, text, images, **control)
    assert max(abs(lp.logprob - float(other[0][t])) for t, lp in got.items()) > 1e-2


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.9])
def test_prompt_length(moe, ratio):
    req = qrequest(V, chat(IMG, "what?"), [qimage(40, 480, 320)], prune_ratio=ratio)
    (out,) = generate(moe, req)
    assert visual_tokens(out.prompt_token_ids) == pruning.keep_count(150, ratio)


def test_ratio_zero_equals_plugin_disabled_and_mixed_batch(moe, tiny_qwen3_vl_moe):
    specs = [[chat(IMG, "what is in this image?"), [41], [], {}], [chat(VID, "v"), [], [42], {}]]
    stock = run_isolated(tiny_qwen3_vl_moe, V, {"ZSPA_DISABLE": "1"}, specs)
    reqs = [
        qrequest(V, t, [qimage(s) for s in i], [qvideo(s) for s in v], **kw)
        for t, i, v, kw in specs
    ]
    assert [json.loads(json.dumps(signature(o))) for o in generate(moe, *reqs)] == stock
    mixed = [
        qrequest(V, chat(IMG, f"q{i}"), [qimage(50 + i)], prune_ratio=r, prune_method=m)
        for i, (r, m) in enumerate([(0.0, "zspa"), (0.5, "divprune"), (0.9, "zspa")])
    ]
    singles = [signature(generate(moe, r)[0]) for r in mixed]
    assert [signature(o) for o in generate(moe, *mixed)] == singles


def test_video_with_a_ratio_is_refused(moe):
    with pytest.raises(ValueError, match="prune_ratio must be 0 for requests with video"):
        generate(moe, qrequest(V, chat(VID, "what?"), videos=[qvideo(43)], prune_ratio=0.5))
    (out,) = generate(moe, qrequest(V, chat(IMG, "what?"), [qimage(44)], prune_ratio=0.5))
    assert visual_tokens(out.prompt_token_ids) > 0
