"""deploy/ and docker/ checked by the real tools (no Docker engine or cluster here)."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from zspa_server.cli import MIDDLEWARE

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv's tools (scripts/setup-tools)


def run(*cmd: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True)


def tool(name: str) -> str:
    path = shutil.which(name, path=f"{BIN}:{os.environ.get('PATH', '')}")
    if path is None:
        pytest.fail(f"{name} is not installed: run scripts/setup-tools")
    return path


@pytest.mark.parametrize("dockerfile", ["docker/Dockerfile", "docker/Dockerfile.cpu"])
def test_dockerfiles_pass_hadolint(dockerfile):
    result = run(tool("hadolint"), "--no-color", dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", ["docker/Dockerfile", "docker/Dockerfile.cpu"])
def test_images_run_zspa_serve_as_non_root_with_a_healthcheck(dockerfile):
    lines = [line.strip() for line in (ROOT / dockerfile).read_text().splitlines()]
    assert 'ENTRYPOINT ["zspa-serve"]' in lines  # exec form
    assert any(line.startswith("USER 10001") for line in lines)
    assert any(line.startswith("HEALTHCHECK") for line in lines)
    assert any("/health" in line for line in lines)


@pytest.mark.parametrize(
    "files",
    [["docker/docker-compose.yml"], ["docker/docker-compose.yml", "docker/docker-compose.cpu.yml"]],
)
def test_compose_files_validate(files):
    args = [a for f in files for a in ("-f", f)]
    result = run(tool("docker-compose"), *args, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)  # JSON is YAML
    services = config["services"]
    assert set(services) == {"zspa", "prometheus", "grafana"}
    zspa = services["zspa"]
    gpu = "deploy" in zspa
    assert gpu == (len(files) == 1)  # the CPU override drops the GPU reservation
    assert zspa["image"] == ("zspa-vllm:latest" if gpu else "zspa-vllm:cpu")
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    for name in services:
        assert services[name]["healthcheck"]["test"], name
    mounts = {v["source"] for s in services.values() for v in s.get("volumes", [])}
    for path in ("deploy/prometheus", "deploy/grafana/provisioning", "deploy/grafana/dashboards"):
        assert str(ROOT / path) in mounts


def test_prometheus_config_and_rules_pass_promtool():
    promtool = tool("promtool")
    for args in (
        ("check", "config", "prometheus.yml"),
        ("check", "rules", "rules.yml"),
        ("test", "rules", "rules.test.yml"),
    ):
        result = run(promtool, *args, cwd=ROOT / "deploy/prometheus")
        assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_manifests_validate_against_the_api_schemas():
    core = [
        p for p in sorted((ROOT / "deploy/k8s").glob("*.yaml")) if p.name != "kustomization.yaml"
    ]
    result = run(tool("kubernetes-validate"), "--strict", *core)
    assert result.returncode == 0, result.stdout + result.stderr
    # The ServiceMonitor is a CRD the validator has no schema for: check its wiring.
    monitor = yaml.safe_load((ROOT / "deploy/k8s/servicemonitor.yaml").read_text())
    service = yaml.safe_load((ROOT / "deploy/k8s/service.yaml").read_text())
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    kustomization = yaml.safe_load((ROOT / "deploy/k8s/kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in core)


def test_dashboard_json_is_the_generators_output():
    result = run(sys.executable, "deploy/grafana/generate.py", "--check")
    assert result.returncode == 0, "stale: run .venv/bin/python deploy/grafana/generate.py"


def test_production_stack_values_load_our_middleware():
    values = yaml.safe_load((ROOT / "deploy/helm/production-stack-values.yaml").read_text())
    (spec,) = values["servingEngineSpec"]["modelSpec"]
    flags = spec["vllmConfig"]["extraArgs"]
    middleware = [f.split("=", 1)[1] for f in flags if f.startswith("--middleware=")]
    assert middleware == list(MIDDLEWARE)  # the same set and order as zspa-serve
    for path in middleware:
        module, name = path.rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), name))
