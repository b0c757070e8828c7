"""A real zspa-serve process on the tiny LLaVA, reached over HTTP with the openai client.
Helpers shared with other test modules live in ``tests.support.server``."""

from __future__ import annotations

import pytest

from tests.support.server import API_KEY, DEFAULT_RATIO, MAX_BODY, Server, start_server, stop_server


@pytest.fixture(scope="session")
def server(tiny_llava, tmp_path_factory) -> Server:
    log = tmp_path_factory.mktemp("serve") / "zspa-serve.log"
    proc, url = start_server(
        tiny_llava,
        log,
        "--prune-ratio",
        str(DEFAULT_RATIO),
        "--api-key",
        API_KEY,
        "--max-request-body-bytes",
        str(MAX_BODY),
    )
    yield Server(url=url, model=tiny_llava, log=log)
    stop_server(proc)
