"""A private Docker engine and the images the Docker tests run (scripts/test-docker).

No image registry is reachable here, so nothing is pulled: the base image is a Debian bookworm
made with debootstrap (Debian's packages are reachable) and imported once; docker/Dockerfile.cpu
is built on it with PyPI's wheels (its build arguments), and a Prometheus image is built on it
from Debian's `prometheus` package. The engine is Debian's `docker.io` (dockerd 20.10) with the
vfs storage driver, no iptables, no bridge (containers use the host's network), and its own data
root, socket and pid file; it is stopped when the session ends.

Environment:
  ZSPA_DOCKER_DIR     the engine's data root, kept between runs so the base image and the
                      build cache are reused (default: $XDG_CACHE_HOME/zspa-vllm/docker);
                      `ZSPA_DOCKER_DIR=$(mktemp -d)` is a fresh machine's run
  ZSPA_DEBIAN_MIRROR  debootstrap's mirror (default: http://deb.debian.org/debian)
  ZSPA_PIP_CERT       CA bundle handed to pip in the build as a secret (default: the system's
                      /etc/ssl/certs/ca-certificates.crt, where it exists)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.docker import MEASURED, ROOT, Engine, run, tool

HERE = Path(__file__).resolve().parent
BASE_PACKAGES = "python3,python3-venv,python3-dev"  # what docker/Dockerfile.cpu asks of a base
BASE_IMAGE = "zspa-test/base:bookworm-" + BASE_PACKAGES.replace(",", "-")
CPU_IMAGE = "zspa-vllm:cpu"  # the tag docker/docker-compose.cpu.yml runs
PROMETHEUS_IMAGE = "zspa-test/prometheus:debian"


def pytest_terminal_summary(terminalreporter) -> None:
    if MEASURED:
        terminalreporter.section("docker phases (wall time, engine data root after)")
        for phase, (seconds, size) in MEASURED.items():
            terminalreporter.line(f"{phase:<24} {seconds:7.1f} s   {size / 2**30:6.1f} GiB")


@pytest.fixture(scope="session")
def engine() -> Engine:
    if os.geteuid() != 0:
        pytest.fail("the Docker tests start their own dockerd: run them as root")
    dockerd = tool("dockerd", "/usr/sbin/dockerd")
    # Debian's CLI (20.10) beside its dockerd: a newer CLI found first on PATH would want
    # buildx for BuildKit builds.
    docker_cli = tool("docker", "/usr/bin/docker")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "zspa-vllm"
    data_root = Path(os.environ.get("ZSPA_DOCKER_DIR", cache / "docker")).resolve()
    data_root.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="zspa-dockerd-"))  # short: socket paths
    sock = run_dir / "docker.sock"
    log = data_root / "dockerd.log"
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}", "DOCKER_BUILDKIT": "1"}
    env.pop("DOCKER_CONTEXT", None)
    start = time.monotonic()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                dockerd,
                "--storage-driver=vfs",
                "--iptables=false",
                "--ip-masq=false",
                "--bridge=none",
                f"--data-root={data_root}",
                f"--exec-root={run_dir}/exec",
                f"--pidfile={run_dir}/dockerd.pid",
                f"--host=unix://{sock}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    engine = Engine(data_root=data_root, env=env, docker_cli=docker_cli)
    try:
        deadline = time.monotonic() + 60
        while engine.docker("version", check=False).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dockerd did not start; see {log}")
            time.sleep(0.5)
        engine.measure("engine start", start)
        yield engine
    finally:
        proc.terminate()  # dockerd stops its containers and its containerd
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # dockerd leaves its default network namespace mounted under its exec root.
        for line in Path("/proc/mounts").read_text().splitlines():
            target = line.split()[1]
            if target.startswith(f"{run_dir}/"):
                subprocess.run(["umount", "-l", target], check=False)
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def base_image(engine: Engine, tmp_path_factory) -> str:
    """Debian bookworm (debootstrap minbase + Python), imported once per data root."""
    if engine.has_image(BASE_IMAGE):
        return BASE_IMAGE
    debootstrap = tool("debootstrap", "/usr/sbin/debootstrap")
    mirror = os.environ.get("ZSPA_DEBIAN_MIRROR", "http://deb.debian.org/debian")
    # A directory debootstrap creates (0755): the image's / gets this directory's mode, and
    # mktemp's 0700 would lock every non-root user out of the whole filesystem.
    rootfs = tmp_path_factory.mktemp("base") / "rootfs"
    start = time.monotonic()
    run(
        [
            debootstrap,
            "--variant=minbase",
            f"--include={BASE_PACKAGES}",
            "bookworm",
            rootfs,
            mirror,
        ],
        timeout=1800,
    )
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (rootfs / junk).glob("*"):
            if path.is_file():
                path.unlink()
    rootfs.chmod(0o755)
    tar = subprocess.Popen(
        ["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE
    )
    engine.docker(
        "import",
        "--change",
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--change",
        "ENV LANG=C.UTF-8",
        "--change",
        'CMD ["bash"]',
        "-",
        BASE_IMAGE,
        stdin=tar.stdout,
    )
    assert tar.wait() == 0
    shutil.rmtree(rootfs.parent)
    engine.measure("base: debootstrap+import", start)
    return BASE_IMAGE


def build(engine: Engine, dockerfile: Path, tag: str, context: Path, **args: str) -> None:
    cmd = ["build", "--network=host", "--progress=plain", "-f", str(dockerfile), "-t", tag]
    cert = os.environ.get("ZSPA_PIP_CERT", "/etc/ssl/certs/ca-certificates.crt")
    if cert and Path(cert).is_file():
        cmd += ["--secret", f"id=pip-cert,src={cert}"]
    for key, value in args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    engine.docker(*cmd, str(context), timeout=3600)


@pytest.fixture(scope="session")
def cpu_image(engine: Engine, base_image: str) -> str:
    """docker/Dockerfile.cpu on the local base, torch from the lock (PyPI: no PyTorch index)."""
    start = time.monotonic()
    build(
        engine,
        ROOT / "docker/Dockerfile.cpu",
        CPU_IMAGE,
        ROOT,
        BASE_IMAGE=base_image,
        TORCH_INDEX_URL="",
    )
    engine.measure("build Dockerfile.cpu", start)
    return CPU_IMAGE


@pytest.fixture(scope="session")
def prometheus_image(engine: Engine, base_image: str) -> str:
    """Stand-in for prom/prometheus: Debian's prometheus package on the local base."""
    start = time.monotonic()
    build(engine, HERE / "prometheus.Dockerfile", PROMETHEUS_IMAGE, HERE, BASE_IMAGE=base_image)
    engine.measure("build Prometheus image", start)
    return PROMETHEUS_IMAGE


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random-weight checkpoint of llava-interleave-qwen-0.5b's shape (the CPU compose
    file's model): SigLIP 384/14 (729 visual tokens) and a Qwen2 text model, readable by the
    image's uid 10001, with the context of the compose command (--max-model-len=8192; the real
    model has 32k)."""
    from zspa_vllm.testing.tiny_llava import build_tiny_llava

    path = build_tiny_llava(tmp_path_factory.mktemp("model") / "tiny-llava-qwen", tower="siglip")
    config = json.loads((path / "config.json").read_text())
    config["text_config"]["max_position_embeddings"] = 8192
    (path / "config.json").write_text(json.dumps(config, indent=2))
    for p in (path, *path.iterdir()):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return path
