"""`docker compose up` with the real compose files (CPU variant) and only the offline swaps of
tests/docker/compose.offline.yml: zspa healthy, Prometheus scrapes it, zspa_ metrics query."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.support.docker import PORT, ROOT, VISUAL, Engine, chat, port_is_free, wait_healthy
from zspa_vllm.pruning import keep_count

pytestmark = pytest.mark.docker

FILES = [
    "docker/docker-compose.yml",
    "docker/docker-compose.cpu.yml",
    "tests/docker/compose.offline.yml",
]
PROMETHEUS = "http://127.0.0.1:9090"


def query(expr: str) -> list[dict]:
    reply = httpx.get(f"{PROMETHEUS}/api/v1/query", params={"query": expr}, timeout=10)
    reply.raise_for_status()
    return reply.json()["data"]["result"]


def eventually(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (httpx.HTTPError, KeyError, IndexError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(2)


def test_compose_up_serves_and_prometheus_scrapes_zspa(
    engine: Engine, cpu_image: str, prometheus_image: str, tiny_model
):
    env = {
        "ZSPA_MODEL": "/models/tiny",  # the compose files' own knob
        "ZSPA_TEST_MODEL_DIR": str(tiny_model),
        "ZSPA_TEST_PROMETHEUS_IMAGE": prometheus_image,
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; the CPU override's knob (default 4)
    }
    files = [arg for f in FILES for arg in ("-f", str(ROOT / f))]
    services = engine.compose(*files, "config", "--services", env=env).stdout.split()
    assert sorted(services) == ["prometheus", "zspa"]  # Grafana: no offline image
    for port in (PORT, 9090):
        assert port_is_free(port), f"port {port} is taken on this machine"
    start = time.monotonic()
    try:
        # The images exist (built by the fixtures): nothing to build or pull.
        engine.compose(*files, "up", "-d", "--no-build", "--pull=never", env=env)
        ids = engine.compose(*files, "ps", "-a", "-q", env=env).stdout.split()
        names = {
            engine.inspect(i)["Config"]["Labels"]["com.docker.compose.service"]: i for i in ids
        }
        assert sorted(names) == ["prometheus", "zspa"]
        wait_healthy(engine, names["zspa"], timeout=900)
        wait_healthy(engine, names["prometheus"], timeout=120)
        engine.measure("compose: up+healthy", start)

        usage = chat("/models/tiny", prune_ratio=0.75)
        assert usage["visual_tokens_after"] == keep_count(VISUAL, 0.75)

        def target_up():
            targets = httpx.get(f"{PROMETHEUS}/api/v1/targets", timeout=10).json()
            active = targets["data"]["activeTargets"]
            return [t for t in active if t["labels"]["job"] == "zspa-serve" and t["health"] == "up"]

        (target,) = eventually(target_up, 60, "Prometheus to scrape zspa:8000")
        assert target["scrapeUrl"] == "http://zspa:8000/metrics"

        def scraped(name: str, value: int):
            return [r for r in query(name) if float(r["value"][1]) == value]

        before = eventually(
            lambda: scraped("zspa_visual_tokens_before_pruning_total", VISUAL),
            60,
            "zspa_visual_tokens_before_pruning_total",
        )
        assert before[0]["metric"]["model_name"] == "/models/tiny"
        eventually(
            lambda: scraped("zspa_visual_tokens_after_pruning_total", keep_count(VISUAL, 0.75)),
            60,
            "zspa_visual_tokens_after_pruning_total",
        )
        # The rules from deploy/prometheus/rules.yml are loaded too.
        rules = httpx.get(f"{PROMETHEUS}/api/v1/rules", timeout=10).json()["data"]["groups"]
        assert rules
    except BaseException:
        logs = engine.compose(*files, "logs", "--tail=60", env=env, check=False)
        print(logs.stdout[-12000:], logs.stderr[-4000:])
        raise
    finally:
        down = time.monotonic()
        engine.compose(*files, "down", "-v", "--timeout=30", env=env)
        took = time.monotonic() - down
        print(f"compose down -v in {took:.1f} s")
    left = engine.docker("ps", "-aq", "--filter", "label=com.docker.compose.project=zspa-vllm")
    assert left.stdout.strip() == ""
    volumes = engine.docker(
        "volume", "ls", "-q", "--filter", "label=com.docker.compose.project=zspa-vllm"
    )
    assert volumes.stdout.strip() == ""
