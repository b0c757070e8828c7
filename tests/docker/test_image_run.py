"""docker/Dockerfile.cpu built and run for real: healthy, a pruned request, uid 10001, SIGTERM."""

from __future__ import annotations

import time

import pytest

from tests.support.docker import PORT, VISUAL, Engine, chat, port_is_free, wait_healthy
from zspa_vllm.pruning import keep_count

pytestmark = pytest.mark.docker

STOP_GRACE = 10  # `docker stop`'s default: SIGTERM, then SIGKILL after this many seconds


def test_cpu_image_serves_pruned_requests_as_uid_10001_and_stops_on_sigterm(
    engine: Engine, cpu_image: str, tiny_model
):
    name = "zspa-test-cpu"
    engine.docker("rm", "-f", name, check=False)
    assert port_is_free(PORT), f"port {PORT} is taken on this machine"
    start = time.monotonic()
    # The image's own entrypoint and flags as in docker/docker-compose.cpu.yml, with the model
    # mounted (no hub); --ipc=host as the compose file has it (vLLM needs >64 MiB of /dev/shm).
    args = ["--name", name, "--network=host", "--ipc=host", "-e", "VLLM_CPU_KVCACHE_SPACE=1"]
    args += ["-v", f"{tiny_model}:/models/tiny:ro", cpu_image, "/models/tiny"]
    args += ["--host=127.0.0.1", f"--port={PORT}", "--dtype=bfloat16", "--max-model-len=8192"]
    try:
        engine.docker("run", "-d", *args, "--prune-ratio=0.5")
        created = time.monotonic() - start  # vfs copies the image into the container's layer
        healthy = wait_healthy(engine, name, timeout=900)
        engine.measure("run: create+healthy", start)
        print(f"container created in {created:.0f} s, healthy {healthy:.0f} s later")

        # The server process (PID 1: exec-form ENTRYPOINT) runs as the image's uid 10001.
        status = engine.docker("exec", name, "cat", "/proc/1/status").stdout
        uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
        assert uids == ["10001"] * 4, status
        assert "zspa-serve" in engine.docker("exec", name, "cat", "/proc/1/cmdline").stdout

        full = chat("/models/tiny", prune_ratio=0.0)
        assert (full["visual_tokens_before"], full["visual_tokens_after"]) == (VISUAL, VISUAL)
        default = chat("/models/tiny")  # the server's --prune-ratio=0.5
        assert default["visual_tokens_after"] == keep_count(VISUAL, 0.5)
        pruned = chat("/models/tiny", prune_ratio=0.75)
        assert pruned["visual_tokens_before"] == VISUAL
        assert pruned["visual_tokens_after"] == keep_count(VISUAL, 0.75)
        assert pruned["prompt_tokens"] == full["prompt_tokens"] - VISUAL + keep_count(VISUAL, 0.75)

        stop = time.monotonic()
        engine.docker("stop", f"--time={STOP_GRACE}", name)
        stopped = time.monotonic() - stop
        state = engine.inspect(name)["State"]
        # Exit 0 well inside the grace period: SIGTERM shut it down, no SIGKILL (137) needed.
        assert state["ExitCode"] == 0, state
        assert stopped < STOP_GRACE - 1, f"stop took {stopped:.1f} s"
        print(f"stopped on SIGTERM in {stopped:.1f} s")
    except BaseException:
        logs = engine.docker("logs", "--tail", "80", name, check=False)
        print(logs.stdout[-8000:], logs.stderr[-8000:])
        raise
    finally:
        engine.docker("rm", "-f", name, check=False)  # frees its ~13 GB (vfs) for compose
