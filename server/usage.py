"""Per-request pruning counts: from the processor to the HTTP response.

The multimodal processor runs in an executor thread of the API-server process and
publishes one ``PruneStats`` per request with images (``zspa_vllm.stats``). Threads do
not carry the request's context, so the stats are matched back by the request's final
prompt token ids: two prompts with identical ids (image placeholders included) had
identical pruning counts, so a match can never report another request's numbers wrongly.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from contextvars import ContextVar
from dataclasses import dataclass, field

from zspa_vllm import stats


@dataclass
class RequestUsage:
    """What pruning did to one HTTP request (summed over its prompts)."""

    tokens_before: int = 0
    tokens_after: int = 0
    method: str | None = None  # None: no image, or pruning off (ratio 0)
    ratios: list[float] = field(default_factory=list)  # requested ratio per prompt with images
    # KV-cache bytes the pruned tokens would have taken; None where the model's size per
    # token is not exact (zspa_vllm.seam.kv_size: sliding windows, hybrid models).
    kv_bytes_per_token: int | None = None

    def add(self, s: stats.PruneStats, kv_bytes_per_token: int | None = None) -> None:
        self.tokens_before += s.tokens_before
        self.tokens_after += s.tokens_after
        self.ratios.append(s.ratio)
        self.kv_bytes_per_token = kv_bytes_per_token
        if s.ratio > 0:
            self.method = s.method

    @property
    def kv_cache_bytes_saved(self) -> int | None:
        if self.kv_bytes_per_token is None:
            return None
        return (self.tokens_before - self.tokens_after) * self.kv_bytes_per_token

    @property
    def effective_ratio(self) -> float:
        if self.tokens_before == 0:
            return 0.0
        return 1.0 - self.tokens_after / self.tokens_before

    def as_usage_fields(self) -> dict[str, object]:
        """The extra keys added to the OpenAI ``usage`` object."""
        return {
            "visual_tokens_before": self.tokens_before,
            "visual_tokens_after": self.tokens_after,
            "effective_prune_ratio": round(self.effective_ratio, 6),
            "prune_method": self.method,
            "kv_cache_bytes_saved": self.kv_cache_bytes_saved,
        }


# Set per HTTP request by the middleware; the renderer fills the object it points to
# (tasks spawned for the request copy the context, and so share the object).
current: ContextVar[RequestUsage | None] = ContextVar("zspa_request_usage", default=None)


class StatsInbox:
    """PruneStats published by the processor, waiting to be claimed by their request."""

    def __init__(self, capacity: int = 4096) -> None:
        self._lock = threading.Lock()
        self._waiting: OrderedDict[tuple[int, ...], deque[stats.PruneStats]] = OrderedDict()
        self._capacity = capacity  # bounds memory if stats arrive that nobody claims

    def put(self, s: stats.PruneStats) -> None:
        with self._lock:
            self._waiting.setdefault(s.prompt_token_ids, deque()).append(s)
            self._waiting.move_to_end(s.prompt_token_ids)
            while len(self._waiting) > self._capacity:
                self._waiting.popitem(last=False)

    def claim(self, prompt_token_ids) -> stats.PruneStats | None:
        key = tuple(prompt_token_ids)
        with self._lock:
            queue = self._waiting.get(key)
            if not queue:
                return None
            s = queue.popleft()
            if not queue:
                del self._waiting[key]
            return s
