"""zspa-serve on tiny LLaVA-NeXT, LLaVA-OneVision, Gemma 3, InternVL and Mistral 3 over HTTP
with the official openai client: per-request ratios on images (structure tokens kept), videos
(LLaVA-OneVision; refused with a ratio where a family does not prune them), usage counts, a bad
ratio refused."""

from __future__ import annotations

import pytest

from tests.support.engine import image
from tests.support.onedim import count, hf_reference
from tests.support.server import (
    API_KEY,
    Server,
    ask,
    data_url,
    kv_bytes_per_token,
    mp4_url,
    start_server,
    stop_server,
)
from zspa_vllm import pruning

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
# Family -> (checkpoint fixture, the visual token, whether every layer keeps every token).
FAMILIES = {
    "gemma3": ("tiny_gemma3", "<image_soft_token>", False),  # sliding-window layers
    "internvl": ("tiny_internvl", "<IMG_CONTEXT>", True),
    "mistral3": ("tiny_mistral3", "[IMG]", True),
    "llava_next": ("tiny_llava_next", "<image>", True),
    "llava_onevision": ("tiny_llava_onevision", "<image>", True),
}
VIDEOS = {"llava_onevision": "<video>"}  # the families that prune videos: their video token
SIZE = 224


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def served(request, tmp_path_factory):
    fixture, visual, full_layers = FAMILIES[request.param]
    path = request.getfixturevalue(fixture)
    # Before the server: nothing to leak if they fail.
    slots = per_image(path, visual)
    video = VIDEOS.get(request.param)
    video_slots = per_video(path, video) if video else None
    log = tmp_path_factory.mktemp(f"serve-{request.param}") / "zspa-serve.log"
    limits = ["--limit-mm-per-prompt", '{"image": 2, "video": 1}'] if video else []
    proc, url = start_server(path, log, "--api-key", API_KEY, *limits)
    try:
        server = Server(url=url, model=path, log=log)
        yield server, slots, full_layers, video_slots
    finally:
        stop_server(proc)


def per_image(path: str, visual: str) -> dict[float, int]:
    """Ratio -> visual-token slots of one SIZE x SIZE image in the prompt of the independent
    HF pipeline (units and structure rows by its rules; the count does not depend on which
    tokens are kept, so the cheap uniform selection serves)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    # image_token: what stands for an image in the prompt (Gemma 3: <start_of_image>).
    text = processor.image_token + "describe"  # some prompt text for the selector
    token = processor.tokenizer.convert_tokens_to_ids(visual)
    out = {}
    for ratio in (0.0, 0.5, 0.75, 0.9):
        ref = {"token": visual, "ratio": ratio, "select": pruning.uniform_select, "steps": 1}
        out[ratio] = count(hf_reference(path, text, [image(0, SIZE)], **ref)[2], token)
    return out


def per_video(path: str, visual: str) -> dict[float, int]:
    """Ratio -> video-token slots of one 4-frame video (``mp4_url``'s size) in the prompt of
    the independent HF pipeline."""
    from transformers import AutoProcessor

    from tests.support.qwen import qvideo

    processor = AutoProcessor.from_pretrained(path)
    token = processor.tokenizer.convert_tokens_to_ids(visual)
    out = {}
    for ratio in (0.0, 0.5):
        ref = {"ratio": ratio, "select": pruning.uniform_select, "steps": 1}
        ids = hf_reference(
            path, visual + "describe", [], videos=[qvideo(0)], token=visual, video_token=visual,
            **ref,
        )[2]  # fmt: skip
        out[ratio] = count(ids, token)
    return out


def images(*seeds: int) -> list[dict]:
    return [{"type": "image_url", "image_url": {"url": data_url(s, SIZE)}} for s in seeds]


@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_images_prune_at_the_requested_ratio(served, ratio):
    server, slots, full_layers, _ = served
    for seeds in ([1], [2, 3]):
        stock = ask(server, images(*seeds), prune_ratio=0.0)
        pruned = ask(server, images(*seeds), prune_ratio=ratio)
        full, after = slots[0.0] * len(seeds), slots[ratio] * len(seeds)
        usage = pruned.usage.model_extra
        assert (usage["visual_tokens_before"], usage["visual_tokens_after"]) == (full, after)
        # Only visual tokens go: the markers around each image stay.
        assert stock.usage.prompt_tokens - pruned.usage.prompt_tokens == full - after
        # A sliding-window model keeps a token in only some layers: no byte count claimed.
        bytes_saved = (full - after) * kv_bytes_per_token(server.model) if full_layers else None
        assert usage["kv_cache_bytes_saved"] == bytes_saved


def test_bad_ratio_is_a_400_and_the_server_keeps_serving(served):
    from openai import BadRequestError

    server, slots, _, _ = served
    with pytest.raises(BadRequestError) as err:
        ask(server, images(4), prune_ratio=-0.1)
    assert "prune_ratio" in str(err.value)
    usage = ask(server, images(4), prune_ratio=0.75).usage.model_extra
    assert usage["visual_tokens_after"] == slots[0.75]


def test_videos_prune_or_are_refused(served):
    """LLaVA-OneVision prunes a video (one budget over its frames, the newline kept) and an
    image with it; a family that does not prune videos answers a video with a ratio with a
    400 naming the modality, and keeps serving."""
    from openai import BadRequestError

    server, slots, _, video_slots = served
    video = {"type": "video_url", "video_url": {"url": mp4_url(2)}}
    if video_slots is None:
        with pytest.raises(BadRequestError) as err:
            ask(server, [video], prune_ratio=0.5)
        assert "video" in str(err.value)
        assert ask(server, images(5), prune_ratio=0.5).usage.model_extra["visual_tokens_after"]
        return
    for parts, n in (([video], 0), ([video, *images(6)], 1)):
        stock = ask(server, parts, prune_ratio=0.0)
        pruned = ask(server, parts, prune_ratio=0.5)
        full = video_slots[0.0] + n * slots[0.0]
        after = video_slots[0.5] + n * slots[0.5]
        usage = pruned.usage.model_extra
        assert (usage["visual_tokens_before"], usage["visual_tokens_after"]) == (full, after)
        assert stock.usage.prompt_tokens - pruned.usage.prompt_tokens == full - after
