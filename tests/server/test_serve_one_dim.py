"""zspa-serve on tiny LLaVA-NeXT, Gemma 3, InternVL and Mistral 3 over HTTP with the official
openai client: per-request ratios on images (structure tokens kept), usage counts, a bad ratio
refused."""

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
}
SIZE = 224


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def served(request, tmp_path_factory):
    fixture, visual, full_layers = FAMILIES[request.param]
    path = request.getfixturevalue(fixture)
    slots = per_image(path, visual)  # before the server: nothing to leak if it fails
    log = tmp_path_factory.mktemp(f"serve-{request.param}") / "zspa-serve.log"
    proc, url = start_server(path, log, "--api-key", API_KEY)
    try:
        yield Server(url=url, model=path, log=log), slots, full_layers
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


def images(*seeds: int) -> list[dict]:
    return [{"type": "image_url", "image_url": {"url": data_url(s, SIZE)}} for s in seeds]


@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_images_prune_at_the_requested_ratio(served, ratio):
    server, slots, full_layers = served
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

    server, slots, _ = served
    with pytest.raises(BadRequestError) as err:
        ask(server, images(4), prune_ratio=-0.1)
    assert "prune_ratio" in str(err.value)
    usage = ask(server, images(4), prune_ratio=0.75).usage.model_extra
    assert usage["visual_tokens_after"] == slots[0.75]
