"""The tiny Qwen2-VL / Qwen2.5-VL / Qwen3-VL in tests: chat text, media, requests, and the
independent HF transformers reference (M-RoPE positions of the unpruned prompt, pruned
tokens dropped before the forward pass)."""

from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import Image

from tests.support.engine import greedy, run_fresh
from zspa_vllm import pruning

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


# vLLM 0.32's CPU Gated DeltaNet runs in bfloat16 only: Qwen3.5 runs in bfloat16 on both sides.
DTYPE = {"qwen3_5": torch.bfloat16, "qwen3_5_moe": torch.bfloat16}


@functools.lru_cache(maxsize=2)
def _hf(path: str, variant: str):
    import transformers

    cls = {
        "qwen3_vl": transformers.Qwen3VLForConditionalGeneration,
        "qwen3_vl_moe": transformers.Qwen3VLMoeForConditionalGeneration,
        "qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
        "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
        "qwen3_5": transformers.Qwen3_5ForConditionalGeneration,
        "qwen3_5_moe": transformers.Qwen3_5MoeForConditionalGeneration,
        "qwen3_5_attn": transformers.Qwen3_5ForConditionalGeneration,
    }[variant]
    model = cls.from_pretrained(path, dtype=DTYPE.get(variant, torch.float32)).eval()
    return model, transformers.AutoProcessor.from_pretrained(path)


def hf_reference(
    path, variant, text, images=(), videos=(), *, ratio, select, steps=4, naive=False,
    video_features=None,
):  # fmt: skip
    """(first-step log-probs, greedy tokens, pruned prompt ids) from HF transformers.

    ``naive=True`` gives kept visual tokens the positions of the first K grid cells
    (what compacting the grid would do): a control that the position test can fail.
    ``video_features``: per video, a vision-tower output to use instead of HF's (main
    columns, then each deepstack level's), for Qwen3-VL videos (test_qwen3_vl.py says why).
    """
    from transformers.video_utils import VideoMetadata

    model, processor = _hf(path, variant)
    extra = {}
    if videos and variant != "qwen2_vl":
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
        deep_frames = {"video": []}  # Qwen3-VL: per video frame, the same
        if images:
            out = inner.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
            feats["image"] = list(out.pooler_output)
            levels = getattr(out, "deepstack_features", None) or []
            deep_items = [[level[k] for level in levels] for k in range(len(images))]
        if videos:
            grids = inputs["video_grid_thw"]
            out = inner.get_video_features(inputs["pixel_values_videos"], grids)
            feats["video"] = list(out.pooler_output)
            if video_features is not None:
                width = feats["video"][0].shape[-1]
                feats["video"] = [f[:, :width] for f in video_features]
                levels = [tuple(f[:, k : k + width] for f in video_features)
                          for k in range(width, video_features[0].shape[-1], width)]  # fmt: skip
                out.deepstack_features = levels
            if variant.startswith("qwen3"):
                # Qwen3-VL: each frame is its own run of pad tokens (timestamp text between
                # frames) and its own budget unit; split every video (and its deepstack
                # features) into its frames.
                frames = [int(g[0]) for g in grids]
                feats["video"] = [
                    f for v, t in zip(feats["video"], frames, strict=True) for f in v.chunk(t)
                ]
                levels = out.deepstack_features or []
                per_video = [[level[k] for level in levels] for k in range(len(videos))]
                deep_frames["video"] = [
                    list(frame)
                    for item, t in zip(per_video, frames, strict=True)
                    for frame in zip(*(level.chunk(t) for level in item), strict=True)
                ]
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
        # The selector's text: the templated prompt's (before the processor expands media,
        # so no Qwen3-VL timestamp text), minus placeholders and special tokens.
        templated = processor.tokenizer(text, add_special_tokens=False).input_ids
        prompt = table(torch.tensor([t for t in templated if t not in special]))
        embeds = table(ids)
        keep = torch.ones(len(ids), dtype=torch.bool)
        new_pos = pos.clone()
        counters = {"image": 0, "video": 0}
        is_visual = torch.zeros(len(ids), dtype=torch.bool)
        first_deep = (deep_items or deep_frames["video"] or [[]])[0]
        deep = [torch.zeros(len(ids), f.shape[-1]) for f in first_deep]
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
            run_deep = deep_items if modality == "image" else deep_frames["video"]
            if deep and run_deep:
                for level, f in zip(deep, run_deep[counters[modality] - 1], strict=True):
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


def run_isolated(path: str, variant: str, env: dict, specs: list) -> list:
    """Generate in a fresh process (the plugin registers once per process)."""
    return run_fresh(generate_requests, {"model": path, "variant": variant, "specs": specs}, env)


def generate_requests(payload: dict) -> list:
    """For ``run_fresh``: ``[text, image seeds, video seeds, options]`` per request."""
    from vllm import LLM

    from tests.support.engine import engine_kwargs

    llm = LLM(**engine_kwargs(payload["model"], limit_mm_per_prompt={"image": 4, "video": 2}))
    variant = payload["variant"]
    reqs = [
        qrequest(variant, t, [qimage(s) for s in i], [qvideo(s) for s in v], **kw)
        for t, i, v, kw in payload["specs"]
    ]
    return [signature(o) for o in generate(llm, *reqs)]


def run_batches(payload: dict) -> dict:
    """For ``run_fresh``: one engine on ``payload["model"]``, then each named batch of
    ``[text, [[seed, w, h]...] images, [seed...] videos, options]`` requests generated
    together. Per batch: ``[prompt ids, signature, {token: first-step logprob}]`` per
    request, or ``{"error": message}`` if the batch was refused. ``payload["engine"]``:
    engine overrides.

    For models that must not share a process with other engines (vLLM's parallel groups
    are process-global: a MoE engine after a dense one finds no expert-parallel group)."""
    from vllm import LLM

    from tests.support.engine import engine_kwargs

    limits = {"limit_mm_per_prompt": {"image": 4, "video": 2}}
    llm = LLM(**engine_kwargs(payload["model"], **limits | payload.get("engine", {})))
    variant, out = payload["variant"], {}
    for name, specs in payload["batches"].items():
        reqs = [
            qrequest(variant, t, [qimage(*s) for s in i], [qvideo(s) for s in v], **kw)
            for t, i, v, kw in specs
        ]
        try:
            outs = generate(llm, *reqs)
        except ValueError as exc:
            out[name] = {"error": str(exc)}
            continue
        out[name] = [
            [
                list(o.prompt_token_ids),
                signature(o),
                {t: lp.logprob for t, lp in o.outputs[0].logprobs[0].items()},
            ]
            for o in outs
        ]
    return out
