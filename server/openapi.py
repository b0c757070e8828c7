"""The ``prune_*`` request fields in the server's ``/openapi.json``.

vLLM's request models accept unknown fields (``model_extra``) and its schema does not list
ours, so clients generating code from the schema, and fuzzers testing against it, would not
know them. This adds each field, with its type, range and description from
``options.fields_model()`` (one source for validation and documentation), to the request
schemas of the routes whose usage reports pruning.
"""

from __future__ import annotations

from typing import Any

from zspa_server import options

# The request models of /v1/chat/completions and /v1/completions in vLLM's schema.
REQUEST_SCHEMAS = ("ChatCompletionRequest", "CompletionRequest")
_INSTALLED = "_zspa_openapi"


def prune_properties() -> dict[str, dict[str, Any]]:
    """JSON schemas of the pruning fields; omitted means the server default, so no default."""
    properties = options.fields_model().model_json_schema()["properties"]
    return {
        name: {k: v for k, v in prop.items() if k not in ("default", "title")}
        for name, prop in properties.items()
    }


def add_prune_fields(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the fields to ``schema`` in place (idempotent); returns it.

    Raises:
        KeyError: naming a request model missing from the schema (vLLM renamed it).
    """
    components = schema.get("components", {}).get("schemas", {})
    for name in REQUEST_SCHEMAS:
        if name not in components:
            raise KeyError(f"vLLM's OpenAPI schema has no {name!r}; cannot document prune_*")
        components[name].setdefault("properties", {}).update(prune_properties())
    return schema


def install(app: Any) -> None:
    """Make ``app.openapi()`` (FastAPI's, cached on first call) include the fields."""
    if getattr(app, _INSTALLED, False):
        return
    original = app.openapi

    def openapi() -> dict[str, Any]:
        return add_prune_fields(original())

    app.openapi = openapi
    setattr(app, _INSTALLED, True)
