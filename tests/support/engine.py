"""The real vLLM engine in tests: engine options, requests, and fresh processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

PROMPT = "USER: <image>\n{q} ASSISTANT:"


ROOT = Path(__file__).resolve().parents[2]


def fresh_process(target: Callable, payload: object, env: dict | None = None):
    """``tests.support.fresh`` running ``target(payload)``; the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "tests.support.fresh", f"{target.__module__}:{target.__name__}",
         json.dumps(payload)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=os.environ | (env or {}),
        timeout=600,
    )  # fmt: skip


def run_fresh(target: Callable, payload: object, env: dict | None = None) -> object:
    """``target(payload)`` in a fresh Python process (the plugin registers once per process),
    with this checkout importable; returns its result."""
    from tests.support.fresh import PREFIX

    proc = fresh_process(target, payload, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith(PREFIX))
    return json.loads(line[len(PREFIX) :])


def start_engine(payload: dict) -> None:
    """For ``fresh_process``: build an engine from ``{"path": model dir, **engine overrides}``."""
    from vllm import LLM

    LLM(**engine_kwargs(**payload))


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


def tower_probe(model, tower: str, budget: int | None) -> int:
    """For ``llm.apply_model``: set the encoder budget and count calls of ``model.<tower>``
    (``budget=None``: undo both and return the count)."""
    module = getattr(model, tower)
    if budget is not None:
        model._probe = (model._zspa_encoder_budget, [])
        model._zspa_encoder_budget = budget
        original = module.forward
        module.forward = lambda *a, **k: model._probe[1].append(1) or original(*a, **k)
        return 0
    del module.forward  # back to the class's method
    model._zspa_encoder_budget, calls = model._probe
    return len(calls)


def tower_record(model, tower: str, on: bool) -> list:
    """For ``llm.apply_model``: record the outputs of ``model.<tower>`` from now on
    (``on=False``: stop, and return them, one per call)."""
    module = getattr(model, tower)
    if on:
        model._records = []
        original = module.forward
        module.forward = lambda *a, **k: (
            model._records.append(original(*a, **k)) or model._records[-1]
        )
        return []
    del module.forward  # back to the class's method
    return [r.detach().clone() for r in model._records]
