"""LLaVA-NeXT, LLaVA-OneVision, Gemma 3, InternVL and Mistral 3 end to end on tiny
random-weight checkpoints (real HF configs and processors): the 1-D RoPE families whose
visual tokens sit between structure tokens.

Per family, one engine in a fresh process (``tests.support.onedim.run_batches``) with
prefix caching and chunked prefill on (a 32-token step budget: every image prompt is
prefilled in several chunks), and the bar of every family: exact prompt lengths with every
structure token kept, logprobs against the independent HF pipeline (with a control that must
differ), ratio 0 equal to the plugin disabled and to HF, a mixed batch equal to single runs,
and a cached repeat equal to the first run. Gemma 3's pan-and-scan: test_gemma3.py;
LLaVA-OneVision's videos: test_llava_onevision.py."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.support.engine import run_fresh
from tests.support.onedim import assert_matches, count, hf_reference, run_batches
from tests.support.qwen import qimage
from zspa_vllm import pruning

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
RATIOS = (0.0, 0.5, 0.75, 0.9)
ENGINE = {"enable_chunked_prefill": True, "max_num_batched_tokens": 32}


@dataclass(frozen=True)
class Case:
    checkpoint: str  # the session fixture that builds it
    head: str  # the templated prompt up to the user's content
    tail: str  # from the end of the user's content to the generation header
    image: str  # an image's placeholder in the templated prompt
    visual: str  # the token vLLM repeats per visual token
    # Image sizes ([seed, w, h]): one image; two images; the mixed batch's (seed varies).
    one: tuple = ((1, 300, 200),)
    two: tuple = ((2, 280, 448), (3, 336, 336))
    mixed: tuple = (300, 200)

    def chat(self, *parts: str) -> str:
        return self.head + "".join(parts) + self.tail


CASES = {
    "gemma3": Case(
        "tiny_gemma3",
        "<bos><start_of_turn>user\n",
        "<end_of_turn>\n<start_of_turn>model\n",
        "<start_of_image>",
        "<image_soft_token>",
    ),
    "llava_next": Case("tiny_llava_next", "USER: ", " ASSISTANT:", "<image>\n", "<image>"),
    # Sizes within the encoder cache vLLM sizes for the tiny grid pinpoints (its profiling
    # image, 1153 x 944, is not the largest there); 610 x 500 is shrunk by anyres_max_9.
    "llava_onevision": Case(
        "tiny_llava_onevision",
        "USER: ",
        " ASSISTANT:",
        "<image>\n",
        "<image>",
        one=((1, 200, 150),),
        two=((2, 240, 160), (3, 610, 500)),
        mixed=(200, 150),
    ),  # fmt: skip
    "mistral3": Case("tiny_mistral3", "<s>[INST]", "[/INST]", "[IMG]", "[IMG]"),
    "internvl": Case(
        "tiny_internvl",
        "<|im_start|>user\n",
        "<|im_end|>\n<|im_start|>assistant\n",
        "<IMG_CONTEXT>\n",
        "<IMG_CONTEXT>",
    ),
}
BUDGETS = (1, 10**6)  # each image alone; both images in one vision-tower call


def batches(case: Case) -> dict:
    one = case.chat(case.image, "what is in this image?")
    two = case.chat(case.image, "compare the sky with the sea", case.image, "how many objects?")
    options = [(0.0, "zspa"), (0.5, "divprune"), (0.9, "zspa")]
    mixed = [
        [
            case.chat(case.image, f"q{i}"),
            [[50 + i, *case.mixed]],
            {"prune_ratio": r, "prune_method": m},
        ]
        for i, (r, m) in enumerate(options)
    ]
    return {
        **{f"length {r}": [[one, case.one, {"prune_ratio": r}]] for r in RATIOS},
        **{f"hf {r}": [[two, case.two, {"prune_ratio": r}]] for r in (0.0, 0.5, 0.9)},
        "mixed": mixed,
        **{f"single {i}": [req] for i, req in enumerate(mixed)},
        "stock": [[one, case.one, {}], [case.chat("no image here"), [], {}]],
        # The same request again: its image and prompt blocks now come from the caches.
        "again": [[two, case.two, {"prune_ratio": 0.5}]],
    }


@pytest.fixture(scope="module", params=sorted(CASES))
def family(request) -> tuple[Case, str, dict]:
    """(case, checkpoint path, every batch's results) per family."""
    case = CASES[request.param]
    path = request.getfixturevalue(case.checkpoint)
    runs = run_fresh(run_batches, {"model": path, "engine": ENGINE, "batches": batches(case)})
    return case, path, runs


def _token_id(path: str, token: str) -> int:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path).convert_tokens_to_ids(token)


@pytest.mark.parametrize("ratio", RATIOS)
def test_prompt_length(family, ratio):
    """The pruned prompt of the independent HF pipeline (each run of visual tokens a budget
    unit, structure rows kept): the same visual-token count and length. Which tokens are
    kept does not change the counts, so the cheap uniform selection serves."""
    case, path, runs = family
    ((ids, _, _),) = runs[f"length {ratio}"]
    ((unpruned, _, _),) = runs["length 0.0"]
    text, images = case.chat(case.image, "what is in this image?"), [qimage(*s) for s in case.one]
    ref = {"token": case.visual, "ratio": ratio, "select": pruning.uniform_select, "steps": 1}
    want_ids = hf_reference(path, text, images, **ref)[2]
    visual = _token_id(path, case.visual)
    assert count(ids, visual) == count(want_ids, visual)
    assert len(ids) == len(want_ids)
    if ratio > 0:
        assert len(ids) < len(unpruned)


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.9])
def test_matches_hf_with_kept_tokens_compacted(family, ratio):
    case, path, runs = family
    run = runs[f"hf {ratio}"][0]
    text = case.chat(case.image, "compare the sky with the sea", case.image, "how many objects?")
    images = [qimage(*s) for s in case.two]
    ref = {"token": case.visual, "ratio": ratio}
    assert_matches(run, hf_reference(path, text, images, select=pruning.zspa_select, **ref))
    got = run[2]
    if ratio == 0.0:
        return  # nothing pruned: no other kept set to compare with
    other = hf_reference(path, text, images, select=pruning.uniform_select, **ref)[0]
    assert max(abs(lp - float(other[int(t)])) for t, lp in got.items()) > 1e-2


def test_mixed_batch_equals_single_runs(family):
    _, _, runs = family
    assert runs["mixed"] == [runs[f"single {i}"][0] for i in range(3)]


def test_encoder_budget_split_gives_the_one_call_result(family):
    """Two images in one engine step (vLLM's default step budget, not the 32-token chunks
    above), under an encoder budget of one image, then of both: 2 vision-tower calls, then
    1, and the same result. DivPrune ignores prune_core_ratio, but the option is in the cache
    keys: the second run hits no cache and selects the same tokens."""
    case, path, _ = family
    two = case.chat(case.image, "compare the sky with the sea", case.image, "how many objects?")
    options = {"prune_ratio": 0.5, "prune_method": "divprune"}
    batches = {
        f"budget {b}": [[two, case.two, options | {"prune_core_ratio": core}]]
        for b, core in zip(BUDGETS, (0.6, 0.5), strict=True)
    }
    budgets = {name: b for name, b in zip(batches, BUDGETS, strict=True)}
    runs = run_fresh(run_batches, {"model": path, "batches": batches, "budgets": budgets})
    calls = [runs[f"budget {b} calls"] for b in BUDGETS]
    assert calls == [2, 1]
    assert runs["budget 1"] == runs[f"budget {BUDGETS[1]}"]


def test_cached_repeat_equals_first_run(family):
    _, _, runs = family
    assert runs["again"] == runs["hf 0.5"]


def test_ratio_zero_equals_plugin_disabled(family):
    case, path, runs = family
    payload = {"model": path, "engine": ENGINE, "batches": {"stock": batches(case)["stock"]}}
    assert runs["stock"] == run_fresh(run_batches, payload, {"ZSPA_DISABLE": "1"})["stock"]
