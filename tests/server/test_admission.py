"""The admission hook is explicit: prune_* fields are admitted by AdmissionMiddleware, and
never silently ignored where it is missing (plain `vllm serve`, or a middleware list without
it)."""

from __future__ import annotations

from types import SimpleNamespace

import openai
import pytest

from tests.support.server import VLLM_SERVE, Server, messages, start_server, stop_server
from zspa_server import cli

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

ADMISSION = "zspa_server.admission.AdmissionMiddleware"


def test_refusal_names_the_field_and_the_fix():
    from vllm.exceptions import VLLMValidationError

    from zspa_vllm.seam.plugin import refuse_unadmitted

    refuse_unadmitted(SimpleNamespace(model_extra={"temperature_x": 1}))  # not ours: passes
    refuse_unadmitted(SimpleNamespace(model_extra=None))
    with pytest.raises(VLLMValidationError, match=f"--middleware={ADMISSION}") as err:
        refuse_unadmitted(SimpleNamespace(model_extra={"prune_ratio": 0.5, "prune_scope": "x"}))
    assert err.value.parameter == "prune_ratio"
    assert cli.MIDDLEWARE[0] == ADMISSION


def test_plain_vllm_serve_refuses_fields_it_would_ignore(tiny_llava, tmp_path):
    """The plugin alone (no middleware of ours): a request with prune_* fields is a 400
    naming the middleware, not a silently unpruned answer; other requests are served."""
    log = tmp_path / "vllm-serve.log"
    proc, url = start_server(tiny_llava, log, launcher=VLLM_SERVE)
    try:
        client = Server(url=url, model=tiny_llava, log=log).client(api_key="unused")
        ask = dict(model=tiny_llava, messages=messages("what is this?", 70), max_tokens=2)
        for route in ("chat", "completions"):
            create = client.chat.completions.create if route == "chat" else None
            if route == "completions":
                ask = dict(model=tiny_llava, prompt="hello", max_tokens=2)
                create = client.completions.create
            with pytest.raises(openai.BadRequestError, match=ADMISSION) as err:
                create(**ask, extra_body={"prune_ratio": 0.5})
            assert err.value.body["param"] == "prune_ratio"
            assert create(**ask).usage.prompt_tokens > 0  # still serving
    finally:
        stop_server(proc)


def test_our_middleware_without_admission_fails_at_start(tiny_llava, tmp_path):
    """A deployment that lists the usage middleware but drops admission does not start."""
    others = [f"--middleware={m}" for m in cli.MIDDLEWARE if m != ADMISSION]
    log = tmp_path / "vllm-serve.log"
    with pytest.raises(RuntimeError, match="server exited"):
        proc, _ = start_server(tiny_llava, log, *others, launcher=VLLM_SERVE)
        stop_server(proc)  # only reached if it started: the test then fails
    assert f"PruningUsageMiddleware needs --middleware={ADMISSION}" in log.read_text()
