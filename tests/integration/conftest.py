"""In-process vLLM engines (CPU build) on tiny random-weight models, one per session.
Helpers shared with other test packages live in ``tests.support``."""

from __future__ import annotations

import os

import pytest

from tests.support.engine import engine_kwargs

# Before vLLM is imported: one process (no engine-core / worker spawn, ~4 s start-up)
# and nothing may try the model hub.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def llm(tiny_llava):
    from vllm import LLM

    engine = LLM(**engine_kwargs(tiny_llava))
    yield engine
    del engine


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
