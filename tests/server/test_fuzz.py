"""Property-based fuzzing of zspa-serve's HTTP API against its own OpenAPI schema.

schemathesis generates request bodies, query and path parameters for every operation in the
server's ``/openapi.json`` (which lists the ``prune_*`` fields: server/openapi.py), both
schema-conforming ("positive") and violating ("negative"), and sends them to the real
server over HTTP. Every response must be below 500 and every error must be in OpenAI's
format; where a real image was added to a chat request that succeeded, its pruning usage
must match the ratio the request (or the server default) asked for.

Bounded: a fixed number of examples per operation and mode, fixed by ``ZSPA_FUZZ_SEED``
(default 0: the cases CI runs; other seeds explore, and some find 500s in vLLM's own routes
that are not fixed here, see README), at most a few generated tokens per request; a failure
prints the request body.
``ZSPA_FUZZ_EXAMPLES`` multiplies the counts for a deeper local run.
"""

from __future__ import annotations

import json
import os

import httpx
import pytest
import schemathesis  # scripts/setup-tools installs it (requirements/tools.txt)
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from tests.support.server import API_KEY, DEFAULT_RATIO, data_url, messages
from zspa_vllm.pruning import keep_count

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

SCALE = float(os.environ.get("ZSPA_FUZZ_EXAMPLES", "1"))
SEED = int(os.environ.get("ZSPA_FUZZ_SEED", "0"))
# The routes that take prune_* fields get the most examples.
PRUNING_ROUTES = ("/v1/chat/completions", "/v1/completions")
EXAMPLES = {"pruning": 120, "other": 20}
# Operations that change the deployment rather than answer a request.
SKIPPED = ("/scale_elastic_ep", "/is_scaling_elastic_ep")
N = 576  # visual tokens of one 336px image in the tiny LLaVA
IMAGE = data_url(7)
# vLLM's Anthropic-compatible Messages API answers its own errors in Anthropic's format
# ({"type": "error", "error": {"type", "message"}}), body validation errors in OpenAI's.
ANTHROPIC_ROUTES = ("/v1/messages",)
# 501: vLLM's honest "this model does not implement the route" (e.g. /v1/systemone).
ALLOWED_5XX = {501}
CAPS = {  # positive integers above these become the cap: a few tokens, a few choices
    "max_tokens": 4,
    "max_completion_tokens": 4,
    "min_tokens": 4,
    "n": 2,
    "best_of": 2,
    "logprobs": 3,
    "top_logprobs": 3,
    "prompt_logprobs": 3,
}


# What the suite fuzzes with valid requests ("core", the default): chat and completions with
# the fields a client of this server sends (the standard sampling fields, plain-text and
# image messages, and ours); invalid requests go to every route. ZSPA_FUZZ_SCOPE=full fuzzes
# every field of every route with valid requests too: that reaches vLLM's own surface (tools,
# structured outputs, the Responses API, exotic content parts), where seeds 4 and 5 found 500s
# this project has not fixed (README, Fuzzed); run it to explore, not as a gate.
SCOPE = os.environ.get("ZSPA_FUZZ_SCOPE", "core")
CORE_FIELDS = {
    "ChatCompletionRequest": (
        "model", "messages", "max_tokens", "temperature", "top_p", "top_k", "n", "stream",
        "stream_options", "seed", "stop", "logprobs", "top_logprobs", "presence_penalty",
        "frequency_penalty", "repetition_penalty", "min_tokens", "ignore_eos",
        "truncate_prompt_tokens",
    ),
    "CompletionRequest": (
        "model", "prompt", "max_tokens", "temperature", "top_p", "n", "stream", "echo",
        "logprobs", "stop", "seed", "truncate_prompt_tokens",
    ),
}  # fmt: skip
# Messages as clients send them: roles with text, or text parts (images are added below).
CORE_MESSAGES = {
    "type": "array",
    "minItems": 1,
    "maxItems": 4,
    "items": {
        "type": "object",
        "required": ["role", "content"],
        "properties": {
            "role": {"enum": ["system", "user", "assistant"]},
            "content": {
                "anyOf": [
                    {"type": "string"},
                    {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["type", "text"],
                            "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
                        },
                    },
                ]
            },
        },
    },
}


def core_schema(raw: dict) -> dict:
    """The server's schema with chat and completions narrowed to CORE_FIELDS (ours kept)."""
    raw = json.loads(json.dumps(raw))
    for name, keep in CORE_FIELDS.items():
        model = raw["components"]["schemas"][name]
        props = model["properties"]
        model["properties"] = {
            k: v for k, v in props.items() if k in keep or k.startswith("prune_")
        }
        if "messages" in model["properties"]:
            model["properties"]["messages"] = CORE_MESSAGES
    return raw


@pytest.fixture(scope="module")
def raw_schema(server) -> dict:
    return httpx.get(
        f"{server.url}/openapi.json", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30
    ).json()


@pytest.fixture(scope="module")
def api_schema(raw_schema):
    return schemathesis.openapi.from_dict(raw_schema)


@pytest.fixture(scope="module")
def schemas(raw_schema, api_schema) -> dict:
    """The schema each mode fuzzes (see SCOPE)."""
    positive = (
        api_schema if SCOPE == "full" else schemathesis.openapi.from_dict(core_schema(raw_schema))
    )
    return {"positive": positive, "negative": api_schema}


def operations(schema, mode: str):
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in SKIPPED:
            continue
        if mode == "positive" and SCOPE != "full" and operation.path not in PRUNING_ROUTES:
            continue
        yield operation


def test_schema_lists_the_pruning_fields(api_schema):
    components = api_schema.raw_schema["components"]["schemas"]
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        fields = components[name]["properties"]
        assert fields["prune_ratio"] == {
            "type": "number",
            "minimum": 0.0,
            "exclusiveMaximum": 1.0,
            "description": fields["prune_ratio"]["description"],
        }
        assert set(fields["prune_method"]["enum"]) >= {"zspa", "divprune"}
        assert fields["prune_scope"]["enum"] == ["prompt", "turn"]
        assert fields["prune_core_ratio"]["maximum"] == 1.0


def bound(body, model: str, positive: bool, add_image: bool) -> bool:
    """Cap generation in place; in positive mode make the body reach the engine (the served
    model, a prompt, optionally a real image). Returns whether an image was added."""
    if not isinstance(body, dict):
        return False
    for key, cap in CAPS.items():
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > cap:
            body[key] = cap
    body.setdefault("max_tokens", CAPS["max_tokens"])
    if not positive:
        return False
    body["model"] = model
    if "prompt" in body and not body["prompt"]:
        body["prompt"] = "hello"
    messages = body.get("messages")
    if add_image and isinstance(messages, list) and messages and isinstance(messages[0], dict):
        first = messages[0]
        if first.get("role") == "user":
            text = first.get("content") if isinstance(first.get("content"), str) else "hi"
            first["content"] = [
                {"type": "image_url", "image_url": {"url": IMAGE}},
                {"type": "text", "text": text},
            ]
            return True
    return False


def check_error_format(response) -> None:
    what = f"{response.request.method} {response.request.url} -> {response.status_code}: "
    what += response.text[:2000]
    body = response.request.body or b""
    what += (
        "\nrequest body: "
        + (body.decode(errors="replace") if isinstance(body, bytes) else body)[:3000]
    )
    assert response.status_code < 500 or response.status_code in ALLOWED_5XX, what
    if response.status_code < 400:
        return
    body = response.json()
    error = body.get("error")
    assert isinstance(error, dict), what
    assert isinstance(error.get("message"), str) and error["message"], what
    assert isinstance(error.get("type"), str), what
    anthropic = (
        response.request.path_url.startswith(ANTHROPIC_ROUTES) and body.get("type") == "error"
    )
    if (
        not anthropic
    ):  # OpenAI's: {"error": {"message": str, "type": str, "param": ..., "code": status}}
        assert error.get("code") == response.status_code, what


def check_stream(response) -> None:
    for line in response.text.splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line.removeprefix("data: "))
        if "error" in event:
            code = event["error"].get("code")
            assert code is not None and code < 500, line


def check_usage(response, body) -> None:
    """A chat answer with our one image: usage shows its tokens pruned at the asked ratio."""
    payload = response.json()
    assert "usage" in payload, f"{json.dumps(body)[:3000]}\n-> {response.text[:2000]}"
    usage = payload["usage"]
    ratio = body.get("prune_ratio", DEFAULT_RATIO)
    assert usage["visual_tokens_before"] == N
    assert usage["visual_tokens_after"] == keep_count(N, ratio)


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_every_operation_answers_without_5xx_in_openai_error_format(server, schemas, mode):
    from schemathesis import GenerationMode

    generation_mode = GenerationMode(mode)
    exercised, with_image = 0, 0
    for operation in operations(schemas[mode], mode):
        if mode == "negative" and not _has_inputs(operation):
            continue  # nothing to violate: GET /health, /metrics, ...
        kind = "pruning" if operation.path in PRUNING_ROUTES else "other"

        @seed(SEED)
        @settings(
            max_examples=max(1, int(EXAMPLES[kind] * SCALE)),
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            database=None,
            # The seed alone picks the cases (derandomize would derive them from the test's
            # digest, which differed between clones): CI runs exactly what ZSPA_FUZZ_SEED=0 ran.
            derandomize=False,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=generation_mode), image=st.booleans())
        def fuzz(case, image):
            nonlocal exercised, with_image
            added = bound(case.body, server.model, mode == "positive", image)
            response = case.call(
                base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120
            )
            check_error_format(response)
            if response.status_code == 200 and "text/event-stream" in response.headers.get(
                "content-type", ""
            ):
                check_stream(response)
            elif (
                response.status_code == 200
                and added
                and case.operation.path == "/v1/chat/completions"
                and not case.body.get("stream")
            ):
                check_usage(response, case.body)
                with_image += 1
            exercised += 1

        try:
            fuzz()
        except Unsatisfiable:  # e.g. no way to violate a lone string path parameter
            continue
    assert exercised > 0
    if mode == "positive":
        assert with_image > 0, "no fuzzed chat request with an image reached the engine"
    # Still serving: a plain pruned request right after.
    reply = server.client().chat.completions.create(
        model=server.model,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=2,
    )
    assert reply.choices[0].message is not None


def _has_inputs(operation) -> bool:
    return bool(operation.body) or any(True for _ in operation.iter_parameters())


# What the fuzzer found (stock vLLM 0.32 answers each the same way), kept as plain cases.
FINDINGS = [
    # A vLLM validator assumed a dict: AttributeError, a 500 naming nothing.
    ("/v1/completions", {"prompt": "hi", "structured_outputs": []}, 400, "structured_outputs"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "structured_outputs": []},
        400,
        "structured_outputs",
    ),
    # Not UTF-8: FastAPI's {"detail": ...}, not OpenAI's error object.
    ("/tokenize", b"\x88", 400, "parsing the body"),
    ("/no/such/route", {}, 404, "Not Found"),
    # truncate_prompt_tokens cutting the image placeholder off: vLLM's assertion, a 500.
    (
        "/v1/chat/completions",
        {"messages": "IMAGE", "truncate_prompt_tokens": 5},
        400,
        "truncate_prompt_tokens=5 cuts the placeholder of mm_items['image'][0]",
    ),
]


@pytest.mark.parametrize(("path", "body", "status", "named"), FINDINGS)
def test_fuzzer_findings_stay_fixed(server, path, body, status, named):
    if isinstance(body, dict):
        if body.get("messages") == "IMAGE":
            body = body | {"messages": messages("hi", 7)}
        body = json.dumps({"model": server.model, "max_tokens": 2, **body}).encode()
    response = httpx.post(
        f"{server.url}{path}",
        content=body,
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status and named in error["message"], response.text
