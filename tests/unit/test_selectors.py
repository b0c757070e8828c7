"""The selector registry: built-ins, README's entry-point example, and what it generates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.support import selector_plugin
from tests.support.engine import fresh_process, run_fresh
from zspa_vllm import config, pruning, selectors
from zspa_vllm.option import RATIO, NumberOption
from zspa_vllm.selectors import SelectorSpec, per_item

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so a test's registrations do not leak."""
    monkeypatch.setattr(selectors, "_registry", dict(selectors._registry))
    return selectors


def test_builtins_are_the_pruning_functions():
    assert selectors.names() == tuple(sorted(pruning.METHODS))
    v, p = torch.randn(40, 8), torch.randn(3, 8)
    for name, fn in pruning.METHODS.items():
        assert selectors.get(name)([v], [p], [10])[0].tolist() == fn(v, p, 10).tolist(), name
    zspa = selectors.get("zspa")
    assert [o.key for o in zspa.options] == ["prune_core_ratio"]
    kept = zspa([v, v], [p, p], [10, 10], core_ratio=[0.2, 1.0])
    assert kept[0].tolist() == pruning.zspa_select(v, p, 10, 0.2).tolist()
    assert kept[1].tolist() == pruning.relevance_select(v, p, 10).tolist()


def test_option_values_are_checked_with_the_key_and_range():
    zspa = selectors.get("zspa")
    v, p = torch.randn(10, 4), torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"core_ratio must be a number in \[0, 1\], got 1.5"):
        zspa([v], [p], [3], core_ratio=1.5)
    with pytest.raises(ValueError, match=r"takes options \['core_ratio'\], got \['seed'\]"):
        zspa([v], [p], [3], seed=1)
    with pytest.raises(ValueError, match="one number or 2 numbers"):
        zspa([v, v], [p, p], [3, 3], core_ratio=[0.1])
    with pytest.raises(ValueError, match=r"prune_method must be one of divprune, .*zspa"):
        selectors.get("nope")


def test_ratio_range_is_stated_once():
    # keep_count, the request options and the server fields all refuse through RATIO.
    for bad in (1.0, -0.1, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match=r"prune_ratio must be a number in \[0, 1\)"):
            pruning.keep_count(10, bad)
        with pytest.raises(ValueError, match=r"prune_ratio must be a number in \[0, 1\)"):
            config.resolve({"prune_ratio": bad})
    assert RATIO.allowed == "a number in [0, 1)"


def test_register_refuses_ambiguity(registry):
    dup = SelectorSpec("zspa", per_item(pruning.uniform_select))
    with pytest.raises(ValueError, match="'zspa' is already registered"):
        registry.register(dup)
    other = NumberOption("core_ratio", default=0.5, low=0.0, high=1.0)
    clash = SelectorSpec("mine", per_item(pruning.uniform_select), (other,))
    with pytest.raises(ValueError, match="option prune_core_ratio differs from 'zspa'"):
        registry.register(clash)
    with pytest.raises(ValueError, match="duplicate or reserved option"):
        SelectorSpec("x", per_item(pruning.uniform_select), (NumberOption("ratio", 0, 0, 1),))
    with pytest.raises(ValueError, match="identifier without 'prune_'"):
        NumberOption("prune_x", 0, 0, 1)
    with pytest.raises(ValueError, match=r"default must be a number in \[0, 1\]"):
        NumberOption("x", 2, 0, 1)


def test_registered_option_becomes_a_request_key(registry):
    step = NumberOption("step", default=1.0, low=1.0, high=8.0, help="stride")
    registry.register(SelectorSpec("strided", per_item(pruning.uniform_select), (step,)))
    assert "prune_step" in config.option_keys()
    opts = config.resolve({"prune_method": "strided", "prune_step": 4})
    assert (opts.method, opts.params["step"], opts.params["core_ratio"]) == ("strided", 4.0, 0.6)
    with pytest.raises(ValueError, match=r"prune_step must be a number in \[1, 8\], got 9"):
        config.resolve({"prune_step": 9})


def test_readme_example_plugs_in_everywhere(tmp_path):
    """README's 20-line selector, installed as a distribution with an entry point, is a
    method of the registry, the request options, the server's fields and schema and the CLI."""
    site = selector_plugin.install(tmp_path / "site")
    out = run_fresh(selector_plugin.everywhere, None, selector_plugin.env(site))
    builtin = ["divprune", "random", "relevance", "uniform"]
    assert out["names"] == [*builtin, "window", "window_recorded", "zspa"]
    assert out["last"] == [6, 7, 8, 9] and out["first"] == [0, 1, 2]
    assert out["params"] == {"core_ratio": 0.6, "window_offset": 0.5}
    assert out["parsed"] == {"prune_method": "window", "prune_window_offset": 0.25}
    assert out["refused"] == [
        "prune_window_offset",
        "prune_window_offset must be a number in [0, 1]; got 1.5",
    ]
    assert (out["schema"]["minimum"], out["schema"]["maximum"]) == (0.0, 1.0)
    assert "window, window_recorded only" in out["schema"]["description"]
    assert out["cli"] == {"prune_window_offset": 0.75}


def test_broken_entry_point_is_named(tmp_path):
    site = selector_plugin.install(tmp_path / "site")
    points = site / "my_selector-0.1.dist-info" / "entry_points.txt"
    points.write_text(points.read_text() + "broken = my_selector:NOT_THERE\n")
    proc = fresh_process(selector_plugin.names, None, selector_plugin.env(site))
    assert proc.returncode == 1
    assert "selector entry point 'broken' (my_selector:NOT_THERE) failed" in proc.stderr
