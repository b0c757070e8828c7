"""Start and stop real OpenAI-compatible server processes (tests and benchmarks).

Each server runs in its own session (process group), so stopping it also stops vLLM's
engine-core and API-server children.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ZSPA_SERVE = ("-m", "zspa_server")
# Plain `vllm serve` (vLLM's own parser and launcher; its console script does not run on
# the CPU wheel), as production-stack's Helm chart starts engines. ZSPA_DISABLE=1: stock.
VLLM_SERVE = ("-m", "zspa_vllm.testing.vllm_serve")


TINY_MODEL_OPTIONS = (
    "--dtype",
    "float32",
    "--enforce-eager",
    "--max-model-len",
    "2048",
    "--limit-mm-per-prompt",
    '{"image": 2}',
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    model: str,
    log: Path,
    *extra: str,
    launcher: tuple[str, ...] = ZSPA_SERVE,
    env: dict[str, str] | None = None,
    timeout_s: float = 600,
    tiny_model_defaults: bool = True,
) -> tuple[subprocess.Popen, str]:
    """Start a server on a free local port; return it and its URL once /health answers.

    ``tiny_model_defaults``: options for the tiny random-weight models on CPU (float32,
    eager, 2048 tokens, up to two images per prompt); ``extra`` options come last and win.

    Raises:
        RuntimeError: with the tail of the server's log, if it exits or never gets healthy.
    """
    port = free_port()
    cmd = [
        sys.executable,
        *launcher,
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *(TINY_MODEL_OPTIONS if tiny_model_defaults else ()),
        *extra,
    ]
    environ = os.environ | {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"} | (env or {})
    environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the server runs as deployed
    proc = subprocess.Popen(
        cmd,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=environ,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop_server(proc)
    raise RuntimeError(f"server did not become healthy:\n{log.read_text()[-4000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
