"""KV capacity: how many image requests fit in a fixed KV cache as the prune ratio grows.

    .venv/bin/python benchmarks/kv_capacity.py [--blocks 64] [--requests 32]

Runs the real vLLM engine in-process (CPU) on the tiny LLaVA with a fixed number of KV
blocks and a batch budget large enough that admission is limited by KV blocks alone.
For each ratio it submits distinct-image requests at once and records, from vLLM's own
scheduler, the most requests running together and the blocks each one holds; next to it,
the arithmetic expectation ``free_blocks // ceil(prompt_tokens / block_size)``.
Writes ``benchmarks/results/kv_capacity.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # scheduler in this process
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 32  # the CPU attention backend needs a multiple of 32


def measure(llm, ratio: float, n: int, seed0: int) -> dict:
    import numpy as np
    from PIL import Image
    from vllm import SamplingParams

    engine = llm.llm_engine
    scheduler = engine.engine_core.engine_core.scheduler
    free = scheduler.kv_cache_manager.block_pool.get_num_free_blocks()
    for i in range(n):
        rng = np.random.RandomState(seed0 + i)
        img = Image.fromarray((rng.rand(336, 336, 3) * 255).astype("uint8"))
        engine.add_request(
            f"kv-{ratio}-{i}",
            {
                "prompt": "USER: <image>\nwhat is in this image? ASSISTANT:",
                "multi_modal_data": {"image": img},
                "mm_processor_kwargs": {"prune_ratio": ratio},
            },
            SamplingParams(max_tokens=2, temperature=0.0),
        )
    peak, peak_used, lengths = 0, 0, set()
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                lengths.add(len(out.prompt_token_ids))
        peak = max(peak, len(scheduler.running))
        peak_used = max(
            peak_used, free - scheduler.kv_cache_manager.block_pool.get_num_free_blocks()
        )
    (prompt_tokens,) = lengths
    per_request = math.ceil(prompt_tokens / BLOCK)
    return {
        "ratio": ratio,
        "prompt_tokens": prompt_tokens,
        "blocks_per_request": per_request,
        "free_blocks": free,
        "peak_running": peak,
        "peak_blocks_used": peak_used,
        "expected_running": min(n, free // per_request),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=64, help="KV blocks of 32 tokens")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.5, 0.75, 0.9])
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/kv_capacity"))
    args = parser.parse_args()

    from vllm import LLM

    from zspa_vllm.testing.tiny_llava import build_tiny_llava

    model = build_tiny_llava(Path(tempfile.mkdtemp()) / "tiny-llava")
    llm = LLM(
        model=str(model),
        dtype="float32",
        enforce_eager=True,
        distributed_executor_backend="uni",
        num_gpu_blocks_override=args.blocks + 1,  # + vLLM's reserved null block
        block_size=BLOCK,
        max_model_len=640,
        max_num_batched_tokens=32768,
        max_num_seqs=max(args.requests, 16),
        enable_prefix_caching=True,
        seed=0,
    )
    rows = [measure(llm, r, args.requests, 1000 * (i + 1)) for i, r in enumerate(args.ratios)]
    base = rows[0]["peak_running"]
    lines = [
        f"# KV capacity: {args.blocks} blocks x {BLOCK} tokens, {args.requests} requests "
        "with one 336px image each (576 visual tokens unpruned)",
        "",
        "| ratio | prompt tokens | blocks / request | requests running at once "
        "| expected (arithmetic) | vs ratio 0 |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['ratio']:g} | {r['prompt_tokens']} | {r['blocks_per_request']} "
        f"| {r['peak_running']} | {r['expected_running']} | {r['peak_running'] / base:.1f}x |"
        for r in rows
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"blocks": args.blocks, "rows": rows}, indent=2))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
