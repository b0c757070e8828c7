"""Soak test: a bounded stream of mixed requests against one zspa-serve, on loopback only.

    .venv/bin/python benchmarks/soak.py --launch                      # tiny LLaVA, 3000 requests
    .venv/bin/python benchmarks/soak.py --url http://127.0.0.1:8000 --model M --pid PID

Every request draws, at random (seeded): a prune ratio (0 / 0.5 / 0.75 / 0.9), a method, streamed
or not, an image from a small pool (repeats: caches hit) or a new one (caches fill), and, for a
share of streams, a client that disconnects after the first chunk. It stops at ``--requests`` or
``--max-seconds``, whichever comes first. Reported: errors (any non-2xx or broken response that the
client did not cause), latency percentiles of completed requests, the resident memory of the
server's whole process tree sampled every second, and, after the load, whether vLLM's own gauges
show every request gone (running and waiting back to 0, KV-cache usage back to 0: disconnected
streams were aborted and their blocks freed). Results: ``benchmarks/results/soak.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
from openai import AsyncOpenAI
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zspa_vllm.pruning import METHODS  # noqa: E402
from zspa_vllm.testing.servers import start_server, stop_server  # noqa: E402

RATIOS = [0.0, 0.5, 0.75, 0.9]


def image_url(seed: int) -> str:
    rng = np.random.default_rng(seed)
    small = (rng.random((12, 12, 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(small).resize((336, 336), Image.BICUBIC).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class RssSampler(threading.Thread):
    """RSS (MiB) of a process and all its descendants, once per ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.root, self.interval, self.samples = psutil.Process(pid), interval, []
        self._halt = threading.Event()
        self._t0 = time.perf_counter()

    def rss_mib(self) -> float:
        total = 0
        for p in [self.root, *self.root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):  # a child may exit between the two calls
                total += p.memory_info().rss
        return total / 2**20

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.samples.append((time.perf_counter() - self._t0, self.rss_mib()))

    def stop(self) -> list[tuple[float, float]]:
        self._halt.set()
        self.join()
        return self.samples


def gauges(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    want = {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"}
    out = dict.fromkeys(want, 0.0)
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text):
        for s in family.samples:
            if s.name in want:
                out[s.name] += s.value
    return out


async def one(client: AsyncOpenAI, model: str, rng: random.Random, pool: list[str], seq: int):
    """Send one random request; returns (kind, seconds or None, error or None)."""
    ratio, method = rng.choice(RATIOS), rng.choice(sorted(METHODS))
    stream, disconnect = rng.random() < 0.5, False
    if stream:
        disconnect = rng.random() < 0.25
    url = rng.choice(pool) if rng.random() < 0.5 else image_url(10_000 + seq)
    kwargs = dict(
        model=model,
        max_tokens=rng.choice([1, 4, 16]),
        temperature=0.0,
        messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": rng.choice(["what is this?", "describe it", "colours?"])},
        ]}],
        extra_body={"prune_ratio": ratio, "prune_method": method},
    )  # fmt: skip
    start = time.perf_counter()
    try:
        if stream:
            response = await client.chat.completions.create(stream=True, **kwargs)
            async for _ in response:
                if disconnect:
                    await response.close()  # the client walks away mid-stream
                    return "disconnect", None, None
            return "stream", time.perf_counter() - start, None
        reply = await client.chat.completions.create(**kwargs)
        if not reply.choices:
            return "plain", None, "no choices in a 200 response"
        return "plain", time.perf_counter() - start, None
    except Exception as exc:  # any error the client did not cause is a failure
        return "stream" if stream else "plain", None, f"{type(exc).__name__}: {exc}"[:300]


async def drive(url: str, model: str, args) -> list[tuple]:
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="EMPTY", max_retries=0, timeout=600)
    rng = random.Random(args.seed)
    pool = [image_url(s) for s in range(args.pool)]
    semaphore = asyncio.Semaphore(args.concurrency)
    deadline = time.perf_counter() + args.max_seconds
    results: list[tuple] = []

    async def worker(seq: int) -> None:
        async with semaphore:
            if time.perf_counter() < deadline:
                results.append(await one(client, model, random.Random(rng.random()), pool, seq))

    await asyncio.gather(*(worker(i) for i in range(args.requests)))
    await client.close()
    return results


def settle(url: str, timeout_s: float = 60.0) -> dict[str, float]:
    """vLLM's gauges once the engine has no request left (or after ``timeout_s``)."""
    end = time.perf_counter() + timeout_s
    while True:
        g = gauges(url)
        idle = g["vllm:num_requests_running"] == 0 and g["vllm:num_requests_waiting"] == 0
        if (idle and g["vllm:kv_cache_usage_perc"] == 0) or time.perf_counter() > end:
            return g
        time.sleep(1.0)


def markdown(result: dict) -> str:
    s = result["summary"]
    return (
        "\n".join(
            [
                f"# Soak: {s['requests']} requests in {s['seconds']:.0f} s, concurrency "
                f"{result['args']['concurrency']}",
                "",
                "| completed | disconnected on purpose | errors | latency p50 / p99 (s) "
                "| RSS start / max / end (MiB) | gauges after (running, waiting, KV %) |",
                "|---|---|---|---|---|---|",
                f"| {s['completed']} | {s['disconnected']} | {s['errors']} | "
                f"{s['latency_p50_s']:.2f} / {s['latency_p99_s']:.2f} | "
                f"{s['rss_start_mib']:.0f} / {s['rss_max_mib']:.0f} / {s['rss_end_mib']:.0f} | "
                f"{s['running_after']:.0f}, {s['waiting_after']:.0f}, {s['kv_usage_after']:.1%} |",
            ]
        )
        + "\n"
    )


def plot(samples: list, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([t for t, _ in samples], [m for _, m in samples])
    ax.set_xlabel("seconds")
    ax.set_ylabel("RSS of the server process tree (MiB)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--launch", action="store_true", help="start zspa-serve on a tiny LLaVA")
    parser.add_argument("--url")
    parser.add_argument("--model")
    parser.add_argument("--pid", type=int, help="server process whose tree RSS is sampled")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--max-seconds", type=float, default=1800)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--pool", type=int, default=8, help="images that repeat")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mm-cache-gb", type=float, default=0.25, help="--launch only")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/soak"))
    args = parser.parse_args()

    proc = None
    if args.launch:
        from zspa_vllm.testing.tiny_llava import build_tiny_llava

        work = Path(os.environ.get("ZSPA_BENCH_DIR", "/tmp/zspa-soak"))
        model = work / "tiny-llava"
        if not (model / "config.json").exists():
            build_tiny_llava(model)
        proc, args.url = start_server(
            str(model), work / "serve.log", "--mm-processor-cache-gb", str(args.mm_cache_gb)
        )
        args.model, args.pid = str(model), proc.pid
    elif not (args.url and args.model and args.pid):
        parser.error("give --launch, or --url, --model and --pid")
    try:
        sampler = RssSampler(args.pid)
        rss_start = sampler.rss_mib()
        sampler.start()
        t0 = time.perf_counter()
        results = asyncio.run(drive(args.url, args.model, args))
        seconds = time.perf_counter() - t0
        after = settle(args.url)
        samples = sampler.stop()
    finally:
        if proc is not None:
            stop_server(proc)
    latencies = sorted(r[1] for r in results if r[1] is not None)
    errors = [r[2] for r in results if r[2]]
    summary = {
        "requests": len(results),
        "seconds": seconds,
        "completed": len(latencies),
        "disconnected": sum(r[0] == "disconnect" for r in results),
        "errors": len(errors),
        "error_examples": errors[:5],
        "latency_p50_s": statistics.median(latencies) if latencies else float("nan"),
        "latency_p99_s": float(np.percentile(latencies, 99)) if latencies else float("nan"),
        "rss_start_mib": rss_start,
        "rss_max_mib": max((m for _, m in samples), default=rss_start),
        "rss_end_mib": samples[-1][1] if samples else rss_start,
        "running_after": after["vllm:num_requests_running"],
        "waiting_after": after["vllm:num_requests_waiting"],
        "kv_usage_after": after["vllm:kv_cache_usage_perc"],
    }
    result = {"args": vars(args), "summary": summary, "rss_mib": samples}
    stem = Path(args.out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    plot(samples, stem.with_suffix(".png"), f"soak: {summary['requests']} mixed requests")
    print(markdown(result))
    if errors:
        sys.exit(f"soak.py: {len(errors)} errors, e.g. {errors[0]}")


if __name__ == "__main__":
    main()
