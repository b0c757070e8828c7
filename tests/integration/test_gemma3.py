"""Gemma 3 pan-and-scan: an image becomes the full view plus crops, each between its own
markers with text between them; every view is one budget unit. The rest of Gemma 3's bar
(with InternVL's): test_one_dim_families.py."""

from __future__ import annotations

import pytest

from tests.support.engine import run_fresh
from tests.support.onedim import assert_matches, count, hf_reference, run_batches
from tests.support.qwen import qimage
from zspa_vllm import pruning

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
TEXT = (
    "<bos><start_of_turn>user\n<start_of_image>read the text in the sign.<end_of_turn>\n"
    "<start_of_turn>model\n"
)
WIDE = [[5, 640, 300]]  # two crops
SOFT = "<image_soft_token>"
VIEW = 64  # soft tokens per view of the tiny model (tiny_gemma3.TOKENS_PER_IMAGE)
# Pan-and-scan as an engine option (vLLM sizes its encoder cache for the most crops). The
# minimum crop side scales with the tiny image size (released: 256 px for 896 px images):
# vLLM profiles a tall image of max_num_crops x 224 px, whose crops must still count.
KWARGS = {"do_pan_and_scan": True, "pan_and_scan_min_crop_size": 64}
ENGINE = {
    "enable_chunked_prefill": True,
    "max_num_batched_tokens": 32,
    "mm_processor_kwargs": KWARGS,
}


@pytest.fixture(scope="module")
def runs(tiny_gemma3) -> dict:
    batches = {str(r): [[TEXT, WIDE, {"prune_ratio": r}]] for r in (0.0, 0.5)}
    return run_fresh(run_batches, {"model": tiny_gemma3, "engine": ENGINE, "batches": batches})


@pytest.mark.parametrize("ratio", [0.0, 0.5])
def test_pan_and_scan_prunes_each_view(runs, tiny_gemma3, ratio):
    from transformers import AutoTokenizer

    ((ids, _, _),) = runs[str(ratio)]
    soft = AutoTokenizer.from_pretrained(tiny_gemma3).convert_tokens_to_ids(SOFT)
    assert count(ids, soft) == 3 * pruning.keep_count(VIEW, ratio)  # the image, two crops
    images = [qimage(*s) for s in WIDE]
    ref = {"token": SOFT, "ratio": ratio, "processor_kwargs": KWARGS}
    want = hf_reference(tiny_gemma3, TEXT, images, select=pruning.zspa_select, **ref)
    assert_matches(runs[str(ratio)][0], want)
