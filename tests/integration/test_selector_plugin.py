"""A third-party selector (README's example, installed through its entry point) in the real
engine: the method and its own option travel per item from the request to the worker."""

from __future__ import annotations

import json

import pytest

from tests.support import selector_plugin
from tests.support.engine import run_fresh

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

IMAGE_TOKEN_ID = 4  # <image> in the tiny tokenizer (tiny_llava.py)


def test_plugin_selector_runs_in_the_worker_with_per_item_options(tiny_llava, tmp_path):
    site = selector_plugin.install(tmp_path / "site")
    log = tmp_path / "calls.jsonl"
    reqs = [
        [2, {"prune_ratio": 0.5, "prune_method": "window_recorded", "prune_window_offset": 1.0}],
        [3, {"prune_ratio": 0.75, "prune_method": "window_recorded"}],  # option's default: 0
        [4, {"prune_ratio": 0.5}],  # zspa, in the same engine step
    ]
    env = selector_plugin.env(site) | {selector_plugin.LOG_ENV: str(log)}
    prompts = run_fresh(
        selector_plugin.generate_prompts, {"model": tiny_llava, "requests": reqs}, env
    )
    assert [sum(t == IMAGE_TOKEN_ID for t in ids) for ids in prompts] == [288, 144, 288]
    calls = sorted(json.loads(line) for line in log.read_text().splitlines())
    # [N, keep, window_offset, prompt rows, kept]: both items, each with its own option.
    assert [c[:3] for c in calls] == [[576, 144, 0.0], [576, 288, 1.0]]
    assert all(c[3] > 0 for c in calls)  # the prompt's text embeddings reached it
    assert calls[0][4] == list(range(144)) and calls[1][4] == list(range(288, 576))
