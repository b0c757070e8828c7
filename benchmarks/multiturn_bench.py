"""Multi-turn chat benchmark: TTFT and prefix-cache hit rate per turn, zspa-serve vs stock vLLM.

    .venv/bin/python benchmarks/multiturn_bench.py --launch      # CPU benchmark model, both servers
    .venv/bin/python benchmarks/multiturn_bench.py --model M --zspa-url URL --stock-url URL

Each conversation puts an image in its first user message and asks ``--turns - 1`` text
follow-ups; every turn sends the whole history (as chat clients do), streamed, with
``--output-len`` generated tokens. ``--conversations`` conversations run concurrently and in
lockstep, turn by turn, so vLLM's own prefix-cache counters (``vllm:prefix_cache_hits`` /
``_queries``), read between turns, give each turn's hit rate. Configurations: stock vLLM,
zspa-serve at each ratio with the default ``prune_scope`` (turn), and zspa-serve at
``--prompt-scope-ratio`` with ``prune_scope=prompt`` (the rule before turn scopes). Every
conversation has its own image. Configurations alternate within a round and run in reverse
order every other round; the tables give the median over rounds and [min, max] across them.
Results: ``benchmarks/results/multiturn_bench.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from openai import AsyncOpenAI

sys.path.insert(0, str(Path(__file__).parent))  # serve_bench, next to this script

from serve_bench import RESULTS, Images, environment, launch

from zspa_vllm.testing.servers import stop_server

FIRST = "Describe this image in detail."
FOLLOW_UPS = [
    "What colours stand out?",
    "Is there any text in it?",
    "What would you look at first?",
    "Summarise it in one sentence.",
]


@dataclass(frozen=True)
class Config:
    name: str
    server: str  # "zspa" or "stock"
    extra: dict  # pruning fields sent with every request


def configs(ratios: list[float], prompt_scope_ratio: float | None) -> list[Config]:
    out = [Config("stock vLLM", "stock", {})]
    out += [Config(f"zspa r={r:g}", "zspa", {"prune_ratio": r}) for r in ratios]
    if prompt_scope_ratio is not None:
        out.append(
            Config(
                f"zspa r={prompt_scope_ratio:g} scope=prompt",
                "zspa",
                {"prune_ratio": prompt_scope_ratio, "prune_scope": "prompt"},
            )
        )
    return out


def prefix_counters(url: str) -> tuple[float, float]:
    """(hits, queries) of vLLM's prefix cache, summed over engines."""
    from prometheus_client.parser import text_string_to_metric_families

    totals = {"vllm:prefix_cache_hits_total": 0.0, "vllm:prefix_cache_queries_total": 0.0}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text):
        for s in family.samples:
            if s.name in totals:
                totals[s.name] += s.value
    return totals["vllm:prefix_cache_hits_total"], totals["vllm:prefix_cache_queries_total"]


async def one_turn(client: AsyncOpenAI, model: str, messages, extra, output_len) -> tuple:
    """(TTFT seconds, reply text, prompt tokens) of one streamed chat completion."""
    start = time.perf_counter()
    ttft, parts, prompt_tokens = None, [], 0
    stream = await client.chat.completions.create(
        model=model, messages=messages, max_tokens=output_len, temperature=0.0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True, **extra},
    )  # fmt: skip
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content is not None and ttft is None:
            ttft = time.perf_counter() - start
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            prompt_tokens = chunk.usage.prompt_tokens
    if ttft is None:
        raise RuntimeError("stream ended without a token")
    return ttft, "".join(parts), prompt_tokens


async def run_config(url, model, cfg: Config, args, images: Images) -> list[dict]:
    """One pass: ``args.conversations`` chats in lockstep; one dict per turn."""
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="EMPTY", max_retries=0)
    chats = [
        [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": images.next_url()}},
                    {"type": "text", "text": FIRST},
                ],
            }
        ]
        for _ in range(args.conversations)
    ]
    turns = []
    for t in range(args.turns):
        hits0, queries0 = prefix_counters(url)
        results = await asyncio.gather(
            *(one_turn(client, model, c, cfg.extra, args.output_len) for c in chats)
        )
        hits1, queries1 = prefix_counters(url)
        turns.append(
            {
                "turn": t + 1,
                "ttft_p50_s": statistics.median(r[0] for r in results),
                "prompt_tokens": statistics.median(r[2] for r in results),
                "prefix_hit_rate": (hits1 - hits0) / max(1.0, queries1 - queries0),
            }
        )
        question = FOLLOW_UPS[t % len(FOLLOW_UPS)]
        for chat, (_, reply, _) in zip(chats, results, strict=True):
            chat += [{"role": "assistant", "content": reply}, {"role": "user", "content": question}]
    await client.close()
    return turns


def summarise(rounds: list[list[dict]]) -> list[dict]:
    """Per turn: median over rounds and [min, max] of TTFT and hit rate."""
    out = []
    for per_turn in zip(*rounds, strict=True):
        row = {"turn": per_turn[0]["turn"], "prompt_tokens": per_turn[0]["prompt_tokens"]}
        for key in ("ttft_p50_s", "prefix_hit_rate"):
            values = [r[key] for r in per_turn]
            row[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        out.append(row)
    return out


def markdown(result: dict) -> str:
    turns = range(1, result["args"]["turns"] + 1)
    head = " | ".join(f"turn {t}" for t in turns)
    lines = [
        f"# Multi-turn chats ({result['env']['device']}): image in turn 1, "
        f"{result['args']['conversations']} concurrent conversations, "
        f"{result['args']['rounds']} rounds",
        "",
        "TTFT p50 in ms, median over rounds [min, max]:",
        "",
        f"| config | {head} |",
        "|---|" + "---|" * len(turns),
    ]
    for name, rows in result["configs"].items():
        cells = [
            f"{r['ttft_p50_s']['median'] * 1e3:.0f} "
            f"[{r['ttft_p50_s']['min'] * 1e3:.0f}, {r['ttft_p50_s']['max'] * 1e3:.0f}]"
            for r in rows
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Prefix-cache hit rate (vLLM's counters), median over rounds:", ""]
    lines += [f"| config | {head} |", "|---|" + "---|" * len(turns)]
    for name, rows in result["configs"].items():
        cells = [f"{r['prefix_hit_rate']['median']:.0%}" for r in rows]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Prompt tokens per turn (median):", ""]
    lines += [f"| config | {head} |", "|---|" + "---|" * len(turns)]
    for name, rows in result["configs"].items():
        lines.append(f"| {name} | " + " | ".join(f"{r['prompt_tokens']:.0f}" for r in rows) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--launch", action="store_true", help="CPU benchmark model, both servers")
    parser.add_argument("--zspa-url")
    parser.add_argument("--stock-url")
    parser.add_argument("--model", default="bench", help="served model name")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.5, 0.75, 0.9])
    parser.add_argument("--prompt-scope-ratio", type=float, default=0.75)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--conversations", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output-len", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=336)
    parser.add_argument("--out", default=str(RESULTS / "multiturn_bench"))
    args = parser.parse_args()

    procs: list[subprocess.Popen] = []
    if args.launch:
        from zspa_vllm.testing.tiny_llava import build_tiny_llava

        work = Path(os.environ.get("ZSPA_BENCH_DIR", "/tmp/zspa-bench"))
        model_dir = work / "bench-llava"
        if not (model_dir / "config.json").exists():
            build_tiny_llava(model_dir, scale="bench")
        procs, args.zspa_url, args.stock_url = launch(model_dir, work)
    elif not (args.zspa_url and args.stock_url):
        parser.error("give --zspa-url and --stock-url, or --launch")
    try:
        urls = {"zspa": args.zspa_url, "stock": args.stock_url}
        cfgs = configs(args.ratios, args.prompt_scope_ratio)
        images = Images(args.image_size, seed=7)
        for cfg in cfgs:  # warm-up: compile paths, fill allocator pools
            asyncio.run(run_config(urls[cfg.server], args.model, cfg, _small(args), images))
        rounds: dict[str, list] = {c.name: [] for c in cfgs}
        for rnd in range(args.rounds):
            for cfg in cfgs if rnd % 2 == 0 else cfgs[::-1]:
                turns = asyncio.run(run_config(urls[cfg.server], args.model, cfg, args, images))
                rounds[cfg.name].append(turns)
                print(f"round {rnd + 1} {cfg.name}: " + ", ".join(
                    f"t{r['turn']} {r['ttft_p50_s'] * 1e3:.0f} ms {r['prefix_hit_rate']:.0%}"
                    for r in turns
                ), flush=True)  # fmt: skip
    finally:
        for proc in procs:
            stop_server(proc)
    result = {
        "env": environment(),
        "args": vars(args),
        "configs": {name: summarise(r) for name, r in rounds.items()},
        "rounds": rounds,
    }
    stem = Path(args.out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    stem.with_suffix(".md").write_text(table)
    print(table)


def _small(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(**(vars(args) | {"conversations": 2, "turns": 2, "output_len": 2}))


if __name__ == "__main__":
    main()
