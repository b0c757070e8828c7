"""zspa-serve end to end: a real server process, the official openai client, HTTP."""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.server import (
    API_KEY,
    DEFAULT_RATIO,
    MAX_BODY,
    data_url,
    kv_bytes_per_token,
    messages,
)
from zspa_vllm.pruning import keep_count

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

N = 576  # visual tokens of one 336px image in the tiny LLaVA
QUESTION = "what is in this picture?"
USAGE_KEYS = ("visual_tokens_before", "visual_tokens_after", "effective_prune_ratio")


def chat(server, *seeds: int, question: str = QUESTION, max_tokens: int = 3, **extra):
    return server.client().chat.completions.create(
        model=server.model,
        messages=messages(question, *seeds),
        max_tokens=max_tokens,
        temperature=0.0,
        extra_body=extra or None,
    )


def pruning_usage(usage) -> dict:
    return {k: usage.model_extra[k] for k in (*USAGE_KEYS, "prune_method")}


def test_ratio_changes_prompt_tokens_by_exactly_the_pruned_count(server):
    full = chat(server, 1, prune_ratio=0.0).usage
    pruned = chat(server, 1, prune_ratio=0.75).usage
    assert full.prompt_tokens - pruned.prompt_tokens == N - keep_count(N, 0.75)
    assert pruning_usage(full) == {
        "visual_tokens_before": N,
        "visual_tokens_after": N,
        "effective_prune_ratio": 0.0,
        "prune_method": None,
    }
    assert pruning_usage(pruned) == {
        "visual_tokens_before": N,
        "visual_tokens_after": 144,
        "effective_prune_ratio": 0.75,
        "prune_method": "zspa",
    }


def test_streaming_reports_pruning_in_the_final_usage_chunk(server):
    stream = server.client().chat.completions.create(
        model=server.model,
        messages=messages(QUESTION, 2),
        max_tokens=5,
        temperature=0.0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"prune_ratio": 0.9, "prune_method": "divprune"},
    )
    chunks = list(stream)
    text_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert text_chunks, "no tokens streamed"
    assert all(c.usage is None for c in chunks[:-1])
    final = chunks[-1].usage
    assert final is not None and final.completion_tokens == 5
    assert pruning_usage(final) == {
        "visual_tokens_before": N,
        "visual_tokens_after": keep_count(N, 0.9),
        "effective_prune_ratio": round(1 - keep_count(N, 0.9) / N, 6),
        "prune_method": "divprune",
    }


@pytest.mark.parametrize(("extra", "ratio"), [({}, DEFAULT_RATIO), ({"prune_ratio": 0.9}, 0.9)])
def test_server_default_and_request_override(server, extra, ratio):
    baseline = chat(server, 3, prune_ratio=0.0).usage.prompt_tokens - N
    usage = chat(server, 3, **extra).usage
    assert usage.prompt_tokens == baseline + keep_count(N, ratio)
    assert usage.model_extra["visual_tokens_after"] == keep_count(N, ratio)


def test_text_only_request_with_pruning_fields_is_served(server):
    # Defined behaviour: the fields are validated, then there is nothing to prune.
    response = server.client().completions.create(
        model=server.model, prompt="hello there", max_tokens=2, extra_body={"prune_ratio": 0.75}
    )
    assert pruning_usage(response.usage) == {
        "visual_tokens_before": 0,
        "visual_tokens_after": 0,
        "effective_prune_ratio": 0.0,
        "prune_method": None,
    }


def _post(server, body: bytes | dict, **headers) -> httpx.Response:
    headers = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"} | headers
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{server.url}/v1/chat/completions", content=content, headers=headers, timeout=120
    )


def _body(server, seeds=(4,), **extra) -> dict:
    return {"model": server.model, "messages": messages(QUESTION, *seeds), "max_tokens": 2} | extra


INVALID = {
    "ratio -1": ({"prune_ratio": -1}, "prune_ratio"),
    "ratio 1": ({"prune_ratio": 1}, "prune_ratio"),
    "ratio 1.5": ({"prune_ratio": 1.5}, "prune_ratio"),
    "ratio string": ({"prune_ratio": "0.5"}, "prune_ratio"),
    "ratio null": ({"prune_ratio": None}, "prune_ratio"),
    "ratio list": ({"prune_ratio": [0.5]}, "prune_ratio"),
    "ratio bool": ({"prune_ratio": True}, "prune_ratio"),
    "unknown method": ({"prune_method": "topk"}, "prune_method"),
    "method number": ({"prune_method": 3}, "prune_method"),
    "core ratio 1.2": ({"prune_core_ratio": 1.2}, "prune_core_ratio"),
    "core ratio -0.1": ({"prune_core_ratio": -0.1}, "prune_core_ratio"),
    "misspelt field": ({"prune_rato": 0.5}, "prune_rato"),
    "unknown scope": ({"prune_scope": "chat"}, "prune_scope"),
    "scope number": ({"prune_scope": 1}, "prune_scope"),
    # vLLM's security default stays: per-request mm_processor_kwargs are refused.
    "mm_processor_kwargs": ({"mm_processor_kwargs": {"prune_ratio": 0.5}}, "mm_processor_kwargs"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_pruning_fields_are_400_naming_the_field(server, case):
    extra, field = INVALID[case]
    response = _post(server, _body(server, **extra))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field and field in error["message"]
    assert error["code"] == 400 and error["type"] == "BadRequestError"


def _nan_body(server) -> bytes:
    # Python's json writes NaN, as many clients do; strict JSON has no NaN at all.
    return json.dumps(_body(server, prune_ratio=math.nan)).encode()


OTHER_BAD = {
    "ratio NaN": lambda s: _nan_body(s),
    "malformed image": lambda s: (
        _body(s, seeds=())
        | {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                        {"type": "text", "text": "hi"},
                    ],
                }
            ]
        }
    ),
    "too many images": lambda s: _body(s, seeds=(5, 6, 7)),
    "local file": lambda s: (
        _body(s, seeds=())
        | {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}],
                }
            ]
        }
    ),
    "not json": lambda s: b"{not json",
    "body too large": lambda s: b'{"pad": "' + b"a" * MAX_BODY + b'"}',
}


@pytest.mark.parametrize("case", list(OTHER_BAD))
def test_other_bad_requests_are_4xx_and_the_server_keeps_serving(server, case):
    response = _post(server, OTHER_BAD[case](server))
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"} and error["code"] == response.status_code
    assert "Traceback" not in response.text
    assert chat(server, 4, prune_ratio=0.5).usage.model_extra["visual_tokens_after"] == 288


def test_counters_equal_the_sums_of_reported_usage(server):
    label = (("model_name", server.model),)
    names = ("zspa_visual_tokens_before_pruning_total", "zspa_visual_tokens_after_pruning_total")
    before = server.metrics()
    usages = [
        chat(server, 8, prune_ratio=0.75).usage,
        chat(server, 9, 10, prune_ratio=0.9, prune_method="random").usage,
        chat(server, 8).usage,
        chat(server, 11, prune_ratio=0.0).usage,
    ]
    after = server.metrics()
    deltas = [after[(n, label)] - before.get((n, label), 0.0) for n in names]
    assert deltas == [
        sum(u.model_extra["visual_tokens_before"] for u in usages),
        sum(u.model_extra["visual_tokens_after"] for u in usages),
    ]
    count = ("zspa_requested_prune_ratio_count", label)
    assert after[count] - before.get(count, 0.0) == len(usages)
    # KV memory: each pruned token frees one token's KV (per-token size from config.json).
    per_token = kv_bytes_per_token(server.model)
    for u in usages:
        saved = u.model_extra["visual_tokens_before"] - u.model_extra["visual_tokens_after"]
        assert u.model_extra["kv_cache_bytes_saved"] == saved * per_token
    kv = ("zspa_kv_cache_bytes_saved_total", label)
    assert after[kv] - before.get(kv, 0.0) == sum(
        u.model_extra["kv_cache_bytes_saved"] for u in usages
    )

    # Selection time comes from the worker process (another process than this /metrics):
    # one timed call per request here (sequential), items = the images it pruned.
    def selection(metrics, name, method):
        return metrics.get((name, (("method", method), *label)), 0.0)

    for method, calls, images in (("zspa", 2, 2), ("random", 1, 2)):
        for name, expected in (
            ("zspa_selection_seconds_count", calls),
            ("zspa_selection_items_sum", images),
        ):
            assert selection(after, name, method) - selection(before, name, method) == expected
        assert selection(after, "zspa_selection_seconds_sum", method) > selection(
            before, "zspa_selection_seconds_sum", method
        )

    def by_method(metrics, method):
        key = ("zspa_requests_total", (("method", method), *label))
        return metrics.get(key, 0.0)

    assert by_method(after, "random") - by_method(before, "random") == 1
    assert by_method(after, "none") - by_method(before, "none") == 1


def test_32_concurrent_requests_with_mixed_ratios(server):
    ratios = [[0.0, 0.25, 0.5, 0.75, 0.9][i % 5] for i in range(32)]
    text = chat(server, 12, prune_ratio=0.0).usage.prompt_tokens - N

    async def run():
        client = server.async_client()
        return await asyncio.gather(
            *(
                client.chat.completions.create(
                    model=server.model,
                    messages=messages(QUESTION, 12 + i % 3),
                    max_tokens=4,
                    extra_body={"prune_ratio": r},
                )
                for i, r in enumerate(ratios)
            )
        )

    responses = asyncio.run(run())
    for r, response in zip(ratios, responses, strict=True):
        assert response.usage.prompt_tokens == text + keep_count(N, r)
        assert response.usage.model_extra["visual_tokens_after"] == keep_count(N, r)
        assert response.usage.model_extra["visual_tokens_before"] == N


def test_client_disconnect_aborts_the_request(server):
    running = ("vllm:num_requests_running", (("engine", "0"), ("model_name", server.model)))
    generated = ("vllm:generation_tokens_total", (("engine", "0"), ("model_name", server.model)))
    start = server.metrics().get(generated, 0.0)
    body = _body(server, prune_ratio=0.5) | {
        "max_tokens": 1500,
        "ignore_eos": True,
        "stream": True,
    }
    headers = {"authorization": f"Bearer {API_KEY}"}
    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions", json=body, headers=headers, timeout=120
    ) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
    # Closed after the first token: vLLM must abort, not finish the 1500 tokens.
    for _ in range(120):
        metrics = server.metrics()
        if metrics.get(running) == 0.0:
            break
        time.sleep(0.5)
    assert metrics.get(running) == 0.0
    assert metrics.get(generated, 0.0) - start < 1500


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/tokenize")],
)
def test_api_key_is_required_except_on_health_and_metrics(server, method, path):
    response = httpx.request(method, f"{server.url}{path}", json={}, timeout=30)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == 401
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key="wrong").models.list()
    assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200
    assert httpx.get(f"{server.url}/metrics", timeout=30).status_code == 200


def test_vllm_serving_layer_is_all_there(server):
    client = server.client()
    assert [m.id for m in client.models.list().data] == [server.model]
    headers = {"authorization": f"Bearer {API_KEY}"}
    tokens = httpx.post(
        f"{server.url}/tokenize", json={"prompt": "hello"}, headers=headers, timeout=30
    )
    assert tokens.status_code == 200 and tokens.json()["count"] > 0
    assert data_url(0).startswith("data:image/png")


@pytest.fixture(scope="module")
def two_api_servers(tiny_llava, tmp_path_factory):
    from tests.support.server import Server, start_server, stop_server

    log = tmp_path_factory.mktemp("serve-2") / "zspa-serve.log"
    proc, url = start_server(tiny_llava, log, "--api-server-count", "2", "--api-key", API_KEY)
    yield Server(url=url, model=tiny_llava, log=log)
    stop_server(proc)


def test_metrics_add_up_across_api_server_processes(two_api_servers):
    # vLLM spreads connections over the processes; each counts its own requests and
    # /metrics (served by any of them) aggregates all of them.
    server = two_api_servers
    key = ("zspa_visual_tokens_after_pruning_total", (("model_name", server.model),))
    start = server.metrics().get(key, 0.0)
    # A fresh server: vLLM's profiling run and multimodal warm-up went through the
    # processor, and none of it may count as a request.
    assert start == 0.0
    kept = 0
    for i in range(8):
        with httpx.Client(timeout=120) as fresh_connection:
            response = fresh_connection.post(
                f"{server.url}/v1/chat/completions",
                json=_body(server, seeds=(40 + i,), prune_ratio=[0.5, 0.9][i % 2]),
                headers={"authorization": f"Bearer {API_KEY}"},
            )
        assert response.status_code == 200, response.text
        kept += response.json()["usage"]["visual_tokens_after"]
    assert kept == 4 * (keep_count(N, 0.5) + keep_count(N, 0.9))
    for _ in range(3):  # whichever process answers the scrape
        assert server.metrics()[key] - start == kept
        saved = server.metrics()[("zspa_kv_cache_bytes_saved_total", key[1])]
        assert saved == (8 * N - kept) * kv_bytes_per_token(server.model)
        items = ("zspa_selection_items_sum", (("method", "zspa"), *key[1]))
        assert server.metrics()[items] == 8  # recorded in the worker, seen by every server


@pytest.fixture(scope="module")
def plain_vllm_serve(tiny_llava, tmp_path_factory):
    """`vllm serve` configured as deploy/helm/production-stack-values.yaml configures it."""
    import yaml

    from tests.support.server import VLLM_SERVE, Server, start_server, stop_server

    values = Path(__file__).resolve().parents[2] / "deploy/helm/production-stack-values.yaml"
    (spec,) = yaml.safe_load(values.read_text())["servingEngineSpec"]["modelSpec"]
    log = tmp_path_factory.mktemp("vllm-serve") / "vllm-serve.log"
    proc, url = start_server(tiny_llava, log, *spec["vllmConfig"]["extraArgs"], launcher=VLLM_SERVE)
    yield Server(url=url, model=tiny_llava, log=log)
    stop_server(proc)


def test_plain_vllm_serve_with_our_middleware_is_zspa_serve(plain_vllm_serve):
    # What production-stack runs: the default ratio (0.5 in the values file) applies,
    # a request overrides it, a bad field is a 400, and usage reports the counts.
    server = plain_vllm_serve
    assert chat(server, 50).usage.model_extra["visual_tokens_after"] == keep_count(N, 0.5)
    assert chat(server, 50, prune_ratio=0.9).usage.model_extra["visual_tokens_after"] == (
        keep_count(N, 0.9)
    )
    with pytest.raises(openai.BadRequestError, match="prune_method"):
        chat(server, 50, prune_method="fastest")


def _prefix_hits(server) -> float:
    return sum(
        v for (name, _), v in server.metrics().items() if name == "vllm:prefix_cache_hits_total"
    )


@pytest.mark.parametrize("scope", ["turn", "prompt"])
def test_a_pruned_chat_keeps_its_prefix_cache_across_turns(server, scope):
    # A 3-turn chat through the openai client; the image is in turn 1 (a fresh seed: no
    # other test has sent it). vLLM's own prefix-cache counter tells what each turn reused.
    client, chat = (
        server.client(),
        messages("what is in this image?", 61 if scope == "turn" else 62),
    )
    hits, prompts = [], []
    for question in ("and the sky?", "day or night?", None):
        before = _prefix_hits(server)
        reply = client.chat.completions.create(
            model=server.model, messages=chat, max_tokens=3, temperature=0,
            extra_body={"prune_ratio": 0.75, "prune_scope": scope},
        )  # fmt: skip
        hits.append(_prefix_hits(server) - before)
        prompts.append(reply.usage.prompt_tokens)
        assert reply.usage.model_extra["visual_tokens_after"] == 144
        if question:
            chat += [
                {"role": "assistant", "content": reply.choices[0].message.content},
                {"role": "user", "content": question},
            ]
    if scope == "turn":
        # Every full block (128 tokens on vLLM's CPU backend) of the previous prompt is a hit.
        assert hits[1] >= prompts[0] // 128 * 128 > 0
        assert hits[2] >= prompts[1] // 128 * 128 > 0
    else:
        # Today's rule: each turn re-selects the image, nothing from it on is reused.
        assert hits[1] == hits[2] == 0


def _question_overflowing_by(server, extra_tokens: int) -> str:
    """A question whose chat prompt fits the 2048-token context as text (one placeholder per
    image) but exceeds it by about ``extra_tokens`` once the image's tokens are placed."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(server.model)

    def text_tokens(words: int) -> int:
        chat = messages(" ".join(["picture"] * words), 1)
        chat[0]["content"][0] = {"type": "image"}
        rendered = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        return len(tok(rendered).input_ids)

    words = 1
    while text_tokens(words) < 2048 - extra_tokens:
        words += max(1, (2048 - extra_tokens - text_tokens(words)) // 2)
    return " ".join(["picture"] * words)


@pytest.mark.parametrize("ratio", [0.0, 0.75])
def test_a_request_after_an_over_context_one_with_the_same_image_is_served(server, ratio):
    # vLLM marks an image as sent to the engine when it processes it; a request rejected
    # after processing (its text fits, text + image tokens do not) never sends it, and stock
    # vLLM then answered the next request with that image with a 500 ("P0/P1 cache drift").
    seed = 81 if ratio else 82
    client = server.client()
    long_question = _question_overflowing_by(server, keep_count(N, ratio) - 20)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=server.model, messages=messages(long_question, seed), max_tokens=2,
            extra_body={"prune_ratio": ratio},
        )  # fmt: skip
    assert "maximum context length" in err.value.message, err.value.message
    for _ in range(2):
        reply = client.chat.completions.create(
            model=server.model, messages=messages("hi", seed), max_tokens=2,
            extra_body={"prune_ratio": ratio},
        )  # fmt: skip
        assert reply.usage.model_extra["visual_tokens_after"] == keep_count(N, ratio)
