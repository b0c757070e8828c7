"""Offline demo: prune one image in real vLLM and print the prompt token counts.

scripts/demo            # builds a tiny random-weight LLaVA, no model hub needed
python -m zspa_vllm.testing.demo --model llava-hf/llava-1.5-7b-hf   # on a GPU host
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="LLaVA checkpoint; default: build a tiny one")
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.0, 0.5, 0.75, 0.9])
    args = parser.parse_args()

    from vllm import LLM, SamplingParams

    from zspa_vllm.testing.tiny_llava import build_tiny_llava

    cpu = args.model is None
    model = args.model or str(build_tiny_llava(tempfile.mkdtemp(prefix="tiny-llava-")))
    extra = {"dtype": "float32", "enforce_eager": True, "max_model_len": 2048} if cpu else {}
    if cpu:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    llm = LLM(model=model, **extra)
    img = Image.fromarray((np.random.RandomState(0).rand(336, 336, 3) * 255).astype("uint8"))
    prompt = {
        "prompt": "USER: <image>\nWhat is in this image? ASSISTANT:",
        "multi_modal_data": {"image": img},
    }
    rows = []
    for ratio in args.ratios:
        (out,) = llm.generate(
            prompt,
            SamplingParams(max_tokens=8, temperature=0.0),
            mm_processor_kwargs={"prune_ratio": ratio},
            use_tqdm=False,
        )
        rows.append((ratio, len(out.prompt_token_ids), out.outputs[0].text))
    print("\nprune_ratio  prompt_tokens  output")
    for ratio, n, text in rows:
        print(f"{ratio:<12} {n:<14} {text!r}")


if __name__ == "__main__":
    main()
