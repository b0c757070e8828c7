"""What `pip install zspa-vllm` puts in site-packages: our two packages, no generic names."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]


def test_every_source_package_is_installed_under_a_project_name():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    installed = set(setuptools["packages"])
    mapped = setuptools.get("package-dir", {})
    where = {name: mapped.get(name, name.replace(".", "/")) for name in installed}
    # Every folder with an __init__.py under our two source roots is listed (a new
    # subpackage left out would be missing from the wheel, not from the checkout).
    on_disk = {
        str(init.parent.relative_to(ROOT))
        for top in ("zspa_vllm", "server")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert on_disk == set(where.values())
    tops = {name.split(".")[0] for name in installed}
    assert tops == {"zspa_vllm", "zspa_server"}  # no top-level "server"


def test_the_console_script_and_middleware_use_the_installed_name():
    import zspa_server.cli

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["zspa-serve"] == "zspa_server.cli:main"
    assert all(m.startswith("zspa_server.") for m in zspa_server.cli.MIDDLEWARE)
