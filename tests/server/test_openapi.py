"""server/openapi.py: the prune_* fields from options.fields_model() into a schema."""

from __future__ import annotations

import pytest

from zspa_server import openapi, options


def vllm_like_schema() -> dict:
    other = {"type": "object", "properties": {"model": {"type": "string"}}}
    return {"components": {"schemas": {name: dict(other) for name in openapi.REQUEST_SCHEMAS}}}


def test_fields_added_to_both_request_models_once():
    schema = openapi.add_prune_fields(openapi.add_prune_fields(vllm_like_schema()))
    for name in openapi.REQUEST_SCHEMAS:
        properties = schema["components"]["schemas"][name]["properties"]
        assert set(properties) == {"model", *options.allowed()}
        assert all("default" not in p for p in properties.values())  # omitted: server default


@pytest.mark.parametrize(
    ("field", "value", "valid"),
    [
        ("prune_ratio", 0.0, True),
        ("prune_ratio", 0.99, True),
        ("prune_ratio", 1.0, False),
        ("prune_ratio", -0.1, False),
        ("prune_core_ratio", 1.0, True),
        ("prune_method", "zspa", True),
        ("prune_method", "nope", False),
        ("prune_scope", "turn", True),
    ],
)
def test_schema_accepts_what_the_server_accepts(field, value, valid):
    """The documented range is the validated one: jsonschema and options.parse agree."""
    import jsonschema

    prop = openapi.prune_properties()[field]
    schema_ok = jsonschema.Draft202012Validator(prop).is_valid(value)
    try:
        options.parse({field: value})
        server_ok = True
    except options.PruneFieldError:
        server_ok = False
    assert schema_ok == server_ok == valid


def test_a_renamed_vllm_model_is_named():
    with pytest.raises(KeyError, match="ChatCompletionRequest"):
        openapi.add_prune_fields({"components": {"schemas": {}}})
