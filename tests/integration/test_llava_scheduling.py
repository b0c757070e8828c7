"""What pruning changes for vLLM's scheduler: KV-cache blocks and chunked prefill.

Each test uses its own small engine next to the shared one (in-process engines coexist).
They are session-scoped: shutting an in-process engine down tears down vLLM's global
parallel groups, which would break the engines still in use.
"""

from __future__ import annotations

import math

import pytest

from tests.support.engine import engine_kwargs, greedy, image, request
from tests.support.llava import QUESTION, generate, signature
from zspa_vllm import pruning

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

BLOCK = 32  # the CPU attention backend needs a multiple of 32
N_REQUESTS = 8


@pytest.fixture(scope="session")
def small_kv_llm(tiny_llava):
    """20 usable KV blocks of 32 tokens: one unpruned image request (~590 tokens) fits.

    The batch budget is large so that admission is limited by KV blocks only (no
    chunking: a request allocates the blocks for its whole prompt when admitted).
    """
    from vllm import LLM

    engine = LLM(
        **engine_kwargs(
            tiny_llava,
            num_gpu_blocks_override=21,  # one block is vLLM's reserved null block
            block_size=BLOCK,
            max_model_len=640,
            max_num_batched_tokens=8192,
            max_num_seqs=16,
        )
    )
    yield engine
    del engine


def admitted_at_once(llm, ratio: float) -> tuple[int, int, int]:
    """Peak running requests, prompt length and free blocks for N_REQUESTS at ``ratio``."""
    from vllm import SamplingParams

    engine = llm.llm_engine
    # In-process engine (VLLM_ENABLE_V1_MULTIPROCESSING=0): the scheduler is reachable.
    scheduler = engine.engine_core.engine_core.scheduler
    free = scheduler.kv_cache_manager.block_pool.get_num_free_blocks()
    for i in range(N_REQUESTS):
        # Distinct images: no prefix-cache sharing between the requests.
        engine.add_request(
            f"kv-{ratio}-{i}",
            request(QUESTION, image(100 + i), prune_ratio=ratio),
            SamplingParams(max_tokens=2, temperature=0.0),
        )
    peak, finished = 0, []
    while engine.has_unfinished_requests():
        finished += [o for o in engine.step() if o.finished]
        peak = max(peak, len(scheduler.running))
    assert len(finished) == N_REQUESTS
    (prompt_len,) = {len(o.prompt_token_ids) for o in finished}
    assert scheduler.kv_cache_manager.block_pool.get_num_free_blocks() == free  # all freed
    return peak, prompt_len, free


def test_more_requests_fit_the_kv_cache_as_the_ratio_grows(small_kv_llm):
    peaks = []
    for ratio in (0.0, 0.5, 0.75, 0.9):
        peak, prompt_len, free = admitted_at_once(small_kv_llm, ratio)
        # vLLM's own block accounting against the arithmetic expectation.
        assert peak == min(N_REQUESTS, free // math.ceil(prompt_len / BLOCK)), ratio
        peaks.append(peak)
    assert peaks[0] == 1  # unpruned, one request fills the cache
    assert peaks == sorted(peaks) and peaks[-1] > 4 * peaks[0]


@pytest.fixture(scope="session")
def chunked_llm(tiny_llava):
    """Prefill in chunks of 64 tokens: every image's placeholders span several steps."""
    from vllm import LLM

    engine = LLM(
        **engine_kwargs(tiny_llava, max_num_batched_tokens=64, enable_chunked_prefill=True)
    )
    yield engine
    del engine


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75])
def test_chunked_prefill_gives_the_unchunked_result(llm, chunked_llm, ratio):
    reqs = [
        request(QUESTION, image(20), prune_ratio=ratio),
        request("compare them", image(21), image(22), prune_ratio=ratio, prune_method="divprune"),
    ]
    whole = [signature(o) for o in generate(llm, *reqs)]
    chunked = chunked_llm.generate(reqs, greedy(), use_tqdm=False)
    assert [signature(o) for o in chunked] == whole
    # The chunk is really smaller than the visual span it has to cut.
    assert pruning.keep_count(576, ratio) > 64
