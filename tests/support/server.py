"""Real zspa-serve / vllm serve processes in tests, reached over HTTP."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.engine import image
from zspa_vllm.testing.servers import (  # noqa: F401 (re-exported for the test modules)
    VLLM_SERVE,
    ZSPA_SERVE,
    free_port,
    start_server,
    stop_server,
)

API_KEY = "test-key"
DEFAULT_RATIO = 0.5  # the server's --prune-ratio
MAX_BODY = 4_000_000  # small enough to test the 413 without a huge upload
MAX_IMAGES = 2  # servers.start_server's --limit-mm-per-prompt


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


def data_url(seed: int, size: int = 336) -> str:
    buf = io.BytesIO()
    image(seed, size).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def mp4_url(seed: int, frames: int = 4, w: int = 168, h: int = 112) -> str:
    """An mp4 data URL of ``frames`` random frames at 2 fps (what a client uploads)."""
    import tempfile

    import cv2
    import numpy as np

    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        writer = cv2.VideoWriter(f.name, cv2.VideoWriter_fourcc(*"mp4v"), 2.0, (w, h))
        rng = np.random.RandomState(seed)
        for _ in range(frames):
            writer.write((rng.rand(h, w, 3) * 255).astype("uint8"))
        writer.release()
        return "data:video/mp4;base64," + base64.b64encode(f.read()).decode()


def messages(question: str, *seeds: int) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": data_url(s)}} for s in seeds]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": question}]}]


def kv_bytes_per_token(model_dir: str) -> int:
    """From the checkpoint's config.json, independently of vLLM: every layer keeps a key and
    a value per KV head; the test servers run float32 (4 bytes)."""
    text = json.loads((Path(model_dir) / "config.json").read_text())["text_config"]
    head = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    return text["num_hidden_layers"] * 2 * text["num_key_value_heads"] * head * 4


def ask(server: Server, parts: list[dict], **prune):
    """One chat turn: ``parts`` (media) then the question "describe", greedy, 2 tokens."""
    return server.client().chat.completions.create(
        model=server.model,
        messages=[{"role": "user", "content": [*parts, {"type": "text", "text": "describe"}]}],
        max_tokens=2,
        temperature=0.0,
        extra_body=prune,
    )
