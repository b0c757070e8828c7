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
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from zspa_vllm import config, selectors
from zspa_vllm.option import PREFIX, RATIO, NumberOption


def _number(option: NumberOption, what: str) -> Any:
    bounds = {"ge": option.low, ("lt" if option.high_open else "le"): option.high}
    return (float, Field(default=None, description=f"zspa-vllm: {what}", **bounds))


@cache
def fields_model() -> type[BaseModel]:
    """The pydantic model of the ``prune_*`` fields, generated from ``option.RATIO`` and
    the selector registry (one field per selector option). Built on first use, so selector
    entry points are loaded by then. Its descriptions are also what ``/openapi.json`` shows
    for these fields (server/openapi.py)."""
    methods = config.method_names()
    fields: dict[str, Any] = {
        RATIO.key: _number(RATIO, f"{RATIO.help}. Omitted: the server's {RATIO.flag}."),
        config.METHOD_KEY: (
            Literal[methods],  # type: ignore[valid-type]
            Field(
                default=None,
                description="zspa-vllm: the token selector. Omitted: the server's --prune-method.",
            ),
        ),
        config.SCOPE_KEY: (
            Literal[config.SCOPES],  # type: ignore[valid-type]
            Field(
                default=None,
                description="zspa-vllm: the prompt text that selects an image's tokens (turn: "
                "up to the image's own turn, keeping earlier turns in the prefix cache; prompt: "
                "all of it).",
            ),
        ),
    }
    for option in selectors.options().values():
        users = [s.name for s in selectors.specs().values() if option in s.options]
        fields[option.key] = _number(
            option,
            f"{option.help} ({', '.join(users)} only). Omitted: the server's {option.flag}.",
        )
    return create_model(
        "PruneFields",
        # strict: "0.5" (a string) or true is a type error, not coerced; ints are numbers.
        __config__=ConfigDict(extra="forbid", strict=True, allow_inf_nan=False),
        **fields,
    )


def allowed() -> dict[str, str]:
    """What each field accepts, in the words every error message uses."""
    out = {
        RATIO.key: RATIO.allowed,
        config.METHOD_KEY: f"one of {', '.join(config.method_names())}",
        config.SCOPE_KEY: f"one of {', '.join(config.SCOPES)}",
    }
    return out | {o.key: o.allowed for o in selectors.options().values()}


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
    fields = {k: v for k, v in (extra or {}).items() if k.startswith(PREFIX)}
    try:
        parsed = fields_model().model_validate(fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else config.RATIO_KEY
        accepts = allowed()
        if field not in accepts:
            valid = ", ".join(config.option_keys())
            raise PruneFieldError(
                field, f"unknown pruning field {field!r}; valid fields: {valid}"
            ) from None
        value = fields[field]
        got = "null (omit the field for the server default)" if value is None else repr(value)
        raise PruneFieldError(field, f"{field} must be {accepts[field]}; got {got}") from None
    return parsed.model_dump(exclude_unset=True)
