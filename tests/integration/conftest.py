"""One real vLLM engine (CPU build, in-process) on a tiny random-weight LLaVA."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

# Before vLLM is imported: one process (no engine-core / worker spawn, ~4 s start-up)
# and nothing may try the model hub.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

PROMPT = "USER: <image>\n{q} ASSISTANT:"


def run_fresh(body: str, payload: object, env: dict | None = None) -> object:
    """Run ``body`` in a fresh Python process (the plugin registers once per process) with
    this checkout importable and ``payload`` as JSON in ``sys.argv[1]``; ``body`` prints
    one line ``RESULT<json>``, which is returned parsed."""
    code = f"import sys\nsys.path.insert(0, {os.getcwd()!r})\n{body}"
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(payload)],
        capture_output=True,
        text=True,
        env=os.environ | (env or {}),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


def engine_kwargs(path: str, **overrides) -> dict:
    return (
        {
            "model": path,
            "dtype": "float32",
            "enforce_eager": True,
            "distributed_executor_backend": "uni",
            "max_model_len": 2048,
            "seed": 0,
            "enable_prefix_caching": True,
            "limit_mm_per_prompt": {"image": 4},
        }
        | json.loads(os.environ.get("ZSPA_TEST_ENGINE_OVERRIDES", "{}"))
        | overrides
    )


@pytest.fixture(scope="session")
def llm(tiny_llava):
    from vllm import LLM

    engine = LLM(**engine_kwargs(tiny_llava))
    yield engine
    del engine


def image(seed: int, size: int = 336) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(size, size, 3) * 255).astype("uint8"))


def request(question: str, *images: Image.Image, **prune) -> dict:
    placeholders = "".join("<image>" for _ in images)
    return {
        "prompt": f"USER: {placeholders}\n{question} ASSISTANT:",
        "multi_modal_data": {"image": list(images)} if images else {},
        "mm_processor_kwargs": prune,
    }


def greedy(n: int = 4, logprobs: int = 5):
    from vllm import SamplingParams

    return SamplingParams(max_tokens=n, temperature=0.0, logprobs=logprobs)


@pytest.fixture(scope="session")
def siglip_llm(tiny_llava_siglip):
    # Session-scoped like every in-process engine here: shutting one down tears down
    # vLLM's global parallel groups under the others.
    from vllm import LLM

    engine = LLM(**engine_kwargs(tiny_llava_siglip))
    yield engine
    del engine


_qwen_engines: dict = {}


@pytest.fixture(scope="session")
def qwen(tiny_qwen_vl):
    """(variant, path, engine): one in-process engine per Qwen variant, kept for the session
    (shutting one down tears down vLLM's global parallel groups under the others)."""
    from vllm import LLM

    variant, path = tiny_qwen_vl
    if variant not in _qwen_engines:
        _qwen_engines[variant] = LLM(
            **engine_kwargs(path, limit_mm_per_prompt={"image": 4, "video": 2})
        )
    return variant, path, _qwen_engines[variant]
