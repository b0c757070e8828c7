"""Time per image of every selector in zspa_vllm.pruning.

    .venv/bin/python benchmarks/bench_selection.py              # CPU, one thread
    .venv/bin/python benchmarks/bench_selection.py --device cuda

Median of repeated runs after one warm-up run, per (N, D, ratio, method). Prints a
Markdown table and writes JSON (git SHA, torch version, device, threads) under
benchmarks/results/. Inputs are clustered random tokens (closer to real patch
embeddings than i.i.d. Gaussians); the selection cost does not depend on the values.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from zspa_vllm import pruning

SHAPES = [(576, 4096), (2304, 4096), (5000, 3584), (16384, 3584)]
RATIOS = [0.5, 0.75, 0.9]


def _git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device: torch.device, repeats: int, budget_s: float) -> list[float]:
    fn()  # warm-up: allocator, kernels, caches
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        # Slow cells (DivPrune's N^2 seed at N=16384) stop after 3 runs past the budget.
        if len(times) >= 3 and time.perf_counter() - start > budget_s:
            break
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, or cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--budget-s", type=float, default=20.0, help="per cell, soft")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--methods", nargs="+", default=list(pruning.METHODS))
    parser.add_argument(
        "--shapes", nargs="+", default=[f"{n}x{d}" for n, d in SHAPES], help="NxD ..."
    )
    parser.add_argument("--ratios", nargs="+", type=float, default=RATIOS)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    rows = []
    for shape in args.shapes:
        n, d = (int(x) for x in shape.split("x"))
        g = torch.Generator().manual_seed(0)
        centres = torch.randn(32, d, generator=g)
        visual = centres[torch.randint(0, 32, (n,), generator=g)]
        visual = (visual + 0.5 * torch.randn(n, d, generator=g)).to(device, dtype)
        prompt = torch.randn(24, d, generator=g).to(device, dtype)
        for ratio in args.ratios:
            keep = pruning.keep_count(n, ratio)
            for method in args.methods:
                times = _time(
                    lambda m=method, k=keep, v=visual, p=prompt: pruning.select(m, v, p, k),
                    device,
                    args.repeats,
                    args.budget_s,
                )
                row = {
                    "n": n,
                    "d": d,
                    "ratio": ratio,
                    "keep": keep,
                    "method": method,
                    "median_ms": statistics.median(times) * 1e3,
                    "min_ms": min(times) * 1e3,
                    "runs": len(times),
                }
                rows.append(row)
                print(
                    f"N={n:<6} D={d:<5} ratio={ratio:<5} {method:<10} "
                    f"{row['median_ms']:10.2f} ms  ({len(times)} runs)",
                    flush=True,
                )

    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    )
    meta = {
        "git_sha": _git_sha(),
        "torch": torch.__version__,
        "device": str(device),
        "device_name": device_name or platform.machine(),
        "threads": args.threads,
        "dtype": args.dtype,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"selection-{device.type}-{args.dtype}-t{args.threads}.json"
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"\nwrote {path}\n")
    print(_table(rows, args.methods))


def _table(rows: list[dict], methods: list[str]) -> str:
    """Markdown: one line per (N, D, ratio), one column per method, median ms."""
    head = "| N | D | ratio | keep | " + " | ".join(methods) + " |"
    lines = [head, "|" + "---|" * (4 + len(methods))]
    keys = sorted({(r["n"], r["d"], r["ratio"], r["keep"]) for r in rows})
    for n, d, ratio, keep in keys:
        cells = {r["method"]: r["median_ms"] for r in rows if (r["n"], r["ratio"]) == (n, ratio)}
        lines.append(
            f"| {n} | {d} | {ratio} | {keep} | "
            + " | ".join(f"{cells[m]:.2f}" if m in cells else "-" for m in methods)
            + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
