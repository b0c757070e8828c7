"""The research-code path: HF transformers ``generate`` with the same pruning, one request
at a time, as the paper's evaluation code runs it.

    .venv/bin/python benchmarks/hf_peer.py MODEL_DIR [--ratio 0.75] [--requests 8]

Per request: HF processor -> vision tower + projector -> ZSPAPrune on the visual tokens
(the same selector zspa-serve uses) -> ``inputs_embeds`` with the kept tokens ->
``generate`` (greedy, fixed output length). serve_bench.py runs it in rounds alternating
with zspa-serve at concurrency 1 and reports the ratios with their spread across rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from PIL import Image

from zspa_vllm.pruning import keep_count, zspa_select

PROMPT = "USER: <image>\nDescribe this image in detail. ASSISTANT:"


def _image(seed: int, size: int = 336) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = (rng.random((12, 12, 3)) * 255).astype("uint8")
    return Image.fromarray(small).resize((size, size), Image.BICUBIC)


class Peer:
    """The model loaded once; ``measure`` times a batch of single requests."""

    def __init__(self, model_dir: str) -> None:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        self.model = LlavaForConditionalGeneration.from_pretrained(
            model_dir, dtype=torch.float32
        ).eval()
        self.processor = AutoProcessor.from_pretrained(model_dir)
        tok = self.processor.tokenizer
        self.excluded = {self.model.config.image_token_index, *tok.all_special_ids}
        self._seed = 10_000
        self.one(0.5, 4)  # warm-up

    def one(self, ratio: float, output_len: int) -> tuple[float, float]:
        """(TTFT, latency) in seconds of one request on a new image."""
        model, cfg = self.model, self.model.config
        table = model.get_input_embeddings()
        self._seed += 1
        start = time.perf_counter()
        inputs = self.processor(images=_image(self._seed), text=PROMPT, return_tensors="pt")
        ids = inputs["input_ids"][0]
        with torch.no_grad():
            feats = model.get_image_features(
                pixel_values=inputs["pixel_values"],
                vision_feature_layer=cfg.vision_feature_layer,
                vision_feature_select_strategy=cfg.vision_feature_select_strategy,
            )
            feats = getattr(feats, "pooler_output", feats)
            feats = (feats[0] if isinstance(feats, (list, tuple)) else feats).reshape(
                -1, table.embedding_dim
            )
            text = torch.tensor([t for t in ids.tolist() if t not in self.excluded])
            keep = keep_count(feats.shape[0], ratio)
            kept = feats[zspa_select(feats, table(text), keep)]
            # The prompt with `keep` image tokens instead of N, filled with the kept rows.
            is_image = ids == cfg.image_token_index
            first, n_image = int(is_image.nonzero()[0]), int(is_image.sum())
            new_ids = torch.cat([ids[:first], ids[first : first + keep], ids[first + n_image :]])
            embeds = table(new_ids.clamp(max=table.num_embeddings - 1))
            embeds[first : first + keep] = kept
            prefill_done = []

            class FirstToken:  # records time to first token inside generate
                def __call__(self, input_ids, scores):
                    if not prefill_done:
                        prefill_done.append(time.perf_counter())
                    return scores

            model.generate(
                inputs_embeds=embeds[None],
                attention_mask=torch.ones(1, embeds.shape[0], dtype=torch.long),
                max_new_tokens=output_len,
                min_new_tokens=output_len,
                do_sample=False,
                logits_processor=[FirstToken()],
            )
        end = time.perf_counter()
        return prefill_done[0] - start, end - start

    def measure(self, ratio: float, requests: int, output_len: int) -> dict:
        runs = [self.one(ratio, output_len) for _ in range(requests)]
        ttft = [r[0] for r in runs]
        latency = [r[1] for r in runs]
        return {
            "ratio": ratio,
            "requests": requests,
            "output_len": output_len,
            "ttft_p50_s": statistics.median(ttft),
            "e2e_p50_s": statistics.median(latency),
            "req_per_s": requests / sum(latency),
            "output_tok_per_s": requests * output_len / sum(latency),
        }


def run(model_dir: str, ratio: float, requests: int, output_len: int) -> dict:
    return Peer(model_dir).measure(ratio, requests, output_len)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("--ratio", type=float, default=0.75)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--output-len", type=int, default=16)
    args = parser.parse_args()
    print(json.dumps(run(args.model_dir, args.ratio, args.requests, args.output_len), indent=2))


if __name__ == "__main__":
    main()
