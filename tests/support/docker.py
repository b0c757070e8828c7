"""The private Docker engine of the docker-marked tests, and talking to what runs in it."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openai
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
PORT = 8000  # the images' port (HEALTHCHECK, compose); containers use the host's network
VISUAL = 729  # SigLIP 384/14: 27 x 27 patches, all kept by the llava-interleave shape

# Phase -> (seconds, data-root bytes after it), printed at the end of the run.
MEASURED: dict[str, tuple[float, int]] = {}


@dataclass
class Engine:
    """The private dockerd; ``docker()`` and ``compose()`` talk to it."""

    data_root: Path
    env: dict[str, str]
    docker_cli: str

    def docker(self, *args: str, check: bool = True, timeout: float = 1800, **kw):
        return run([self.docker_cli, *args], env=self.env, check=check, timeout=timeout, **kw)

    def compose(self, *args: str, env: dict[str, str], check: bool = True, timeout=900):
        return run(
            [tool("docker-compose"), *args], env={**self.env, **env}, check=check, timeout=timeout
        )

    def has_image(self, ref: str) -> bool:
        return self.docker("image", "inspect", ref, check=False).returncode == 0

    def inspect(self, container: str) -> dict:
        return json.loads(self.docker("inspect", container).stdout)[0]

    def size(self) -> int:
        out = subprocess.run(["du", "-sxb", str(self.data_root)], capture_output=True, text=True)
        return int(out.stdout.split()[0]) if out.returncode == 0 else -1

    def measure(self, phase: str, start: float) -> None:
        MEASURED[phase] = (time.monotonic() - start, self.size())


def run(cmd, *, env=None, check=True, timeout=1800, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=timeout, **kw
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, cmd))} -> {proc.returncode}\n{proc.stdout[-4000:]}\n"
            f"{proc.stderr[-4000:]}"
        )
    return proc


def tool(name: str, *candidates: str) -> str:
    for path in (*candidates, shutil.which(name, path=f"{ROOT}/.venv/bin:{os.environ['PATH']}")):
        if path and os.access(path, os.X_OK):
            return path
    pytest.fail(f"{name} is not installed: run scripts/test-docker (it installs what it needs)")


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        return s.connect_ex(("127.0.0.1", port)) != 0


def wait_healthy(engine: Engine, container: str, timeout: float) -> float:
    """Seconds until the container's HEALTHCHECK says healthy; fails on exit or timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        state = engine.inspect(container)["State"]
        if state.get("Health", {}).get("Status") == "healthy":
            return time.monotonic() - start
        if state["Status"] in ("exited", "dead") or state.get("Restarting"):
            break
        time.sleep(2)
    logs = engine.docker("logs", "--tail", "60", container, check=False)
    pytest.fail(
        f"{container} not healthy: {engine.inspect(container)['State']}\n"
        f"{logs.stdout[-6000:]}{logs.stderr[-6000:]}"
    )


def data_url(seed: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (384, 384, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def chat(model: str, **extra) -> dict:
    """One chat completion with an image through the official client; the usage object."""
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{PORT}/v1", api_key="unused")
    reply = client.chat.completions.create(
        model=model,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": data_url(0)}},
                    {"type": "text", "text": "what is in this image?"},
                ],
            }
        ],
        max_tokens=4,
        temperature=0.0,
        extra_body=extra or None,
    )
    return reply.usage.model_dump()
