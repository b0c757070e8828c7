"""What pruning buys in time to first token on a GPU, without vLLM: vision + selection + prefill.

    python benchmarks/gpu_ttft.py --out benchmarks/results/gpu_ttft.json   # CUDA, 7B shapes
    python benchmarks/gpu_ttft.py --tiny --device cpu --repeats 2           # plumbing (tests)

Plain torch with random weights in the real shapes (bf16 on CUDA): a Llama-7B-shaped decoder
(LLaVA-1.5-7B; Qwen2.5-VL-7B: Qwen2-7B with GQA) and a CLIP-L/336-shaped ViT + projector (for
Qwen2.5-VL a 32-layer ViT over 4x the merged tokens with full attention: its real tower uses
windows in most layers, so this vision time is an upper bound). The decoder prefill is
captured in a CUDA graph per length (a lower bound for vLLM's prefill: no launch gaps), the
vision tower too. The selector is ``pruning.select_batch`` as the engine calls it, with each
backend (``torch`` loop, ``triton`` kernel) after ``greedy_kernel.warmup``.

For each model, batch (1 and 16 requests of one engine step) and ratio it reports medians
(with min and max) of: vision, prefill at the full and pruned lengths, selection, and
  limit = (vision + prefill_full) / (vision + prefill_pruned)          (Amdahl: free selection)
  speedup = (vision + prefill_full) / (vision + selection + prefill_pruned)
  pct_of_limit = speedup / limit.
Numbers are never asserted in tests; the README quotes the committed JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zspa_vllm import envs, greedy_kernel, pruning


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vis_hidden: int
    vis_layers: int
    vis_heads: int
    vis_ffn: int
    vis_tokens: int  # tokens through the ViT
    image_tokens: int  # visual tokens reaching the LLM (after projector / merge)
    text_tokens: int


SHAPES = {
    "llava-1.5-7b": Shape(
        "llava-1.5-7b", 4096, 32, 32, 32, 11008, 1024, 24, 16, 4096, 577, 576, 40
    ),
    "qwen2.5-vl-7b": Shape(
        "qwen2.5-vl-7b", 3584, 28, 28, 4, 18944, 1280, 32, 16, 3420, 4096, 1024, 40
    ),
}
TINY = Shape("tiny", 64, 2, 4, 2, 128, 32, 2, 4, 64, 65, 64, 8)


class Block(nn.Module):
    """Pre-norm transformer block (attention + gated MLP); causal for the decoder."""

    def __init__(self, d: int, heads: int, kv_heads: int, ffn: int, causal: bool) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.causal, self.hd = heads, kv_heads, causal, d // heads
        self.n1, self.n2 = nn.RMSNorm(d), nn.RMSNorm(d)
        self.qkv = nn.Linear(d, (heads + 2 * kv_heads) * self.hd, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.up = nn.Linear(d, 2 * ffn, bias=False)
        self.down = nn.Linear(ffn, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(self.n1(x)).split(
            [self.heads * self.hd, self.kv_heads * self.hd, self.kv_heads * self.hd], dim=-1
        )
        q = q.view(b, t, self.heads, self.hd).transpose(1, 2)
        k = k.view(b, t, self.kv_heads, self.hd).transpose(1, 2)
        v = v.view(b, t, self.kv_heads, self.hd).transpose(1, 2)
        a = F.scaled_dot_product_attention(
            q, k, v, is_causal=self.causal, enable_gqa=self.kv_heads != self.heads
        )
        x = x + self.o(a.transpose(1, 2).reshape(b, t, -1))
        gate, up = self.up(self.n2(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class Stack(nn.Module):
    def __init__(self, n: int, *block_args, out: int | None = None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(*block_args) for _ in range(n))
        d = block_args[0]
        self.proj = (
            nn.Sequential(nn.Linear(d, out), nn.GELU(), nn.Linear(out, out)) if out else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.proj(x) if self.proj is not None else x


def timer(fn, device: torch.device, repeats: int) -> list[float]:
    """Milliseconds of ``fn`` after two warm-up calls (CUDA events on a GPU)."""
    for _ in range(2):
        fn()
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def graphed(module: nn.Module, x: torch.Tensor, device: torch.device):
    """A callable replaying ``module(x)`` from a CUDA graph (eager off CUDA)."""
    if device.type != "cuda":
        return lambda: module(x)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            module(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        module(x)
    return graph.replay


def stats(ms: list[float]) -> dict:
    return {"median": statistics.median(ms), "min": min(ms), "max": max(ms)}


@torch.inference_mode()
def run_shape(shape: Shape, args, device: torch.device, dtype: torch.dtype) -> list[dict]:
    torch.manual_seed(0)
    llm = Stack(shape.layers, shape.hidden, shape.heads, shape.kv_heads, shape.ffn, True)
    vit = Stack(
        shape.vis_layers, shape.vis_hidden, shape.vis_heads, shape.vis_heads, shape.vis_ffn,
        False, out=shape.hidden,
    )  # fmt: skip
    llm, vit = llm.to(device, dtype).eval(), vit.to(device, dtype).eval()
    n_full = shape.text_tokens + shape.image_tokens
    rows = []
    for batch in args.batches:
        pix = torch.randn(batch, shape.vis_tokens, shape.vis_hidden, device=device, dtype=dtype)
        vision = stats(timer(graphed(vit, pix, device), device, args.repeats))
        # Real-looking visual tokens for the selector: the ViT output's last image_tokens rows.
        feats = vit(pix)[:, -shape.image_tokens :]
        prompt = torch.randn(shape.text_tokens, shape.hidden, device=device, dtype=dtype)
        prefill = {}
        for ratio in [0.0, *args.ratios]:
            n = shape.text_tokens + pruning.keep_count(shape.image_tokens, ratio)
            x = torch.randn(batch, n, shape.hidden, device=device, dtype=dtype)
            prefill[ratio] = stats(timer(graphed(llm, x, device), device, args.repeats))
        for ratio in args.ratios:
            keep = pruning.keep_count(shape.image_tokens, ratio)
            for backend in args.backends:
                os.environ[envs.SELECT_BACKEND] = backend
                if backend == "triton":
                    greedy_kernel.warmup(device, shape.image_tokens)
                visuals, prompts = list(feats.unbind(0)), [prompt] * batch
                sel = stats(
                    timer(
                        lambda v=visuals, p=prompts, ks=[keep] * batch: pruning.select_batch(
                            "zspa", v, p, ks
                        ),
                        device,
                        args.repeats,
                    )
                )
                full = vision["median"] + prefill[0.0]["median"]
                pruned = vision["median"] + prefill[ratio]["median"]
                limit, speedup = full / pruned, full / (pruned + sel["median"])
                rows.append(
                    {
                        "model": shape.name, "batch": batch, "ratio": ratio, "keep": keep,
                        "tokens_full": n_full, "tokens_pruned": shape.text_tokens + keep,
                        "backend": backend, "vision_ms": vision,
                        "prefill_full_ms": prefill[0.0], "prefill_pruned_ms": prefill[ratio],
                        "selection_ms": sel, "amdahl_limit": limit, "speedup": speedup,
                        "pct_of_limit": 100 * speedup / limit,
                    }
                )  # fmt: skip
                r = rows[-1]
                print(
                    f"{shape.name} x{batch} r={ratio} {backend:<6} vision {vision['median']:.2f}"
                    f" prefill {prefill[0.0]['median']:.2f}->{prefill[ratio]['median']:.2f}"
                    f" select {sel['median']:.2f} ms: {speedup:.2f}x of limit {limit:.2f}x"
                    f" ({r['pct_of_limit']:.0f}%)",
                    flush=True,
                )
    del llm, vit
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--tiny", action="store_true", help="tiny dims (plumbing)")
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.5, 0.75, 0.9])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--backends", nargs="+", default=["torch", "triton"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shapes = [TINY] if args.tiny else [SHAPES[m] for m in args.models]
    rows = [r for s in shapes for r in run_shape(s, args, device, dtype)]
    meta = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype),
        "repeats": args.repeats,
        "shapes": [asdict(s) for s in shapes],
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
