"""Serving benchmark: zspa-serve at several prune ratios against stock vLLM, under load.

    # CPU, self-contained: builds the benchmark model, starts both servers, runs, stops them
    .venv/bin/python benchmarks/serve_bench.py --launch             # LLaVA-1.5 shape
    .venv/bin/python benchmarks/serve_bench.py --launch qwen2_5_vl  # Qwen2.5-VL shape, M-RoPE
    # Any host: against servers you started (see benchmarks/README.md for the GPU commands)
    .venv/bin/python benchmarks/serve_bench.py --model llava-hf/llava-1.5-7b-hf \
        --zspa-url http://localhost:8000 --stock-url http://localhost:8001

Requests go through vLLM's own benchmark request function (streamed chat completions;
TTFT, latency and token counts as ``vllm bench serve`` measures them). Every request
carries its own image, so no cache (processor, encoder, prefix) serves one request from
another's work. Configurations alternate within each round, and in reverse order every
other round, so drift (thermal, background load) hits all of them alike; the reported
numbers are medians over rounds. Results: ``benchmarks/results/serve_bench.{json,md}``
and PNG plots next to them.

Also measured, at concurrency 1: the Amdahl limit of the TTFT speedup. The part of an
image request's TTFT that pruning cannot shorten (vision tower, projector, processing) is
the median, over back-to-back pairs, of stock vLLM's image TTFT minus the TTFT of a
text-only prompt of the same length; the limit
at ratio r is TTFT(stock) / (that part + TTFT(text-only prompt of the pruned length)), and
the measured speedup is TTFT(stock) / TTFT(zspa at r).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import itertools
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
from PIL import Image
from tqdm import tqdm
from vllm.benchmarks.lib.endpoint_request_func import (
    RequestFuncInput,
    RequestFuncOutput,
    async_request_openai_chat_completions,
    async_request_openai_completions,
)

from zspa_vllm.testing.servers import VLLM_SERVE, ZSPA_SERVE, start_server, stop_server

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # hf_peer, next to this script
RESULTS = ROOT / "benchmarks" / "results"
PROMPT = "Describe this image in detail."


@dataclass(frozen=True)
class Config:
    name: str
    server: str  # "zspa" or "stock"
    ratio: float | None  # None: stock vLLM, no pruning field sent


def configs(ratios: list[float]) -> list[Config]:
    return [Config("stock vLLM", "stock", None)] + [
        Config(f"zspa r={r:g}", "zspa", r) for r in ratios
    ]


class Images:
    """A distinct smooth random image per request (PNG stays small, decoding realistic)."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size, self.counter = size, seed * 1_000_000

    def next_url(self) -> str:
        self.counter += 1
        rng = np.random.default_rng(self.counter)
        small = (rng.random((12, 12, 3)) * 255).astype("uint8")
        img = Image.fromarray(small).resize((self.size, self.size), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


async def run_cell(
    url: str,
    model: str,
    config: Config,
    concurrency: int,
    n: int,
    images: Images,
    output_len: int,
    pbar: tqdm | None,
) -> dict:
    extra = {"temperature": 0.0}
    if config.ratio is not None:
        extra["prune_ratio"] = config.ratio
    inputs = [
        RequestFuncInput(
            prompt=PROMPT,
            api_url=f"{url}/v1/chat/completions",
            prompt_len=0,
            output_len=output_len,
            model=model,
            multi_modal_content={"type": "image_url", "image_url": {"url": images.next_url()}},
            ignore_eos=True,
            extra_body=extra,
        )
        for _ in range(n)
    ]
    semaphore = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one(x: RequestFuncInput) -> RequestFuncOutput:
            async with semaphore:
                return await async_request_openai_chat_completions(x, session, pbar)

        start = time.perf_counter()
        outputs = await asyncio.gather(*(one(x) for x in inputs))
        wall = time.perf_counter() - start
    failed = [o.error for o in outputs if not o.success]
    if failed:
        raise RuntimeError(f"{len(failed)} of {n} requests failed, e.g.: {failed[0][:500]}")
    ttft = [o.ttft for o in outputs]
    latency = [o.latency for o in outputs]
    return {
        "ttft_p50_s": float(np.percentile(ttft, 50)),
        "ttft_p99_s": float(np.percentile(ttft, 99)),
        "e2e_p50_s": float(np.percentile(latency, 50)),
        "e2e_p99_s": float(np.percentile(latency, 99)),
        "output_tok_per_s": sum(o.output_tokens for o in outputs) / wall,
        "req_per_s": n / wall,
        "prompt_tokens": statistics.median(o.prompt_len for o in outputs),
    }


_TEXT_SEED = itertools.count(1)


async def text_ttft(url: str, model: str, length: int, repeats: int) -> float:
    """Median TTFT of text-only prompts of ``length`` random token ids.

    Every prompt ever sent is new (a fresh seed each call): a repeated one would be served
    from the prefix cache and look like a free prefill.
    """
    rng = random.Random(next(_TEXT_SEED))
    times = []
    async with aiohttp.ClientSession() as session:
        for _ in range(repeats):
            ids = [rng.randrange(10, 300) for _ in range(length)]
            out = await async_request_openai_completions(
                RequestFuncInput(
                    prompt=ids,
                    api_url=f"{url}/v1/completions",
                    prompt_len=length,
                    output_len=1,
                    model=model,
                    ignore_eos=True,
                ),
                session,
            )
            if not out.success:
                raise RuntimeError(out.error[:500])
            times.append(out.ttft)
    return statistics.median(times)


async def unprunable_part(
    url: str, model: str, images: Images, length: int, repeats: int, output_len: int
) -> float:
    """Median over interleaved pairs of (image request TTFT - text-only TTFT, same length).

    Pairs run back to back so that drift cancels within each pair; the difference is
    what pruning cannot shorten (vision tower, projector, image processing).
    """
    image_cfg = Config("stock vLLM", "stock", None)
    diffs = []
    for _ in range(repeats):
        cell = await run_cell(url, model, image_cfg, 1, 1, images, output_len, None)
        diffs.append(cell["ttft_p50_s"] - await text_ttft(url, model, length, 1))
    return statistics.median(diffs)


def amdahl(
    cells: dict,
    url: str,
    model: str,
    ratios: list[float],
    repeats: int,
    images: Images,
    output_len: int,
) -> list[dict]:
    """Measured TTFT speedup over stock vLLM at concurrency 1, against its Amdahl limit.

    ``url`` is the stock server: text-only prompts take the same path on both servers.
    """
    stock = cells[("stock vLLM", 1)]
    full_ttft, full_len = stock["ttft_p50_s"], int(stock["prompt_tokens"])
    fixed = asyncio.run(unprunable_part(url, model, images, full_len, repeats, output_len))
    rows = []
    for r in ratios:
        cell = cells[(f"zspa r={r:g}", 1)]
        pruned_len = int(cell["prompt_tokens"])
        limit = full_ttft / (fixed + asyncio.run(text_ttft(url, model, pruned_len, repeats)))
        measured = full_ttft / cell["ttft_p50_s"]
        rows.append(
            {
                "ratio": r,
                "prompt_tokens": pruned_len,
                "ttft_speedup": measured,
                "amdahl_limit": limit,
                "share_of_limit": measured / limit,
            }
        )
    return [{"unprunable_s": fixed, "unpruned_ttft_s": full_ttft, "prompt_tokens": full_len}, *rows]


def hf_peer_comparison(args: argparse.Namespace, cells: dict, images: Images) -> dict:
    """HF generate with the same pruning, one request at a time, against zspa-serve at
    concurrency 1, in alternating rounds (each round: the same number of requests on each)."""
    import hf_peer

    peer = hf_peer.Peer(args.hf_peer)
    ratio, n = args.hf_peer_ratio, args.hf_peer_requests
    cfg = Config(f"zspa r={ratio:g}", "zspa", ratio)
    best = max(cells[(cfg.name, c)]["req_per_s"] for c in args.concurrency)
    rounds = []
    for rnd in range(args.hf_peer_rounds):
        order = ("zspa", "hf") if rnd % 2 == 0 else ("hf", "zspa")
        got = {}
        for who in order:
            if who == "hf":
                got[who] = peer.measure(ratio, n, args.output_len)
            else:
                cell = run_cell(args.zspa_url, args.model, cfg, 1, n, images, args.output_len, None)
                got[who] = asyncio.run(cell)
        hf, zs = got["hf"], got["zspa"]
        rounds.append(
            {
                "hf": hf,
                "zspa_serve_c1": zs,
                "latency_ratio_hf_over_zspa": hf["e2e_p50_s"] / zs["e2e_p50_s"],
                "ttft_ratio_hf_over_zspa": hf["ttft_p50_s"] / zs["ttft_p50_s"],
                "throughput_ratio_zspa_c1_over_hf": zs["req_per_s"] / hf["req_per_s"],
                "throughput_ratio_zspa_best_over_hf": best / hf["req_per_s"],
            }
        )
    keys = [k for k in rounds[0] if k.endswith("_over_hf") or k.endswith("_over_zspa")]
    return {
        "ratio": ratio,
        "requests_per_round": n,
        "zspa_best_req_per_s": best,
        "rounds": rounds,
        "summary": {k: spread([r[k] for r in rounds]) for k in keys},
    }


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def fmt(s: dict, digits: int = 2, suffix: str = "") -> str:
    """``median [min, max]``: the median over rounds and the range across them."""
    return f"{s['median']:.{digits}f}{suffix} [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"


def per_round(result: dict, key: str, metric: str) -> list[float]:
    return [r[metric] for r in result["rounds"][key]]


def vs_stock(result: dict, cfg: str, c: int, metric: str = "req_per_s") -> dict:
    """Round-by-round ratio to stock (rounds alternate, so round i of each shares conditions)."""
    mine = per_round(result, f"{cfg}@{c}", metric)
    stock = per_round(result, f"stock vLLM@{c}", metric)
    return spread([a / b for a, b in zip(mine, stock, strict=True)])


def claim(s: dict) -> str:
    """A ratio whose range across rounds includes 1 is no claimed difference: marked ~."""
    return ("~" if s["min"] <= 1.0 <= s["max"] else "") + fmt(s, 2, "x")


def median_over_rounds(samples: list[dict]) -> dict:
    return {k: statistics.median(s[k] for s in samples) for k in samples[0]}


def environment() -> dict:
    import torch
    import vllm

    def sha() -> str:
        try:
            return subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        device = f"CPU: {cpu}, {os.cpu_count()} cores"
    return {
        "git_sha": sha(),
        "vllm": vllm.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def launch(model_dir: Path, log_dir: Path) -> tuple[list[subprocess.Popen], str, str]:
    """Both servers on the CPU benchmark model: zspa-serve and stock vLLM (ZSPA_DISABLE=1)."""
    common = ("--served-model-name", "bench", "--max-num-seqs", "64")
    env = {"VLLM_CPU_KVCACHE_SPACE": "2"}
    zspa, zspa_url = start_server(
        str(model_dir), log_dir / "zspa.log", *common, launcher=ZSPA_SERVE, env=env
    )
    stock, stock_url = start_server(
        str(model_dir),
        log_dir / "stock.log",
        *common,
        launcher=VLLM_SERVE,
        env=env | {"ZSPA_DISABLE": "1"},
    )
    return [zspa, stock], zspa_url, stock_url


def markdown(result: dict) -> str:
    rounds = result["args"]["rounds"]
    lines = [
        f"# Serving benchmark ({result['env']['device']})",
        "",
        f"vLLM {result['env']['vllm']}, torch {result['env']['torch']}, git "
        f"{result['env']['git_sha'][:10]}, {result['env']['time']}; model `{result['model']}`"
        + (f" ({launched} CPU benchmark model)" if (launched := result["args"]["launch"]) else "")
        + "; "
        f"{result['args']['output_len']} output tokens per request, "
        f"{rounds} alternating rounds. Each value: median over rounds [min, max across rounds]; "
        "ratios to stock are taken round by round. A ratio marked ~ has a range that includes "
        "1.00x: no difference is claimed there.",
        "",
        "| concurrency | stock vLLM req/s | "
        + " | ".join(c for c in result["configs"] if c != "stock vLLM")
        + " |",
        "|---" * len(result["configs"]) + "|---|",
    ]
    for c in result["args"]["concurrency"]:
        stock = spread(per_round(result, f"stock vLLM@{c}", "req_per_s"))
        row = [str(c), fmt(stock)]
        row += [claim(vs_stock(result, cfg, c)) for cfg in result["configs"] if cfg != "stock vLLM"]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "| concurrency | config | prompt tokens | TTFT p50 (s) | TTFT p99 (s) | e2e p50 (s) "
        "| e2e p99 (s) | output tok/s | req/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["args"]["concurrency"]:
        for cfg in result["configs"]:
            key = f"{cfg}@{c}"
            m = result["cells"][key]
            col = {k: spread(per_round(result, key, k)) for k in m}
            lines.append(
                f"| {c} | {cfg} | {m['prompt_tokens']:.0f} | {fmt(col['ttft_p50_s'], 3)} "
                f"| {fmt(col['ttft_p99_s'], 3)} | {fmt(col['e2e_p50_s'], 3)} "
                f"| {fmt(col['e2e_p99_s'], 3)} | {fmt(col['output_tok_per_s'], 1)} "
                f"| {fmt(col['req_per_s'])} |"
            )
    fixed, *rows = result["amdahl"]
    lines += [
        "",
        "TTFT speedup at concurrency 1 against the Amdahl limit (unprunable part "
        f"{fixed['unprunable_s'] * 1000:.1f} ms of {fixed['unpruned_ttft_s'] * 1000:.1f} ms; the "
        "limit from medians, the speedup also round by round):",
        "",
        "| ratio | prompt tokens | TTFT speedup (median of rounds) | round by round | "
        "Amdahl limit | share of limit |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        stock_ttft = per_round(result, "stock vLLM@1", "ttft_p50_s")
        mine = per_round(result, f"zspa r={r['ratio']:g}@1", "ttft_p50_s")
        by_round = spread([a / b for a, b in zip(stock_ttft, mine, strict=True)])
        lines.append(
            f"| {r['ratio']:g} | {r['prompt_tokens']} | {r['ttft_speedup']:.2f}x "
            f"| {fmt(by_round, 2, 'x')} | {r['amdahl_limit']:.2f}x | {r['share_of_limit']:.0%} |"
        )
    if peer := result.get("hf_peer"):
        summary, n_rounds = peer["summary"], len(peer["rounds"])
        hf = spread([r["hf"]["e2e_p50_s"] for r in peer["rounds"]])
        zs = spread([r["zspa_serve_c1"]["e2e_p50_s"] for r in peer["rounds"]])
        hf_ttft = spread([r["hf"]["ttft_p50_s"] for r in peer["rounds"]])
        zs_ttft = spread([r["zspa_serve_c1"]["ttft_p50_s"] for r in peer["rounds"]])
        hf_rps = spread([r["hf"]["req_per_s"] for r in peer["rounds"]])
        zs_rps = spread([r["zspa_serve_c1"]["req_per_s"] for r in peer["rounds"]])
        lines += [
            "",
            f"Research-code path (HF transformers generate, same pruning at r={peer['ratio']:g}, "
            f"one request at a time) against zspa-serve at concurrency 1, {n_rounds} alternating "
            f"rounds of {peer['requests_per_round']} requests each, same model and machine:",
            "",
            "| path | TTFT p50 (s) | e2e p50 (s) | req/s |",
            "|---|---|---|---|",
            f"| HF generate | {fmt(hf_ttft, 3)} | {fmt(hf, 3)} | {fmt(hf_rps)} |",
            f"| zspa-serve, concurrency 1 | {fmt(zs_ttft, 3)} | {fmt(zs, 3)} | {fmt(zs_rps)} |",
            "",
            "| ratio, round by round | median [min, max] |",
            "|---|---|",
            f"| HF / zspa-serve single-request latency | "
            f"{claim(summary['latency_ratio_hf_over_zspa'])} |",
            f"| HF / zspa-serve TTFT | {claim(summary['ttft_ratio_hf_over_zspa'])} |",
            f"| zspa-serve / HF req/s, both one at a time | "
            f"{claim(summary['throughput_ratio_zspa_c1_over_hf'])} |",
            f"| zspa-serve's best req/s (any concurrency, {peer['zspa_best_req_per_s']:.2f}) / HF "
            f"| {claim(summary['throughput_ratio_zspa_best_over_hf'])} |",
        ]
    return "\n".join(lines) + "\n"


def plots(result: dict, stem: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    conc = result["args"]["concurrency"]
    for metric, label in (
        ("ttft_p50_s", "TTFT p50 (s)"),
        ("req_per_s", "requests / s"),
        ("e2e_p99_s", "end-to-end latency p99 (s)"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        for cfg in result["configs"]:
            ax.plot(
                conc,
                [result["cells"][f"{cfg}@{c}"][metric] for c in conc],
                marker="o",
                label=cfg,
                linestyle="--" if cfg.startswith("stock") else "-",
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(conc, [str(c) for c in conc])
        ax.set_xlabel("concurrency")
        ax.set_ylabel(label)
        ax.set_title(f"{label}: {result['model']}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        path = stem.with_name(f"{stem.name}-{metric}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--launch",
        nargs="?",
        const="llava",
        choices=["llava", "qwen2_5_vl"],
        help="build the CPU benchmark model of this architecture (default llava) and start "
        "both servers here",
    )
    parser.add_argument("--zspa-url")
    parser.add_argument("--stock-url")
    parser.add_argument("--model", default="bench", help="served model name")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.5, 0.75, 0.9])
    parser.add_argument(
        "--requests",
        type=int,
        default=0,
        help="requests per cell (default: max(8, 2 x concurrency))",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output-len", type=int, default=16)
    parser.add_argument(
        "--image-size", type=int, help="square image side (default 336; 896 for qwen2_5_vl)"
    )
    parser.add_argument("--amdahl-repeats", type=int, default=15)
    parser.add_argument(
        "--hf-peer",
        metavar="MODEL_DIR",
        help="also run the research-code path (HF generate + the same pruning) on this local "
        "checkpoint; --launch uses the benchmark model",
    )
    parser.add_argument("--hf-peer-ratio", type=float, default=0.75)
    parser.add_argument("--hf-peer-rounds", type=int, default=5)
    parser.add_argument("--hf-peer-requests", type=int, default=12, help="per round and path")
    parser.add_argument(
        "--render",
        metavar="JSON",
        help="only rewrite the markdown table and plots of an earlier result file",
    )
    parser.add_argument("--out", help="results path stem (default results/serve_bench[_ARCH])")
    args = parser.parse_args()
    if args.render:
        result = json.loads(Path(args.render).read_text())
        write(result, Path(args.render).with_suffix(""))
        return
    qwen = args.launch == "qwen2_5_vl"
    args.image_size = args.image_size or (896 if qwen else 336)
    args.out = args.out or str(RESULTS / ("serve_bench_qwen2_5_vl" if qwen else "serve_bench"))
    if 0.0 not in args.ratios:
        parser.error("--ratios must include 0 (the overhead and Amdahl baselines)")

    procs: list[subprocess.Popen] = []
    if args.launch:
        from zspa_vllm.testing.tiny_llava import build_tiny_llava
        from zspa_vllm.testing.tiny_qwen_vl import build_tiny_qwen_vl

        work = Path(os.environ.get("ZSPA_BENCH_DIR", "/tmp/zspa-bench"))
        model_dir = work / f"bench-{args.launch}"
        if not (model_dir / "config.json").exists():
            if qwen:
                build_tiny_qwen_vl(model_dir, variant="qwen2_5_vl", scale="bench")
            else:
                build_tiny_llava(model_dir, scale="bench")
        procs, args.zspa_url, args.stock_url = launch(model_dir, work)
        # The research-code peer (hf_peer.py) is written for LLaVA.
        args.hf_peer = args.hf_peer or (None if qwen else str(model_dir))
    elif not (args.zspa_url and args.stock_url):
        parser.error("give --zspa-url and --stock-url, or --launch")

    try:
        urls = {"zspa": args.zspa_url, "stock": args.stock_url}
        cfgs = configs(args.ratios)
        images = Images(args.image_size)
        per_cell = {c: args.requests or max(8, 2 * c) for c in args.concurrency}
        total = args.rounds * len(cfgs) * sum(per_cell.values())
        for cfg in cfgs:  # warm-up: compile paths, fill allocator pools
            asyncio.run(
                run_cell(
                    urls[cfg.server],
                    args.model,
                    cfg,
                    2,
                    4,
                    images,
                    args.output_len,
                    None,
                )
            )
        samples: dict[tuple[str, int], list[dict]] = {}
        with tqdm(total=total, desc="requests", unit="req") as pbar:
            for rnd in range(args.rounds):
                for c in args.concurrency:
                    for cfg in cfgs if rnd % 2 == 0 else cfgs[::-1]:
                        pbar.set_postfix_str(f"round {rnd + 1}, c={c}, {cfg.name}")
                        cell = asyncio.run(
                            run_cell(
                                urls[cfg.server],
                                args.model,
                                cfg,
                                c,
                                per_cell[c],
                                images,
                                args.output_len,
                                pbar,
                            )
                        )
                        samples.setdefault((cfg.name, c), []).append(cell)
        cells = {k: median_over_rounds(v) for k, v in samples.items()}
        result = {
            "env": environment(),
            "model": args.model,
            "args": vars(args),
            "configs": [c.name for c in cfgs],
            "cells": {f"{name}@{c}": m for (name, c), m in cells.items()},
            "rounds": {f"{name}@{c}": v for (name, c), v in samples.items()},
            "amdahl": amdahl(
                cells,
                args.stock_url,
                args.model,
                args.ratios,
                args.amdahl_repeats,
                images,
                args.output_len,
            ),
        }
        if args.hf_peer and args.hf_peer_ratio in args.ratios:
            result["hf_peer"] = hf_peer_comparison(args, cells, images)
    finally:
        for proc in procs:
            stop_server(proc)

    stem = Path(args.out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    write(result, stem)


def write(result: dict, stem: Path) -> None:
    table = markdown(result)
    stem.with_suffix(".md").write_text(table)
    for path in plots(result, stem):
        print(path)
    print(table)


if __name__ == "__main__":
    main()
