"""Every environment the project builds is exactly its lock: nothing floats.

A fresh machine once resolved a new filelock for the accuracy harness (its lock held only
top-level names) and the suite failed there while cached machines stayed green. These
checks compare what is really installed with the lock files, package by package.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
REQ = ROOT / "requirements"
# This project (the venv holds it as an editable install of the checkout).
NOT_LOCKED = {"zspa-vllm"}


def pins(path: Path) -> dict[str, str]:
    """Canonical name -> exact version of every ``name==version`` line (comments allowed)."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", line)
        assert m, f"{path.name}: not an exact pin: {line!r}"
        name = canonicalize_name(m[1])
        assert name not in out, f"{path.name}: {name} pinned twice"
        out[name] = m[2]
    return out


def public(version: str) -> str:
    return version.split("+", 1)[0]  # "2.13.0+cpu" satisfies "==2.13.0"


def installed(python: str) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json;"
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return {canonicalize_name(k): v for k, v in json.loads(out.stdout).items()}


def assert_matches(
    env: dict[str, str], lock: dict[str, str], optional: frozenset[str] = frozenset()
) -> None:
    env = {k: v for k, v in env.items() if k not in NOT_LOCKED}
    unpinned = sorted(set(env) - set(lock))
    assert not unpinned, f"installed but not in the lock: {unpinned}"
    wrong = {k: (env[k], lock[k]) for k in env if public(env[k]) != public(lock[k])}
    assert not wrong, f"installed version != lock (installed, lock): {wrong}"
    missing = sorted(set(lock) - set(env) - optional)
    assert not missing, f"in the lock but not installed: {missing}"


def test_lock_files_are_exact_and_the_tool_lock_is_disjoint():
    cpu, tools = pins(REQ / "lock-cpu.txt"), pins(REQ / "lock-tools.txt")
    assert not set(cpu) & set(tools), "lock-tools.txt must only add packages"
    # Each top-level pin agrees with its lock (one fact, two files: they must not drift).
    for top, lock in [("tools.txt", tools), ("lmms-eval.txt", pins(REQ / "lock-lmms-eval.txt"))]:
        for name, version in pins(REQ / top).items():
            assert lock.get(name) == version, f"{top}: {name}=={version}, lock {lock.get(name)}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["optional-dependencies"]["dev"] + project["optional-dependencies"]["cpu"]:
        req = Requirement(spec)
        assert cpu[canonicalize_name(req.name)] in req.specifier, spec


def test_dev_venv_is_exactly_lock_cpu_plus_lock_tools():
    lock = pins(REQ / "lock-cpu.txt") | pins(REQ / "lock-tools.txt")
    assert_matches(installed(sys.executable), lock)


def test_console_scripts_run_the_venvs_own_python():
    """pip writes the interpreter it ran under into each script's #! line; the shared venv
    outlives the clone that installed it (a CI clone once left /check/... in every tool)."""
    bindir = Path(sys.prefix) / "bin"
    real = bindir.resolve()
    stale = []
    for script in sorted(bindir.iterdir()):
        if not script.is_file():
            continue
        with script.open("rb") as f:
            first = f.readline()
        if not first.startswith(b"#!") or b"python" not in first:
            continue
        interpreter = Path(first[2:].decode().split()[0])
        if interpreter.parent.resolve() != real or not interpreter.exists():
            stale.append(f"{script.name}: {interpreter}")
    assert not stale, f"console scripts of another python: {stale}"


def test_pins_catches_a_floating_package(tmp_path):
    # The comparison must be able to fail: a venv with an extra or a moved package.
    lock = {"filelock": "4.2.11", "torch": "2.13.0"}
    with pytest.raises(AssertionError, match="not in the lock"):
        assert_matches({"filelock": "4.2.11", "torch": "2.13.0+cpu", "six": "1.0"}, lock)
    with pytest.raises(AssertionError, match=r"filelock.*4\.3\.1"):
        assert_matches({"filelock": "4.3.1", "torch": "2.13.0"}, lock)
    assert_matches({"filelock": "4.2.11", "torch": "2.13.0+cpu"}, lock)
    (tmp_path / "r.txt").write_text("filelock>=4\n")
    with pytest.raises(AssertionError, match="not an exact pin"):
        pins(tmp_path / "r.txt")


@pytest.mark.slow
def test_harness_venv_is_exactly_its_lock():
    python = (
        subprocess.run(
            [str(ROOT / "scripts/setup-lmms-eval")], capture_output=True, text=True, check=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    # torchvision is removed where it cannot load beside a local +cpu torch (the script).
    lock = pins(REQ / "lock-lmms-eval.txt")
    assert_matches(installed(python), lock, optional=frozenset({"torchvision"}))
