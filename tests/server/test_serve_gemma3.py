"""zspa-serve on a tiny Gemma 3 over HTTP with the official openai client: per-request
ratios on images (structure tokens kept), usage counts, and a bad ratio refused."""

from __future__ import annotations

import pytest

from tests.support.server import API_KEY, Server, ask, data_url, start_server, stop_server
from zspa_vllm import pruning

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
PER_IMAGE = 64  # the tiny Gemma 3's soft tokens per image (tiny_gemma3.TOKENS_PER_IMAGE)


@pytest.fixture(scope="module")
def gemma3_server(tiny_gemma3, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-gemma3") / "zspa-serve.log"
    proc, url = start_server(tiny_gemma3, log, "--api-key", API_KEY)
    yield Server(url=url, model=tiny_gemma3, log=log)
    stop_server(proc)


def images(*seeds: int) -> list[dict]:
    return [{"type": "image_url", "image_url": {"url": data_url(s, 224)}} for s in seeds]


@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_images_prune_at_the_requested_ratio(gemma3_server, ratio):
    for seeds in ([1], [2, 3]):
        stock = ask(gemma3_server, images(*seeds), prune_ratio=0.0)
        pruned = ask(gemma3_server, images(*seeds), prune_ratio=ratio)
        full, kept = PER_IMAGE * len(seeds), pruning.keep_count(PER_IMAGE, ratio) * len(seeds)
        usage = pruned.usage.model_extra
        assert (usage["visual_tokens_before"], usage["visual_tokens_after"]) == (full, kept)
        # Only soft tokens go: the markers and newlines around each image stay.
        assert stock.usage.prompt_tokens - pruned.usage.prompt_tokens == full - kept
        # A sliding-window model keeps a token in only some layers: no byte count claimed.
        assert usage["kv_cache_bytes_saved"] is None


def test_bad_ratio_is_a_400_and_the_server_keeps_serving(gemma3_server):
    from openai import BadRequestError

    with pytest.raises(BadRequestError) as err:
        ask(gemma3_server, images(4), prune_ratio=-0.1)
    assert "prune_ratio" in str(err.value)
    assert (
        ask(gemma3_server, images(4), prune_ratio=0.75).usage.model_extra["visual_tokens_after"]
        == 16
    )
