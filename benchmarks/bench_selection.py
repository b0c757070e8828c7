"""Time of every selector in zspa_vllm.pruning, per image and per batch of images.

    .venv/bin/python benchmarks/bench_selection.py              # CPU, one thread
    .venv/bin/python benchmarks/bench_selection.py --device cuda --dtype bfloat16

Median of repeated runs after one warm-up run, per (N, D, ratio, method, backend, batch);
min and max give the spread; ``--rounds R`` repeats the whole sweep and reports the range of
the per-round medians (the run-to-run spread a README number must carry). On CUDA both
backends run side by side (``torch``: the per-step loop; ``triton``: Gram + one kernel
launch) at batch 1 and 16 (16 images of one engine step in one ``select_batch`` call), and
``first_ms`` is the first call after ``greedy_kernel.warmup`` (what the first request pays
once vLLM's profiling run warmed up). Prints a Markdown table and writes JSON (git SHA,
torch version, device, threads, the command) under benchmarks/results/. Inputs are
clustered random tokens (closer to real patch embeddings than i.i.d. Gaussians); the
selection cost does not depend on the values.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from zspa_vllm import envs, greedy_kernel, pruning

SHAPES = [(576, 4096), (2304, 4096), (5000, 3584), (16384, 3584)]
CUDA_SHAPES = [(576, 4096), (1024, 3584), (2304, 4096), (4096, 3584), (16384, 3584)]
# Selectors whose cost the backend changes (the others never run the greedy fill).
GREEDY = {"zspa", "divprune"}
RATIOS = [0.5, 0.75, 0.9]


def _git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device: torch.device, repeats: int, budget_s: float) -> tuple[float, list[float]]:
    """(first call, steady-state runs) in seconds."""
    t0 = time.perf_counter()
    fn()  # warm-up: allocator, kernels, caches
    _sync(device)
    first = time.perf_counter() - t0
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
    return first, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, or cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="sweep everything this many times; the table then gives the median of the "
        "per-round medians and their range across rounds",
    )
    parser.add_argument("--budget-s", type=float, default=20.0, help="per cell, soft")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--methods", nargs="+", default=list(pruning.METHODS))
    parser.add_argument("--shapes", nargs="+", help="NxD ... (default: by device)")
    parser.add_argument("--ratios", nargs="+", type=float, default=RATIOS)
    parser.add_argument(
        "--backends", nargs="+", choices=envs.SELECT_BACKENDS[1:], help="default: by device"
    )
    parser.add_argument(
        "--batches", nargs="+", type=int, help="images per call (default: by device)"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.shapes = args.shapes or [f"{n}x{d}" for n, d in (CUDA_SHAPES if cuda else SHAPES)]
    args.backends = args.backends or (["torch", "triton"] if cuda else ["torch"])
    args.batches = args.batches or ([1, 16] if cuda else [1])
    dtype = getattr(torch, args.dtype)
    rows = []
    for rnd in range(args.rounds):
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
                    for backend in args.backends if method in GREEDY else args.backends[:1]:
                        for batch in args.batches:
                            row = _cell(args, device, visual, prompt, keep, ratio, method,
                                        backend, batch)  # fmt: skip
                            rows.append(row | {"round": rnd})

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    meta = {
        "git_sha": _git_sha(),
        "torch": torch.__version__,
        "device": str(device),
        "device_name": device_name or platform.machine(),
        "threads": args.threads,
        "dtype": args.dtype,
        "rounds": args.rounds,
        "command": " ".join(["benchmarks/bench_selection.py", *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"selection-{device.type}-{args.dtype}-t{args.threads}.json"
    # One column per (method, backend, batch) that ran.
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"\nwrote {path}\n")
    print(_table(rows))


def _cell(args, device, visual, prompt, keep, ratio, method, backend, batch) -> dict:
    os.environ[envs.SELECT_BACKEND] = backend  # read at call time by pruning
    n, d = visual.shape
    if backend == "triton":
        greedy_kernel.warmup(device, n)  # what vLLM's profiling run does at start-up
    visuals, prompts, keeps = [visual] * batch, [prompt] * batch, [keep] * batch
    first, times = _time(
        lambda: pruning.select_batch(method, visuals, prompts, keeps),
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
        "backend": backend,
        "batch": batch,
        "median_ms": statistics.median(times) * 1e3,
        "min_ms": min(times) * 1e3,
        "max_ms": max(times) * 1e3,
        "first_ms": first * 1e3,
        "runs": len(times),
    }
    print(
        f"N={n:<6} D={d:<5} ratio={ratio:<5} {method:<10} {backend:<6} x{batch:<3}"
        f"{row['median_ms']:10.2f} ms  [{row['min_ms']:.2f}, {row['max_ms']:.2f}]  "
        f"first {row['first_ms']:.2f} ms  ({len(times)} runs)",
        flush=True,
    )
    return row


def _table(rows: list[dict]) -> str:
    """Markdown: one line per (N, D, ratio), one column per (method, backend, batch): median ms
    per call [min, max]. One round: across its runs; several: the median of the per-round
    medians and their range across rounds (what another run of the command may give)."""
    cols = list(dict.fromkeys((r["method"], r["backend"], r["batch"]) for r in rows))
    names = [m if len(cols) == len({c[0] for c in cols}) else f"{m} {b} x{k}" for m, b, k in cols]
    lines = ["| N | D | ratio | keep | " + " | ".join(names) + " |", "|" + "---|" * (4 + len(cols))]
    for n, d, ratio, keep in sorted({(r["n"], r["d"], r["ratio"], r["keep"]) for r in rows}):
        out = []
        for method, backend, batch in cols:
            cell = [
                r
                for r in rows
                if (r["n"], r["d"], r["ratio"], r["method"], r["backend"], r["batch"])
                == (n, d, ratio, method, backend, batch)
            ]
            if not cell:
                out.append("-")
            elif len(cell) == 1:
                c = cell[0]
                out.append(f"{c['median_ms']:.2f} [{c['min_ms']:.2f}, {c['max_ms']:.2f}]")
            else:
                medians = [c["median_ms"] for c in cell]
                out.append(
                    f"{statistics.median(medians):.2f} [{min(medians):.2f}, {max(medians):.2f}]"
                )
        lines.append(f"| {n} | {d} | {ratio} | {keep} | " + " | ".join(out) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
