"""Selection time and items per call, recorded where the selection runs (the worker).

``zspa_selection_seconds{model_name, method}``: wall time of one batched selector call
(one ``embed_multimodal`` step's items of one method). ``zspa_selection_items{model_name,
method}``: items per call. Both are prometheus_client histograms created in the worker.

How they reach the API server's /metrics: prometheus_client's multiprocess mode. When
``PROMETHEUS_MULTIPROC_DIR`` is set in a process before it imports prometheus_client,
every metric it creates writes its samples to a file in that directory, and a registry
with a ``MultiProcessCollector`` (vLLM's /metrics, in that mode) sums the files of all
processes. vLLM sets the directory itself for ``--api-server-count > 1``; zspa-serve sets
it for one API server too (server/cli.py), before anything imports prometheus_client, so
the engine-core and worker processes it spawns inherit it. (vLLM 0.32's API server always
runs the engine core in a process of its own, ``VLLM_ENABLE_V1_MULTIPROCESSING=0``
included; an offline ``LLM`` with that setting keeps the histograms in its own process's
default registry.) Tensor parallelism: only rank 0 records (every rank selects the same
items), so one observation per step.

No host sync is added on a GPU: a CUDA call is timed with two events, and the observation
is made at a later call once the end event has completed (``Event.query()`` does not
block). On the CPU the call is synchronous and timed directly.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from functools import cache
from typing import Any

import torch

SECONDS_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
)  # fmt: skip
ITEM_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class _State:
    model_name = "unknown"
    enabled = True
    pending: deque = deque()  # (start event, end event, method, items) not yet completed


_state = _State()


def configure(vllm_config: Any) -> None:
    """Called by each pruned model's constructor: its served name, and whether this rank
    records (tensor-parallel rank 0 only)."""
    served = vllm_config.model_config.served_model_name
    _state.model_name = served[0] if isinstance(served, (list, tuple)) else str(served)
    try:
        from vllm.distributed.parallel_state import get_tensor_model_parallel_rank

        _state.enabled = get_tensor_model_parallel_rank() == 0
    except (AssertionError, RuntimeError):  # no parallel state (unit tests): one rank
        _state.enabled = True


@cache
def _metrics() -> dict[str, Any]:
    from prometheus_client import Histogram

    labels = ["model_name", "method"]
    return {
        "seconds": Histogram(
            "zspa_selection_seconds",
            "Time of one batched token-selection call (one engine step's items of one "
            "method), in the worker.",
            labels,
            buckets=SECONDS_BUCKETS,
        ),
        "items": Histogram(
            "zspa_selection_items",
            "Items (images, videos) selected per call.",
            labels,
            buckets=ITEM_BUCKETS,
        ),
    }


def _observe(method: str, items: int, seconds: float) -> None:
    m = _metrics()
    m["seconds"].labels(_state.model_name, method).observe(seconds)
    m["items"].labels(_state.model_name, method).observe(items)


def _drain() -> None:
    """Observe every finished CUDA timing, oldest first; stop at the first unfinished."""
    while _state.pending and _state.pending[0][1].query():
        start, end, method, items = _state.pending.popleft()
        _observe(method, items, start.elapsed_time(end) / 1000.0)


@contextlib.contextmanager
def timed(method: str, items: int, device: torch.device):
    """Time the selection in the ``with`` block (see the module docstring)."""
    if not _state.enabled:
        yield
        return
    if device.type == "cuda":
        _drain()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        yield
        end.record()
        _state.pending.append((start, end, method, items))
        return
    t0 = time.perf_counter()
    yield
    _observe(method, items, time.perf_counter() - t0)
