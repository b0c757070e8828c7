"""Per-request visual-token counts, published by the processor (API-server process).

The processor knows, for every real request, how many visual tokens each image had and
how many it kept; the server's metrics and usage reporting subscribe here instead of
re-running the processor. Listeners run synchronously in the processing thread: keep
them cheap and non-raising. Profiling (dummy) inputs are never published.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class PruneStats:
    """What pruning did to one request's images.

    Attributes:
        tokens_before: visual tokens the images would have used unpruned.
        tokens_after: visual tokens actually placed in the prompt.
        ratio / method: the options that were applied (ratio 0: pruning off).
        prompt_token_ids: the request's final prompt, to match stats to a request.
    """

    tokens_before: int
    tokens_after: int
    ratio: float
    method: str
    prompt_token_ids: tuple[int, ...]


Listener = Callable[[PruneStats], None]
_listeners: list[Listener] = []


def add_listener(fn: Listener) -> Callable[[], None]:
    """Subscribe ``fn``; returns a function that unsubscribes it."""
    _listeners.append(fn)
    return lambda: _listeners.remove(fn)


def publish(stats: PruneStats) -> None:
    for fn in list(_listeners):
        fn(stats)
