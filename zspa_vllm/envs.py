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

GRAM_MAX_MIB = "ZSPA_GRAM_MAX_MIB"
"""Bound, in MiB, on the float32 Gram matrices of one kernel launch (default 256: one
8192-token image). Raise it (e.g. 1024) to let 16384-token videos take the kernel; the
bound is reserved in vLLM's memory profiling either way (``seam/worker.warm_up``)."""


def plugin_disabled() -> bool:
    return os.environ.get(DISABLE, "").strip().lower() in {"1", "true", "yes", "on"}


def select_backend() -> str:
    value = os.environ.get(SELECT_BACKEND, "auto").strip().lower() or "auto"
    if value not in SELECT_BACKENDS:
        raise ValueError(f"{SELECT_BACKEND} must be one of {list(SELECT_BACKENDS)}, got {value!r}")
    return value


def gram_max_mib() -> int | None:
    value = os.environ.get(GRAM_MAX_MIB, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{GRAM_MAX_MIB} must be a positive integer (MiB), got {value!r}")
    return int(value)
