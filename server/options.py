"""Top-level pruning fields of an OpenAI request, validated with pydantic.

Clients send ``prune_ratio`` / ``prune_method`` / ``prune_core_ratio`` next to the
standard fields (OpenAI SDK: ``extra_body={...}``). vLLM's request models keep unknown
fields in ``model_extra`` and ignore them; this module turns them into validated
``mm_processor_kwargs`` for the engine, or a ``VLLMValidationError`` (HTTP 400 in
OpenAI's error format, naming the field) before anything reaches the engine.

An omitted field means "server default"; ``null`` is rejected rather than guessed at.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from zspa_vllm import config

# What each field accepts, in the words every error message uses.
ALLOWED = {
    config.RATIO_KEY: "a number in [0, 1)",
    config.METHOD_KEY: f"one of {', '.join(config.METHOD_NAMES)}",
    config.CORE_RATIO_KEY: "a number in [0, 1]",
    config.SCOPE_KEY: f"one of {', '.join(config.SCOPES)}",
}


class PruneFields(BaseModel):
    # strict: "0.5" (a string) or true is a type error, not coerced; ints are numbers.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    # The descriptions are also what /openapi.json shows for these fields (server/openapi.py).
    prune_ratio: float = Field(  # type: ignore[assignment]
        default=None,
        ge=0.0,
        lt=1.0,
        description="zspa-vllm: share of each image's visual tokens to drop before prefill "
        "(0: no pruning). Omitted: the server's --prune-ratio.",
    )
    prune_method: Literal[config.METHOD_NAMES] = Field(  # type: ignore[valid-type]
        default=None,
        description="zspa-vllm: the token selector. Omitted: the server's --prune-method.",
    )
    prune_core_ratio: float = Field(  # type: ignore[assignment]
        default=None,
        ge=0.0,
        le=1.0,
        description="zspa-vllm: share of the kept tokens chosen by relevance to the prompt "
        "(zspa only; the rest by diversity). Omitted: the server's --prune-core-ratio.",
    )
    prune_scope: Literal[config.SCOPES] = Field(  # type: ignore[valid-type]
        default=None,
        description="zspa-vllm: the prompt text that selects an image's tokens (turn: up to "
        "the image's own turn, keeping earlier turns in the prefix cache; prompt: all of it).",
    )


class PruneFieldError(ValueError):
    """A pruning field failed validation; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def parse(extra: Mapping[str, object] | None) -> dict[str, object]:
    """The request's pruning fields as ``mm_processor_kwargs`` entries (only those set).

    Raises:
        PruneFieldError: for a wrong type, null, NaN, a value out of range, an unknown
            method, or an unknown ``prune_*`` field.
    """
    fields = {k: v for k, v in (extra or {}).items() if k.startswith(config.PREFIX)}
    try:
        parsed = PruneFields.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else config.RATIO_KEY
        if field not in ALLOWED:
            raise PruneFieldError(
                field, f"unknown pruning field {field!r}; valid fields: {', '.join(config.KEYS)}"
            ) from None
        value = fields[field]
        got = "null (omit the field for the server default)" if value is None else repr(value)
        raise PruneFieldError(field, f"{field} must be {ALLOWED[field]}; got {got}") from None
    return parsed.model_dump(exclude_unset=True)
