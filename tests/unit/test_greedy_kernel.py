"""The selector's Triton backend in every CI run, without a GPU.

Triton reads ``TRITON_INTERPRET`` when it is imported, so the kernel tests run in a child
pytest: ``tests/kernel`` (the kernel against the float64 reference: batches of several N,
exact ties, zero vectors, K = 1, K = N, core = K, the memory split) and the selector's own
suite ``tests/unit/test_pruning.py``, all with ``ZSPA_SELECT_BACKEND=triton``. Where a GPU
is present, the same kernel tests also run compiled, on CUDA tensors.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_child_pytest(*args: str, interpret: bool) -> tuple[int, str]:
    env = os.environ | {"ZSPA_SELECT_BACKEND": "triton"}
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    return int(re.search(r"(\d+) passed", result.stdout)[1]), result.stdout


def test_kernel_and_selector_suites_in_the_triton_interpreter():
    # The two loop-specific checks patch the torch loop's internals; tests/kernel has the
    # kernel's own (and fails any test in which the torch loop runs at all).
    passed, out = run_child_pytest(
        "tests/kernel", "tests/unit/test_pruning.py", "-k", "not catches_a_wrong",
        interpret=True,
    )  # fmt: skip
    assert passed >= 110, out[-3000:]


@pytest.mark.gpu
def test_kernel_suite_compiled_on_cuda():
    passed, out = run_child_pytest("tests/kernel", interpret=False)
    assert passed >= 35, out[-3000:]
