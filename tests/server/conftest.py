"""A real zspa-serve process on the tiny LLaVA, reached over HTTP with the openai client."""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import image

API_KEY = "test-key"
DEFAULT_RATIO = 0.5  # the server's --prune-ratio
MAX_BODY = 4_000_000  # small enough to test the 413 without a huge upload
MAX_IMAGES = 2


@dataclass
class Server:
    url: str
    model: str
    log: Path

    def client(self, api_key: str = API_KEY):
        from openai import OpenAI

        return OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0)

    def async_client(self):
        from openai import AsyncOpenAI

        return AsyncOpenAI(base_url=f"{self.url}/v1", api_key=API_KEY, max_retries=0)

    def metrics(self) -> dict[tuple[str, tuple], float]:
        """Every sample of /metrics, keyed by (name, sorted labels)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ZSPA_SERVE = ("-m", "server")
# Plain `vllm serve` (vLLM's own parser and launcher; its console script does not run on the
# CPU wheel), as production-stack's Helm chart starts engines.
VLLM_SERVE = (str(Path(__file__).with_name("vllm_serve.py")),)


def start_server(
    model: str, log: Path, *extra: str, launcher: tuple[str, ...] = ZSPA_SERVE
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable,
        *launcher,
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        "2048",
        "--limit-mm-per-prompt",
        f'{{"image": {MAX_IMAGES}}}',
        *extra,
    ]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the server runs as deployed
    handle = log.open("w")
    proc = subprocess.Popen(
        cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"zspa-serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop_server(proc)
    pytest.fail(f"zspa-serve did not become healthy:\n{log.read_text()[-4000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


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


def data_url(seed: int, size: int = 336) -> str:
    buf = io.BytesIO()
    image(seed, size).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def messages(question: str, *seeds: int) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": data_url(s)}} for s in seeds]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": question}]}]
