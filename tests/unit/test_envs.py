"""The plugin's environment variables: defaults, and bad values named with what is allowed."""

from __future__ import annotations

import pytest
import torch

from zspa_vllm import envs
from zspa_vllm import pruning as P


def test_defaults(monkeypatch):
    monkeypatch.delenv(envs.SELECT_BACKEND, raising=False)
    monkeypatch.delenv(envs.GRAM_MAX_MIB, raising=False)
    assert envs.select_backend() == "auto"
    assert P.gram_max_bytes() == P.GRAM_MAX_BYTES == 256 << 20
    # auto on CPU tensors: the torch loop (the CPU engine path does not change).
    assert P._plan([0], [torch.randn(10, 4)]) == [([0], False)]


@pytest.mark.parametrize("value", ["cuda", "TRITON ", "1"])
def test_bad_backend_names_the_variable_and_the_choices(monkeypatch, value):
    monkeypatch.setenv(envs.SELECT_BACKEND, value)
    if value.strip().lower() == "triton":
        assert envs.select_backend() == "triton"  # case and spaces are forgiven
        return
    with pytest.raises(ValueError, match=r"ZSPA_SELECT_BACKEND must be one of \['auto', "):
        envs.select_backend()


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "lots"])
def test_bad_gram_bound_names_the_variable(monkeypatch, value):
    monkeypatch.setenv(envs.GRAM_MAX_MIB, value)
    with pytest.raises(ValueError, match="ZSPA_GRAM_MAX_MIB must be a positive integer"):
        P.gram_max_bytes()


def test_gram_bound_override(monkeypatch):
    monkeypatch.setenv(envs.GRAM_MAX_MIB, "1024")
    assert P.gram_max_bytes() == 1 << 30
