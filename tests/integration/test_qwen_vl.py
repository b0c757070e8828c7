"""The plugin inside real vLLM 0.32 (CPU) on tiny random-weight Qwen2-VL and Qwen2.5-VL.

The reference is an independent HF transformers pipeline: M-RoPE position ids from HF's
own ``get_rope_index`` on the UNPRUNED prompt, then the pruned visual tokens dropped
(embeddings and position ids together) before the forward pass, and greedy decoding at
the positions that follow the unpruned prompt.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.integration.conftest import engine_kwargs, greedy, run_fresh
from zspa_vllm import pruning

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

IMG = "<|vision_start|><|image_pad|><|vision_end|>"
VID = "<|vision_start|><|video_pad|><|vision_end|>"
IMAGE_PAD, VIDEO_PAD = 5, 6  # token ids in the tiny tokenizer (tiny_qwen_vl.SPECIALS)
FPS = 2.0


def chat(*parts: str) -> str:
    return "<|im_start|>user\n" + "".join(parts) + "<|im_end|>\n<|im_start|>assistant\n"


def qimage(seed: int, w: int = 420, h: int = 280) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(h, w, 3) * 255).astype("uint8"))


def qvideo(seed: int, frames: int = 4, w: int = 168, h: int = 112) -> np.ndarray:
    return (np.random.RandomState(seed).rand(frames, h, w, 3) * 255).astype("uint8")


def metadata(video: np.ndarray) -> dict:
    n = len(video)
    return {
        "fps": FPS,
        "duration": n / FPS,
        "total_num_frames": n,
        "frames_indices": list(range(n)),
        "video_backend": "opencv",
    }


def qrequest(variant: str, text: str, images=(), videos=(), **prune) -> dict:
    data: dict = {}
    if images:
        data["image"] = list(images)
    if videos:
        # Qwen2.5-VL and Qwen3-VL take (frames, metadata): the fps sets their timing.
        data["video"] = [(v, metadata(v)) if variant != "qwen2_vl" else v for v in videos]
    return {"prompt": text, "multi_modal_data": data, "mm_processor_kwargs": prune}


def generate(llm, *reqs, n: int = 4):
    return llm.generate(list(reqs), greedy(n), use_tqdm=False)


def signature(out) -> tuple:
    first = out.outputs[0].logprobs[0]
    return (
        tuple(out.prompt_token_ids),
        tuple(out.outputs[0].token_ids),
        tuple(sorted((t, round(lp.logprob, 3)) for t, lp in first.items())),
    )


def visual_tokens(ids) -> int:
    return sum(1 for t in ids if t in (IMAGE_PAD, VIDEO_PAD))


# -- the independent HF reference ------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _hf(path: str, variant: str):
    import transformers

    cls = {
        "qwen3_vl": transformers.Qwen3VLForConditionalGeneration,
        "qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
        "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
    }[variant]
    model = cls.from_pretrained(path, dtype=torch.float32).eval()
    return model, transformers.AutoProcessor.from_pretrained(path)


def hf_reference(path, variant, text, images=(), videos=(), *, ratio, select, steps=4, naive=False):
    """(first-step log-probs, greedy tokens, pruned prompt ids) from HF transformers.

    ``naive=True`` gives kept visual tokens the positions of the first K grid cells
    (what compacting the grid would do): a control that the position test can fail.
    """
    from transformers.video_utils import VideoMetadata

    model, processor = _hf(path, variant)
    extra = {}
    if videos and variant == "qwen2_5_vl":
        extra = {
            "video_metadata": [VideoMetadata(**metadata(v)) for v in videos],
            "do_sample_frames": False,
        }
    inputs = processor(
        text=[text],
        images=list(images) or None,
        videos=list(videos) or None,
        return_tensors="pt",
        **extra,
    )
    ids = inputs["input_ids"][0]
    inner = model.model
    with torch.no_grad():
        feats = {"image": [], "video": []}
        deep_items = []  # Qwen3-VL: per image, its deepstack features (one per level)
        if images:
            out = inner.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
            feats["image"] = list(out.pooler_output)
            levels = getattr(out, "deepstack_features", None) or []
            deep_items = [[level[k] for level in levels] for k in range(len(images))]
        if videos:
            out = inner.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
            feats["video"] = list(out.pooler_output)
        rope_kwargs = {}
        if variant == "qwen2_5_vl" and videos:
            rope_kwargs["second_per_grid_ts"] = inputs["second_per_grid_ts"]
        pos, _ = inner.get_rope_index(
            inputs["input_ids"],
            inputs["mm_token_type_ids"],
            image_grid_thw=inputs.get("image_grid_thw"),
            video_grid_thw=inputs.get("video_grid_thw"),
            attention_mask=inputs["attention_mask"],
            **rope_kwargs,
        )
        pos = pos[:, 0]  # [3, L]
        table = model.get_input_embeddings()
        special = set(processor.tokenizer.all_special_ids) | {IMAGE_PAD, VIDEO_PAD}
        prompt = table(torch.tensor([t for t in ids.tolist() if t not in special]))
        embeds = table(ids)
        keep = torch.ones(len(ids), dtype=torch.bool)
        new_pos = pos.clone()
        counters = {"image": 0, "video": 0}
        is_visual = torch.zeros(len(ids), dtype=torch.bool)
        deep = [torch.zeros(len(ids), f.shape[-1]) for f in (deep_items[0] if deep_items else [])]
        i = 0
        while i < len(ids):  # each run of pad tokens is one item, in prompt order
            tok = int(ids[i])
            if tok not in (IMAGE_PAD, VIDEO_PAD):
                i += 1
                continue
            modality = "image" if tok == IMAGE_PAD else "video"
            feat = feats[modality][counters[modality]]
            counters[modality] += 1
            n = feat.shape[0]
            assert bool((ids[i : i + n] == tok).all()) and (i + n == len(ids) or ids[i + n] != tok)
            embeds[i : i + n] = feat
            is_visual[i : i + n] = True
            if modality == "image" and deep_items:
                for level, f in zip(deep, deep_items[counters["image"] - 1], strict=True):
                    level[i : i + n] = f
            kept = select(feat, prompt, pruning.keep_count(n, ratio))
            mask = torch.zeros(n, dtype=torch.bool)
            mask[kept] = True
            keep[i : i + n] = mask
            if naive:
                new_pos[:, i : i + n][:, mask] = pos[:, i : i + len(kept)]
            i += n
        x, p, vis = embeds[keep], new_pos[:, keep], is_visual[keep]
        deep_kept = [level[keep][vis] for level in deep]
        next_pos = int(pos.max()) + 1  # decoding continues after the unpruned prompt
        tokens, first = [], None
        for step in range(steps):
            deepstack = (
                {"visual_pos_masks": vis[None], "deepstack_visual_embeds": deep_kept}
                if deep
                else {}
            )
            hidden = inner.language_model(
                inputs_embeds=x[None], position_ids=p[:, None], **deepstack
            ).last_hidden_state
            logprobs = torch.log_softmax(model.lm_head(hidden[0, -1]).double(), dim=-1)
            first = logprobs if first is None else first
            token = int(logprobs.argmax())
            tokens.append(token)
            x = torch.cat([x, table(torch.tensor([token]))])
            p = torch.cat([p, torch.full((3, 1), next_pos + step)], dim=1)
            vis = torch.cat([vis, torch.zeros(1, dtype=torch.bool)])
    return first, tokens, ids[keep].tolist()


CASES = {
    "one image": (chat(IMG, "what is in this image?"), [(1, 420, 280)]),
    "two images": (
        chat(IMG, "compare the sky with the sea", IMG, "how many objects?"),
        [(2, 280, 448), (3, 336, 336)],
    ),
    "image then more text": (
        chat(
            "read the text in the sign. ",
            IMG,
            "is there a cat or a dog? where is the person standing? "
            "count the apples on the table; answer yes or no.",
        ),
        [(4, 448, 224)],
    ),
}


@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_hf_with_positions_of_the_unpruned_prompt(qwen, case, ratio):
    variant, path, llm = qwen
    text, specs = CASES[case]
    images = [qimage(s, w, h) for s, w, h in specs]
    (out,) = generate(llm, qrequest(variant, text, images, prune_ratio=ratio))
    want, tokens, ids = hf_reference(
        path, variant, text, images, ratio=ratio, select=pruning.zspa_select
    )
    assert list(out.prompt_token_ids) == ids  # same text, same kept count per image
    got = out.outputs[0].logprobs[0]
    for token, lp in got.items():
        assert lp.logprob == pytest.approx(float(want[token]), abs=1e-3)
    assert list(out.outputs[0].token_ids) == tokens  # decode positions continue right
    # The comparison can fail: other kept tokens, or the right tokens at compacted
    # positions, give clearly other log-probs.
    for control in (
        hf_reference(path, variant, text, images, ratio=ratio, select=pruning.uniform_select),
        hf_reference(
            path, variant, text, images, ratio=ratio, select=pruning.zspa_select, naive=True
        ),
    ):
        assert max(abs(lp.logprob - float(control[0][t])) for t, lp in got.items()) > 1e-2


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.9])
def test_prompt_length_per_image_size(qwen, ratio):
    variant, _, llm = qwen
    # (w, h) -> N = (h/28) * (w/28) after the processor's resize (min 56x56, max 448x448).
    sizes = {(56, 56): 4, (224, 224): 64, (420, 280): 150, (448, 448): 256, (112, 336): 48}
    text = "what is in this image?"
    (bare,) = generate(llm, {"prompt": chat(text)})
    for (w, h), n in sizes.items():
        (out,) = generate(
            llm, qrequest(variant, chat(IMG, text), [qimage(7, w, h)], prune_ratio=ratio)
        )
        # The placeholder itself is one token of the bare prompt's template.
        assert len(out.prompt_token_ids) == len(bare.prompt_token_ids) + 2 + pruning.keep_count(
            n, ratio
        )
        assert visual_tokens(out.prompt_token_ids) == pruning.keep_count(n, ratio)


@pytest.mark.parametrize("ratio", [0.5, 0.75])
def test_video_matches_hf(qwen, ratio):
    variant, path, llm = qwen
    video = qvideo(8, frames=6)  # 3 temporal grid steps of 4x6 merged tokens: N = 72
    text = chat(VID, "what happens in this video?")
    (out,) = generate(llm, qrequest(variant, text, videos=[video], prune_ratio=ratio))
    assert visual_tokens(out.prompt_token_ids) == pruning.keep_count(72, ratio)
    want, tokens, ids = hf_reference(
        path, variant, text, videos=[video], ratio=ratio, select=pruning.zspa_select
    )
    assert list(out.prompt_token_ids) == ids
    for token, lp in out.outputs[0].logprobs[0].items():
        assert lp.logprob == pytest.approx(float(want[token]), abs=1e-3)
    assert list(out.outputs[0].token_ids) == tokens


def test_image_and_video_in_one_prompt_matches_hf(qwen):
    variant, path, llm = qwen
    img, video = qimage(9, 336, 224), qvideo(10)
    text = chat(IMG, "and then", VID, "describe both")
    (out,) = generate(llm, qrequest(variant, text, [img], [video], prune_ratio=0.75))
    want, tokens, ids = hf_reference(
        path, variant, text, [img], [video], ratio=0.75, select=pruning.zspa_select
    )
    assert list(out.prompt_token_ids) == ids
    for token, lp in out.outputs[0].logprobs[0].items():
        assert lp.logprob == pytest.approx(float(want[token]), abs=1e-3)
    assert list(out.outputs[0].token_ids) == tokens


@pytest.fixture(scope="session")
def qwen_chunked(qwen):
    """Same checkpoint, prefill in 32-token chunks: every image is split across steps."""
    from vllm import LLM

    variant, path, _ = qwen
    engine = LLM(
        **engine_kwargs(
            path,
            limit_mm_per_prompt={"image": 4, "video": 2},
            enable_chunked_prefill=True,
            max_num_batched_tokens=32,
            max_model_len=1024,
            block_size=32,
        )
    )
    return variant, engine


def test_chunked_prefill_equals_unchunked(qwen, qwen_chunked):
    variant, _, llm = qwen
    _, chunked = qwen_chunked
    reqs = [
        qrequest(
            variant, CASES["two images"][0], [qimage(2, 280, 448), qimage(3)], prune_ratio=0.5
        ),
        qrequest(variant, chat(IMG, "what is this?"), [qimage(11, 448, 448)], prune_ratio=0.75),
        qrequest(variant, chat(VID, "what happens?"), videos=[qvideo(12)], prune_ratio=0.5),
    ]
    want = [signature(o) for o in generate(llm, *reqs)]
    # Twice: the second round also hits the prefix cache part-way through the images.
    for _ in range(2):
        assert [signature(o) for o in generate(chunked, *reqs)] == want


def test_same_image_different_prompts_never_share_pruned_tokens(qwen):
    variant, _, llm = qwen
    img = qimage(13)
    qa, qb = chat(IMG, "what colour is the car?"), chat(IMG, "how many apples are on the table?")
    solo_a = signature(generate(llm, qrequest(variant, qa, [img], prune_ratio=0.75))[0])
    solo_b = signature(generate(llm, qrequest(variant, qb, [img], prune_ratio=0.75))[0])
    batch = generate(
        llm,
        qrequest(variant, qa, [img], prune_ratio=0.75),
        qrequest(variant, qb, [img], prune_ratio=0.75),
    )
    assert [signature(o) for o in batch] == [solo_a, solo_b]
    for q, want in ((qb, solo_b), (qa, solo_a), (qb, solo_b)):
        assert signature(generate(llm, qrequest(variant, q, [img], prune_ratio=0.75))[0]) == want


def test_mixed_batch_equals_single_runs(qwen):
    variant, _, llm = qwen
    methods = list(pruning.METHODS)
    reqs = []
    for i in range(8):
        prune = {"prune_ratio": [0.0, 0.5, 0.75, 0.9][i % 4], "prune_method": methods[i % 5]}
        if i % 3 == 2:
            reqs.append(
                qrequest(variant, chat(VID, f"video {i}"), videos=[qvideo(20 + i)], **prune)
            )
        else:
            reqs.append(qrequest(variant, chat(IMG, f"question {i}"), [qimage(20 + i)], **prune))
    reqs.append(qrequest(variant, chat("no image here")))
    singles = [signature(generate(llm, r)[0]) for r in reqs]
    assert [signature(o) for o in generate(llm, *reqs)] == singles


def run_isolated(path: str, variant: str, env: dict, specs: list) -> list:
    """Generate in a fresh process (the plugin registers once per process)."""
    body = f"""
import json
from tests.integration.conftest import engine_kwargs
from tests.integration.test_qwen_vl import *
from vllm import LLM
llm = LLM(**engine_kwargs({path!r}, limit_mm_per_prompt={{"image": 4, "video": 2}}))
reqs = [qrequest({variant!r}, t, [qimage(s) for s in i], [qvideo(s) for s in v], **kw)
        for t, i, v, kw in json.loads(sys.argv[1])]
print("RESULT" + json.dumps([signature(o) for o in generate(llm, *reqs)]))
"""
    return run_fresh(body, specs, env)


def test_ratio_zero_equals_plugin_disabled(qwen):
    variant, path, llm = qwen
    specs = [
        [chat(IMG, "what is in this image?"), [30], [], {}],
        [chat(IMG, "and", VID, "describe"), [31], [32], {"prune_ratio": 0.0}],
    ]
    stock = run_isolated(path, variant, {"ZSPA_DISABLE": "1"}, specs)
    reqs = [
        qrequest(variant, t, [qimage(s) for s in i], [qvideo(s) for s in v], **kw)
        for t, i, v, kw in specs
    ]
    assert [json.loads(json.dumps(signature(o))) for o in generate(llm, *reqs)] == stock
    assert visual_tokens(stock[0][0]) == 150  # stock really ignored nothing: full count


def test_stats_report_unpruned_size_on_processor_cache_hits(qwen):
    from zspa_vllm import stats

    variant, _, llm = qwen
    seen: list[stats.PruneStats] = []
    unsubscribe = stats.add_listener(seen.append)
    try:
        req = qrequest(
            variant, chat(IMG, "the same again", VID), [qimage(40)], [qvideo(41)], prune_ratio=0.5
        )
        generate(llm, req)
        generate(llm, req)  # identical: a processor-cache hit, no item data to read
    finally:
        unsubscribe()
    # 150 image tokens + 2 x 4 x 6 video tokens (4 frames of 168x112).
    assert [(s.tokens_before, s.tokens_after) for s in seen] == [(150 + 48, 75 + 24)] * 2


def test_engine_video_pruning_rate_is_refused(tiny_qwen2_5_vl):
    # vLLM implements --video-pruning-rate (EVS) for Qwen2.5-VL (and Qwen3-VL), not Qwen2-VL.
    path = tiny_qwen2_5_vl
    code = f"""
import sys
sys.path.insert(0, {os.getcwd()!r})
from tests.integration.conftest import engine_kwargs
from vllm import LLM
LLM(**engine_kwargs({path!r}, video_pruning_rate=0.5))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "--video-pruning-rate" in proc.stderr and "ZSPA_DISABLE=1" in proc.stderr


def test_encoder_batches_stay_within_the_budget():
    from types import SimpleNamespace

    from zspa_vllm.seam.qwen_vl import _PrunedQwenVL

    # Patches per item 64, 16, 4, 48, 256 -> merged tokens (2x2) 16, 4, 1, 12, 64.
    grids = torch.tensor([[1, 8, 8], [1, 4, 4], [1, 2, 2], [2, 4, 6], [1, 16, 16]])
    pixels = torch.arange(int(grids.prod(-1).sum()), dtype=torch.float32)[:, None]
    fake = SimpleNamespace(
        config=SimpleNamespace(vision_config=SimpleNamespace(spatial_merge_size=2)),
        _zspa_encoder_budget=20,
    )
    kwargs = {"pixel_values": pixels, "image_grid_thw": grids}
    batches = list(_PrunedQwenVL._encoder_batches(fake, kwargs))
    # 16 + 4 = 20 fits; 1 + 12 fits; 64 is over budget alone (one item always runs).
    assert [b["image_grid_thw"].tolist() for b in batches] == [
        grids[:2].tolist(),
        grids[2:4].tolist(),
        grids[4:].tolist(),
    ]
    assert torch.equal(torch.cat([b["pixel_values"] for b in batches]), pixels)
    for b in batches:
        assert len(b["pixel_values"]) == int(b["image_grid_thw"].prod(-1).sum())
    # An unknown per-item key: no split (it could not be sliced correctly).
    assert len(list(_PrunedQwenVL._encoder_batches(fake, kwargs | {"other": grids}))) == 1


def _tower_probe(model, budget: int | None):
    """Set the encoder budget and count vision-tower calls (None: undo, return count)."""
    if budget is not None:
        model._probe = (model._zspa_encoder_budget, [])
        model._zspa_encoder_budget = budget
        original = model.visual.forward
        model.visual.forward = lambda *a, **k: model._probe[1].append(1) or original(*a, **k)
        return 0
    del model.visual.forward  # back to the class's method
    model._zspa_encoder_budget, calls = model._probe
    return len(calls)


def test_vision_tower_split_by_budget_matches_hf(qwen):
    variant, path, llm = qwen
    text = CASES["two images"][0]
    images = [qimage(50, 448, 280), qimage(51, 224, 336)]
    llm.apply_model(functools.partial(_tower_probe, budget=1))
    try:
        (out,) = generate(llm, qrequest(variant, text, images, prune_ratio=0.75))
    finally:
        (calls,) = llm.apply_model(functools.partial(_tower_probe, budget=None))
    assert calls == 2  # both images were scheduled in one step, encoded one at a time
    want, tokens, ids = hf_reference(
        path, variant, text, images, ratio=0.75, select=pruning.zspa_select
    )
    assert list(out.prompt_token_ids) == ids
    for token, lp in out.outputs[0].logprobs[0].items():
        assert lp.logprob == pytest.approx(float(want[token]), abs=1e-3)
    assert list(out.outputs[0].token_ids) == tokens
