"""Running the benchmark scripts from the repository root, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_script(*args: str, env: dict | None = None) -> None:
    result = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        env=os.environ | {"HF_HUB_OFFLINE": "1"} | (env or {}),
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
