"""zspa_* Prometheus metrics, served on vLLM's own /metrics.

Recorded in the API-server process, where the processor runs and both the original
and the kept counts are known; one observation per rendered prompt with images.
Created lazily, in each API-server process after vLLM has set up Prometheus: with
``--api-server-count > 1`` vLLM sets ``PROMETHEUS_MULTIPROC_DIR`` before spawning the
servers, so these become multiprocess metrics that its /metrics aggregates.
The selection time is recorded where it is spent, in the worker
(``zspa_vllm/seam/selection_metrics.py``), and reaches /metrics through the same multiprocess
directory, which zspa-serve also creates for a single API server (server/cli.py).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from prometheus_client import Counter, Histogram

from zspa_vllm import stats

RATIO_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99)
OFF = "none"  # method label when a request with images did not prune (ratio 0)


@cache
def _metrics() -> dict[str, Any]:
    labels = ["model_name"]
    return {
        "before": Counter(
            "zspa_visual_tokens_before_pruning",
            "Visual tokens the requests' images would have used without pruning.",
            labels,
        ),
        "after": Counter(
            "zspa_visual_tokens_after_pruning",
            "Visual tokens actually placed in the requests' prompts.",
            labels,
        ),
        "ratio": Histogram(
            "zspa_requested_prune_ratio",
            "Prune ratio applied to each request with images (0: pruning off).",
            labels,
            buckets=RATIO_BUCKETS,
        ),
        "requests": Counter(
            "zspa_requests",
            "Requests with images, by pruning method ('none': ratio 0).",
            [*labels, "method"],
        ),
        "kv_bytes": Counter(
            "zspa_kv_cache_bytes_saved",
            "KV-cache bytes the pruned visual tokens would have taken (all layers and "
            "tensor-parallel ranks of the replica, at the KV-cache dtype).",
            labels,
        ),
    }


def model_name(args: Any) -> str:
    """The model_name label vLLM's own metrics use: the first served name."""
    served = getattr(args, "served_model_name", None)
    if served:
        return served[0] if isinstance(served, (list, tuple)) else str(served)
    return str(args.model)


def record(model: str, s: stats.PruneStats, kv_bytes_per_token: int | None = None) -> None:
    m = _metrics()
    if kv_bytes_per_token is not None:
        m["kv_bytes"].labels(model).inc((s.tokens_before - s.tokens_after) * kv_bytes_per_token)
    m["before"].labels(model).inc(s.tokens_before)
    m["after"].labels(model).inc(s.tokens_after)
    m["ratio"].labels(model).observe(s.ratio)
    m["requests"].labels(model, s.method if s.ratio > 0 else OFF).inc()
