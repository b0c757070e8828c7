"""zspa_vllm/seam/compat.py: every upstream fact we rely on, on the installed vLLM (0.32, which
the suite runs) and on vLLM 0.33's sources (which cannot run here), and the failure a
missing fact gives."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from zspa_vllm.seam import compat

ROOT = Path(__file__).resolve().parents[2]
NEXT = ROOT / "requirements" / "vllm-next.txt"


@pytest.mark.parametrize("fact", compat.FACTS, ids=lambda f: f.name)
def test_installed_vllm_has(fact):
    assert compat._problem(compat.vllm_root(), fact) is None


def test_require_passes_and_resolves_the_moved_helpers():
    compat.require("model")
    compat.require("server")
    from vllm.entrypoints.launchers.cli_args import make_arg_parser  # 0.32's home

    assert compat.resolve("make_arg_parser") is make_arg_parser


def fake_vllm(tmp_path: Path, version: str = "0.99.0") -> Path:
    """The installed sources of every module a fact names, under a fake version."""
    real = compat.vllm_root()
    for fact in compat.FACTS:
        for module in fact.modules:
            src = compat._module_file(real, module)
            if src is not None:
                dst = tmp_path / src.relative_to(real)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, dst)
    (tmp_path / "vllm" / "_version.py").write_text(f"__version__ = version = '{version}'\n")
    return tmp_path


def test_a_missing_method_fails_loudly_naming_version_and_piece(tmp_path, monkeypatch):
    root = fake_vllm(tmp_path)
    processor = root / "vllm/multimodal/processing/processor.py"
    text = processor.read_text()
    processor.write_text(text.replace("def _get_mm_hashes(", "def _compute_mm_hashes("))
    monkeypatch.setattr(compat, "vllm_root", lambda: root)
    compat.require.cache_clear()
    try:
        with pytest.raises(compat.CompatError) as err:
            compat.require("model")
    finally:
        compat.require.cache_clear()
    message = str(err.value)
    assert "vLLM 0.99.0" in message and ">=0.32.0,<0.34" in message
    assert "BaseMultiModalProcessor has no _get_mm_hashes" in message
    assert "zspa_vllm/seam/processor.py" in message  # who relies on it


def test_a_renamed_parameter_and_a_moved_module_are_named(tmp_path):
    root = fake_vllm(tmp_path)
    protocol = root / "vllm/entrypoints/generate/base/protocol.py"
    protocol.write_text(protocol.read_text().replace("trust_request_mm_kwargs", "trust_kwargs"))
    (root / "vllm/connections.py").unlink()
    problems = "\n".join(compat.check(root, "server"))
    assert "validate_request_mm_kwargs has no parameter trust_request_mm_kwargs" in problems
    assert "no module vllm.connections" in problems


@pytest.mark.slow
def test_vllm_next_release_sources_have_every_fact(tmp_path):
    """vLLM 0.33: downloaded (hash-pinned), unpacked, parsed; never imported or run."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "zspa-vllm-wheels"
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--only-binary", ":all:", "--require-hashes", "-r", str(NEXT),
         "-d", str(cache)],
        check=True, timeout=1200,
    )  # fmt: skip
    pin = next(line for line in NEXT.read_text().splitlines() if line.startswith("vllm=="))
    version = pin.split("==")[1].split()[0]
    wheel = next(cache.glob(f"vllm-{version}-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp_path, [n for n in z.namelist() if n.endswith(".py")])
    assert compat.source_version(tmp_path) == version
    assert compat.check(tmp_path) == []
