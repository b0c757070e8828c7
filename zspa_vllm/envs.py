"""Environment variables read by the plugin (read here only, at call time)."""

from __future__ import annotations

import os

DISABLE = "ZSPA_DISABLE"
"""Set to 1/true/yes to make ``register()`` a no-op: vLLM then runs stock LLaVA."""

SELECT_BACKEND = "ZSPA_SELECT_BACKEND"
"""How the greedy selectors run: ``auto`` (default: the one-launch Triton kernel on CUDA
tensors, the torch loop elsewhere), ``torch`` (always the loop) or ``triton`` (the kernel
wherever it fits, CPU tensors included: with ``TRITON_INTERPRET=1`` that is how the tests
run it without a GPU)."""
SELECT_BACKENDS = ("auto", "torch", "triton")


def plugin_disabled() -> bool:
    return os.environ.get(DISABLE, "").strip().lower() in {"1", "true", "yes", "on"}


def select_backend() -> str:
    value = os.environ.get(SELECT_BACKEND, "auto").strip().lower() or "auto"
    if value not in SELECT_BACKENDS:
        raise ValueError(f"{SELECT_BACKEND} must be one of {list(SELECT_BACKENDS)}, got {value!r}")
    return value
