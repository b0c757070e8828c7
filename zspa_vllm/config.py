"""Per-request pruning options: names, ranges, defaults, and their validation.

Options arrive in vLLM's ``mm_processor_kwargs`` (the one channel that reaches the
multimodal processor). Precedence: request > engine default (``LLM(mm_processor_kwargs=...)``
or ``--mm-processor-kwargs``) > built-in (ratio 0, i.e. off). The keys are generated from
``option.RATIO`` and the selector registry (``selectors.py``): ``prune_ratio``,
``prune_method``, ``prune_scope`` and one ``prune_<option>`` per selector option
(``prune_core_ratio`` for zspa). Pure Python and torch: no vLLM import.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from zspa_vllm import selectors
from zspa_vllm.option import PREFIX, RATIO

RATIO_KEY = RATIO.key
METHOD_KEY = PREFIX + "method"
SCOPE_KEY = PREFIX + "scope"
DEFAULT_METHOD = "zspa"
# Which prompt text selects an item's tokens: "turn" (the conversation up to the assistant
# reply to the item's own message: earlier turns keep their selection, hashes and prefix-cache
# blocks in later turns) or "prompt" (all text of the prompt). Identical for one question.
SCOPES = ("prompt", "turn")
DEFAULT_SCOPE = "turn"


def method_names() -> tuple[str, ...]:
    """The ``prune_method`` values: every registered selector, sorted."""
    return selectors.names()


def option_keys() -> tuple[str, ...]:
    """Every key this module accepts, sorted."""
    option_keys = (o.key for o in selectors.options().values())
    return tuple(sorted((RATIO_KEY, METHOD_KEY, SCOPE_KEY, *option_keys)))


@dataclass(frozen=True)
class PruneOptions:
    """Validated options of one request.

    Attributes:
        ratio: share of each image's visual tokens to drop, in [0, 1); 0 disables pruning.
        method: selector name, one of ``method_names()``.
        scope: which prompt text selects each item's tokens, one of ``SCOPES``.
        params: every selector option by name (``core_ratio``...), defaults filled in;
            the worker passes each method only its own.
    """

    ratio: float = 0.0
    method: str = DEFAULT_METHOD
    scope: str = DEFAULT_SCOPE
    params: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Normalise ints (1 -> 1.0) so equal options compare equally.
        object.__setattr__(self, "ratio", RATIO.check(self.ratio))
        if not isinstance(self.method, str) or self.method not in method_names():
            raise ValueError(
                f"{METHOD_KEY} must be one of {', '.join(method_names())}, got {self.method!r}"
            )
        if not isinstance(self.scope, str) or self.scope not in SCOPES:
            raise ValueError(f"{SCOPE_KEY} must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        known = selectors.options()
        unknown = set(self.params) - set(known)
        if unknown:
            raise ValueError(f"unknown selector options {sorted(unknown)}")
        params = {
            name: o.check(self.params.get(name, o.default)) for name, o in sorted(known.items())
        }
        object.__setattr__(self, "params", params)

    @property
    def active(self) -> bool:
        return self.ratio > 0.0


def resolve(
    request: Mapping[str, object] | None, engine: Mapping[str, object] | None = None
) -> PruneOptions:
    """Merge request over engine defaults over built-ins, and validate.

    Raises:
        ValueError: naming the offending key and its allowed values, for an unknown
            ``prune_*`` key or a value out of range (NaN included).
    """
    merged: dict[str, object] = {}
    accepted = option_keys()
    for source in (engine or {}, request or {}):
        for key, value in source.items():
            if key.startswith(PREFIX):
                if key not in accepted:
                    raise ValueError(
                        f"unknown pruning option {key!r}; valid options: {', '.join(accepted)}"
                    )
                merged[key] = value
    options = selectors.options()
    return PruneOptions(
        ratio=merged.get(RATIO_KEY, RATIO.default),  # type: ignore[arg-type]
        method=merged.get(METHOD_KEY, DEFAULT_METHOD),  # type: ignore[arg-type]
        scope=merged.get(SCOPE_KEY, DEFAULT_SCOPE),  # type: ignore[arg-type]
        params={n: merged[o.key] for n, o in options.items() if o.key in merged},  # type: ignore[misc]
    )


def strip(kwargs: Mapping[str, object]) -> dict[str, object]:
    """``kwargs`` without our keys, for anything that reaches a HF processor."""
    return {k: v for k, v in kwargs.items() if not k.startswith(PREFIX)}
