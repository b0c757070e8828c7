"""zspa-serve on tiny Qwen2.5-VL and Qwen3-VL (M-RoPE): images and videos over HTTP, with
the official openai client."""

from __future__ import annotations

import base64
import io

import pytest

from tests.support.qwen import qimage
from tests.support.server import (
    API_KEY,
    Server,
    ask,
    kv_bytes_per_token,
    mp4_url,
    start_server,
    stop_server,
)
from zspa_vllm import pruning

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.fixture(scope="module")
def qwen_server(tiny_qwen2_5_vl, tmp_path_factory):
    path = tiny_qwen2_5_vl
    log = tmp_path_factory.mktemp("serve-qwen") / "zspa-serve.log"
    proc, url = start_server(
        path, log, "--api-key", API_KEY, "--limit-mm-per-prompt", '{"image": 2, "video": 1}'
    )
    yield Server(url=url, model=path, log=log)
    stop_server(proc)


def png_url(seed: int, w: int, h: int) -> str:
    buf = io.BytesIO()
    qimage(seed, w, h).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_image_and_video_prune_at_the_requested_ratio(qwen_server, ratio):
    image = {"type": "image_url", "image_url": {"url": png_url(1, 420, 280)}}
    video = {"type": "video_url", "video_url": {"url": mp4_url(2)}}
    # Unpruned sizes: 420x280 -> 15 x 10; 4 frames of 168x112 -> 2 x 6 x 4.
    for parts, sizes in (([image], [150]), ([video], [48]), ([image, video], [150, 48])):
        stock = ask(qwen_server, parts, prune_ratio=0.0)
        pruned = ask(qwen_server, parts, prune_ratio=ratio)
        full, kept = sum(sizes), sum(pruning.keep_count(n, ratio) for n in sizes)
        usage = pruned.usage.model_extra
        assert (usage["visual_tokens_before"], usage["visual_tokens_after"]) == (full, kept)
        assert stock.usage.prompt_tokens - pruned.usage.prompt_tokens == full - kept
        per_token = kv_bytes_per_token(qwen_server.model)
        assert usage["kv_cache_bytes_saved"] == (full - kept) * per_token


def test_bad_ratio_is_a_400_and_the_server_keeps_serving(qwen_server):
    from openai import BadRequestError

    image = {"type": "image_url", "image_url": {"url": png_url(3, 224, 224)}}
    with pytest.raises(BadRequestError) as err:
        ask(qwen_server, [image], prune_ratio=1.5)
    assert "prune_ratio" in str(err.value)
    assert ask(qwen_server, [image], prune_ratio=0.5).usage.model_extra["visual_tokens_after"] == 32


@pytest.fixture(scope="module")
def qwen3_server(tiny_qwen3_vl, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-qwen3") / "zspa-serve.log"
    proc, url = start_server(
        tiny_qwen3_vl,
        log,
        "--api-key",
        API_KEY,
        "--limit-mm-per-prompt",
        '{"image": 2, "video": 1}',
    )
    yield Server(url=url, model=tiny_qwen3_vl, log=log)
    stop_server(proc)


def test_qwen3_images_and_videos_prune(qwen3_server):
    image = {"type": "image_url", "image_url": {"url": png_url(4, 480, 320)}}  # 15 x 10
    # 4 frames of 168 x 112 at 2 fps: 2 grid frames of 4 x 5 tokens (Qwen3-VL's 32-px
    # tokens), each after its own timestamp text.
    video = {"type": "video_url", "video_url": {"url": mp4_url(5)}}
    usage = ask(qwen3_server, [image], prune_ratio=0.75).usage.model_extra
    assert (usage["visual_tokens_before"], usage["visual_tokens_after"]) == (150, 38)
    stock = ask(qwen3_server, [image, video], prune_ratio=0.0)
    pruned = ask(qwen3_server, [image, video], prune_ratio=0.5)
    kept = pruning.keep_count(150, 0.5) + 2 * pruning.keep_count(20, 0.5)  # per frame
    usage = pruned.usage.model_extra
    assert (usage["visual_tokens_before"], usage["visual_tokens_after"]) == (150 + 40, kept)
    assert stock.usage.prompt_tokens - pruned.usage.prompt_tokens == 150 + 40 - kept


def test_a_ratio_on_a_server_that_cannot_prune_is_a_400(tiny_qwen2_5_vl, tmp_path):
    from openai import BadRequestError

    log = tmp_path / "zspa-serve-disabled.log"
    proc, url = start_server(tiny_qwen2_5_vl, log, "--api-key", API_KEY, env={"ZSPA_DISABLE": "1"})
    try:
        server = Server(url=url, model=tiny_qwen2_5_vl, log=log)
        image = {"type": "image_url", "image_url": {"url": png_url(6, 224, 224)}}
        with pytest.raises(BadRequestError) as err:
            ask(server, [image], prune_ratio=0.5)
        assert "prune_ratio" in str(err.value) and "ZSPA_DISABLE" in str(err.value)
        # Not asking for pruning is served as usual (stock: all 64 tokens).
        assert ask(server, [image], prune_ratio=0.0).usage.prompt_tokens > 64
    finally:
        stop_server(proc)


def test_unsupported_architectures_are_named_in_the_refusal():
    from types import SimpleNamespace

    from zspa_server.renderer import _pruning_refusal

    def state(*archs):
        model_config = SimpleNamespace(architectures=list(archs))
        return SimpleNamespace(vllm_config=SimpleNamespace(model_config=model_config))

    refusal = _pruning_refusal(state("PixtralForConditionalGeneration"))
    assert "PixtralForConditionalGeneration" in refusal
    assert "Qwen2_5_VLForConditionalGeneration" in refusal  # the supported list
    assert _pruning_refusal(state("Qwen3VLForConditionalGeneration")) is None


def test_qwen3_5_images_and_videos_prune(tiny_qwen3_5, tmp_path):
    """Qwen3.5 in bfloat16 (vLLM's CPU Gated DeltaNet needs it): the Qwen3-VL counts; no KV
    bytes claimed (a hybrid model's Gated DeltaNet layers keep no per-token KV)."""
    log = tmp_path / "zspa-serve-qwen3_5.log"
    limits = ["--limit-mm-per-prompt", '{"image": 2, "video": 1}']
    proc, url = start_server(
        tiny_qwen3_5, log, "--api-key", API_KEY, *limits, "--dtype", "bfloat16"
    )
    try:
        server = Server(url=url, model=tiny_qwen3_5, log=log)
        image = {"type": "image_url", "image_url": {"url": png_url(4, 480, 320)}}  # 15 x 10
        video = {"type": "video_url", "video_url": {"url": mp4_url(5)}}  # 2 frames of 4 x 5
        stock = ask(server, [image, video], prune_ratio=0.0)
        pruned = ask(server, [image, video], prune_ratio=0.5)
        kept = pruning.keep_count(150, 0.5) + 2 * pruning.keep_count(20, 0.5)
        usage = pruned.usage.model_extra
        assert (usage["visual_tokens_before"], usage["visual_tokens_after"]) == (150 + 40, kept)
        assert stock.usage.prompt_tokens - pruned.usage.prompt_tokens == 150 + 40 - kept
        assert usage["kv_cache_bytes_saved"] is None
    finally:
        stop_server(proc)
