"""A real Prometheus scrapes a real zspa-serve; every dashboard query returns data."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.server import free_port, messages

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/dashboards/zspa-vllm.json"
RULES = ROOT / "deploy/prometheus/rules.yml"
METRIC = re.compile(r"\b((?:vllm:|zspa_)[a-zA-Z0-9_:]+)")


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def grafana_to_promql(expr: str, model: str) -> str:
    """Substitute what Grafana would: the model variable and its interval macros."""
    return (
        # The path-like test model name has no regex metacharacters that matter here.
        expr.replace("$model_name", model)
        .replace("$__rate_interval", "1m")
        .replace("$__range", "10m")
    )


@pytest.fixture(scope="module")
def prometheus(server, tmp_path_factory):
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not installed: run scripts/setup-tools")
    work = tmp_path_factory.mktemp("prometheus")
    shutil.copy(RULES, work / "rules.yml")
    port = int(server.url.rsplit(":", 1)[1])
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yml"],
        "scrape_configs": [
            {"job_name": "zspa-serve", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
        ],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    listen = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address={listen}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(work / "prometheus.log").open("w"),
    )
    url = f"http://{listen}"
    for _ in range(120):
        try:
            if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail((work / "prometheus.log").read_text()[-3000:])
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def query(prometheus: str, promql: str) -> list:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=30)
    body = response.json()
    assert body["status"] == "success", (promql, body)
    return body["data"]["result"]


def test_every_dashboard_query_returns_data(server, prometheus):
    client = server.client()
    # Traffic over several scrapes, so that rate() sees increases within its window.
    for i in range(6):
        for ratio, method in ((0.5, "zspa"), (0.9, "divprune"), (0.0, "zspa")):
            client.chat.completions.create(
                model=server.model,
                messages=messages("what is in this picture?", 60 + i),
                max_tokens=3,
                extra_body={"prune_ratio": ratio, "prune_method": method},
            )
        time.sleep(1.0)
    time.sleep(3.0)  # the last scrape and a rule evaluation
    queries = dashboard_queries()
    assert len(queries) >= 15
    empty = [q for q in queries if not query(prometheus, grafana_to_promql(q, server.model))]
    assert not empty, f"dashboard queries without data: {empty}"
    names = {m for q in queries for m in METRIC.findall(q)}
    missing = [n for n in names if not query(prometheus, f'count({{__name__="{n}"}})')]
    assert not missing, f"dashboard names metrics the server does not export: {missing}"
    # The recording rules evaluate on the same data.
    ratio = query(prometheus, "model_name:zspa_effective_prune_ratio:rate5m")
    assert ratio and 0.0 < float(ratio[0]["value"][1]) < 1.0
    kv = query(prometheus, "model_name:zspa_kv_cache_bytes_saved:rate5m")
    assert kv and float(kv[0]["value"][1]) > 0.0


def test_template_variable_lists_the_served_model(server, prometheus):
    board = json.loads(DASHBOARD.read_text())
    (variable,) = board["templating"]["list"]
    metric, label = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]).groups()
    values = httpx.get(
        f"{prometheus}/api/v1/label/{label}/values", params={"match[]": metric}, timeout=30
    ).json()["data"]
    assert values == [server.model]
