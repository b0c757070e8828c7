"""Per-request pruning options: names, ranges, defaults, and their validation.

Options arrive in vLLM's ``mm_processor_kwargs`` (the one channel that reaches the
multimodal processor). Precedence: request > engine default (``LLM(mm_processor_kwargs=...)``
or ``--mm-processor-kwargs``) > built-in (ratio 0, i.e. off). Pure Python: no vLLM import.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from zspa_vllm.pruning import DEFAULT_CORE_RATIO, METHODS

RATIO_KEY = "prune_ratio"
METHOD_KEY = "prune_method"
CORE_RATIO_KEY = "prune_core_ratio"
SCOPE_KEY = "prune_scope"
KEYS = (CORE_RATIO_KEY, METHOD_KEY, RATIO_KEY, SCOPE_KEY)
# Any key with this prefix is ours: a misspelt option (prune_rato) is an error, not ignored.
PREFIX = "prune_"
METHOD_NAMES = tuple(sorted(METHODS))
# Which prompt text selects an item's tokens: "turn" (the conversation up to the assistant
# reply to the item's own message: earlier turns keep their selection, hashes and prefix-cache
# blocks in later turns) or "prompt" (all text of the prompt). Identical for one question.
SCOPES = ("prompt", "turn")


@dataclass(frozen=True)
class PruneOptions:
    """Validated options of one request.

    Attributes:
        ratio: share of each image's visual tokens to drop, in [0, 1); 0 disables pruning.
        method: selector name, one of ``METHOD_NAMES``.
        core_ratio: share of the budget chosen by relevance (zspa only), in [0, 1].
        scope: which prompt text selects each item's tokens, one of ``SCOPES``.
    """

    ratio: float = 0.0
    method: str = "zspa"
    core_ratio: float = DEFAULT_CORE_RATIO
    scope: str = "turn"

    def __post_init__(self) -> None:
        _check_number(RATIO_KEY, self.ratio, "[0, 1)", lambda x: 0.0 <= x < 1.0)
        _check_number(CORE_RATIO_KEY, self.core_ratio, "[0, 1]", lambda x: 0.0 <= x <= 1.0)
        if not isinstance(self.method, str) or self.method not in METHODS:
            raise ValueError(
                f"{METHOD_KEY} must be one of {', '.join(METHOD_NAMES)}; got {self.method!r}"
            )
        if not isinstance(self.scope, str) or self.scope not in SCOPES:
            raise ValueError(f"{SCOPE_KEY} must be one of {', '.join(SCOPES)}; got {self.scope!r}")
        # Normalise ints (1 -> 1.0) so equal options hash equally.
        object.__setattr__(self, "ratio", float(self.ratio))
        object.__setattr__(self, "core_ratio", float(self.core_ratio))

    @property
    def active(self) -> bool:
        return self.ratio > 0.0


def _check_number(name: str, value: object, allowed: str, ok) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number in {allowed}; got {value!r}")
    if math.isnan(value) or not ok(value):
        raise ValueError(f"{name} must be a number in {allowed}; got {value!r}")


def resolve(
    request: Mapping[str, object] | None, engine: Mapping[str, object] | None = None
) -> PruneOptions:
    """Merge request over engine defaults over built-ins, and validate.

    Raises:
        ValueError: naming the offending key and its allowed values, for an unknown
            ``prune_*`` key or a value out of range (NaN included).
    """
    merged: dict[str, object] = {}
    for source in (engine or {}, request or {}):
        for key, value in source.items():
            if key.startswith(PREFIX):
                if key not in KEYS:
                    raise ValueError(
                        f"unknown pruning option {key!r}; valid options: {', '.join(KEYS)}"
                    )
                merged[key] = value
    return PruneOptions(
        ratio=merged.get(RATIO_KEY, 0.0),  # type: ignore[arg-type]
        method=merged.get(METHOD_KEY, "zspa"),  # type: ignore[arg-type]
        core_ratio=merged.get(CORE_RATIO_KEY, DEFAULT_CORE_RATIO),  # type: ignore[arg-type]
        scope=merged.get(SCOPE_KEY, "turn"),  # type: ignore[arg-type]
    )


def strip(kwargs: Mapping[str, object]) -> dict[str, object]:
    """``kwargs`` without our keys, for anything that reaches a HF processor."""
    return {k: v for k, v in kwargs.items() if not k.startswith(PREFIX)}
