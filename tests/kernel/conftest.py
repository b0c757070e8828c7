"""The selector's Triton backend, run wherever it can run.

These tests exercise ``ZSPA_SELECT_BACKEND=triton``; they are collected only in a run that
set it: tests/unit/test_greedy_kernel.py starts one on the CPU under ``TRITON_INTERPRET=1``
(every CI run) and, where a GPU is present, one on CUDA with the compiled kernel.
"""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("ZSPA_SELECT_BACKEND") != "triton":
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session")
def device() -> torch.device:
    # The interpreter runs kernels on CPU tensors; compiled Triton needs CUDA ones.
    return torch.device("cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda")
