"""Suite-wide guards: GPU tests skip cleanly without CUDA; a run where nothing passed fails."""

from __future__ import annotations

import os

import pytest
import torch

_passed = 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The Docker tests start their own Docker engine and build a 7 GB image (~15 min): they run
    # only when asked for, by `-m docker` or ZSPA_DOCKER_TESTS=1 (as scripts/test-docker does).
    asked = "docker" in (config.option.markexpr or "") or os.environ.get("ZSPA_DOCKER_TESTS")
    if not asked:
        skip_docker = pytest.mark.skip(reason="Docker engine test: run scripts/test-docker")
        for item in items:
            if item.get_closest_marker("docker"):
                item.add_marker(skip_docker)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    global _passed
    if report.when == "call" and report.passed:
        _passed += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # pytest exits 0 when every test was skipped or deselected; a suite where nothing
    # actually passed must not look green.
    if exitstatus == 0 and _passed == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory) -> str:
    """A random-weight LLaVA-1.5-shaped checkpoint on disk (no model hub)."""
    from zspa_vllm.testing.tiny_llava import build_tiny_llava

    return str(build_tiny_llava(tmp_path_factory.mktemp("tiny-llava")))


@pytest.fixture(scope="session")
def tiny_llava_siglip(tmp_path_factory) -> str:
    """The llava-interleave-qwen shape: SigLIP tower (729 tokens) and a Qwen2 text model."""
    from zspa_vllm.testing.tiny_llava import build_tiny_llava

    return str(build_tiny_llava(tmp_path_factory.mktemp("tiny-llava-siglip"), tower="siglip"))


@pytest.fixture(scope="session", params=["qwen2_vl", "qwen2_5_vl"])
def tiny_qwen_vl(request, tmp_path_factory) -> tuple[str, str]:
    """(variant, path) of a random-weight Qwen2-VL / Qwen2.5-VL checkpoint (M-RoPE)."""
    from zspa_vllm.testing.tiny_qwen_vl import build_tiny_qwen_vl

    variant = request.param
    return variant, str(build_tiny_qwen_vl(tmp_path_factory.mktemp(variant), variant=variant))


@pytest.fixture(scope="session")
def tiny_qwen3_vl(tmp_path_factory) -> str:
    """A random-weight Qwen3-VL checkpoint (patch 16, deepstack, interleaved M-RoPE)."""
    from zspa_vllm.testing.tiny_qwen_vl import build_tiny_qwen_vl

    return str(build_tiny_qwen_vl(tmp_path_factory.mktemp("qwen3_vl"), variant="qwen3_vl"))


@pytest.fixture(scope="session")
def tiny_qwen3_vl_moe(tmp_path_factory) -> str:
    """A random-weight Qwen3-VL-MoE checkpoint: the dense one's shape, 4 experts per layer."""
    from zspa_vllm.testing.tiny_qwen_vl import build_tiny_qwen_vl

    path = tmp_path_factory.mktemp("qwen3_vl_moe")
    return str(build_tiny_qwen_vl(path, variant="qwen3_vl_moe"))


@pytest.fixture(scope="session")
def tiny_qwen3_5(tmp_path_factory) -> str:
    """A random-weight Qwen3.5: a Gated DeltaNet layer and a full-attention layer."""
    from zspa_vllm.testing.tiny_qwen_vl import build_tiny_qwen_vl

    return str(build_tiny_qwen_vl(tmp_path_factory.mktemp("qwen3_5"), variant="qwen3_5"))


@pytest.fixture(scope="session")
def tiny_qwen3_5_moe(tmp_path_factory) -> str:
    """Qwen3.5-MoE: as tiny_qwen3_5, every MLP 4 experts (2 per token) + a shared expert."""
    from zspa_vllm.testing.tiny_qwen_vl import build_tiny_qwen_vl

    path = tmp_path_factory.mktemp("qwen3_5_moe")
    return str(build_tiny_qwen_vl(path, variant="qwen3_5_moe"))


@pytest.fixture(scope="session")
def tiny_qwen3_5_attn(tmp_path_factory) -> str:
    """Qwen3.5 with every layer full attention (no Gated DeltaNet): runs in float32."""
    from zspa_vllm.testing.tiny_qwen_vl import build_tiny_qwen_vl

    path = tmp_path_factory.mktemp("qwen3_5_attn")
    return str(build_tiny_qwen_vl(path, variant="qwen3_5_attn"))


@pytest.fixture(scope="session")
def tiny_gemma3(tmp_path_factory) -> str:
    """A random-weight Gemma 3 checkpoint (SigLIP pooled to 64 soft tokens, sliding window)."""
    from zspa_vllm.testing.tiny_gemma3 import build_tiny_gemma3

    return str(build_tiny_gemma3(tmp_path_factory.mktemp("gemma3")))


@pytest.fixture(scope="session")
def tiny_internvl(tmp_path_factory) -> str:
    """A random-weight InternVL (HF format): dynamic tiles + thumbnail, 16 tokens per tile."""
    from zspa_vllm.testing.tiny_internvl import build_tiny_internvl

    return str(build_tiny_internvl(tmp_path_factory.mktemp("internvl")))


@pytest.fixture(scope="session")
def tiny_mistral3(tmp_path_factory) -> str:
    """A random-weight Mistral 3: Pixtral tower (variable sizes, rows with [IMG_BREAK])."""
    from zspa_vllm.testing.tiny_mistral3 import build_tiny_mistral3

    return str(build_tiny_mistral3(tmp_path_factory.mktemp("mistral3")))


@pytest.fixture(scope="session")
def tiny_llava_next(tmp_path_factory) -> str:
    """A random-weight LLaVA-NeXT: base view + anyres crops with image_newline rows."""
    from zspa_vllm.testing.tiny_llava_next import build_tiny_llava_next

    return str(build_tiny_llava_next(tmp_path_factory.mktemp("llava-next")))


@pytest.fixture(scope="session")
def tiny_llava_onevision(tmp_path_factory) -> str:
    """A random-weight LLaVA-OneVision: anyres crops (anyres_max_9 shrink), pooled videos."""
    from zspa_vllm.testing.tiny_llava_onevision import build_tiny_llava_onevision

    return str(build_tiny_llava_onevision(tmp_path_factory.mktemp("llava-onevision")))


@pytest.fixture(scope="session")
def tiny_qwen2_5_vl(tmp_path_factory) -> str:
    """Qwen2.5-VL alone (the server tests need one Qwen model, not the parametrized pair)."""
    from zspa_vllm.testing.tiny_qwen_vl import build_tiny_qwen_vl

    return str(build_tiny_qwen_vl(tmp_path_factory.mktemp("qwen2_5_vl"), variant="qwen2_5_vl"))
