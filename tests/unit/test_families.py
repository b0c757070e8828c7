"""The family specs: what they declare exists, and README lists exactly them."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

from zspa_vllm import families
from zspa_vllm.seam import plugin

ROOT = Path(__file__).resolve().parents[2]


def test_every_family_names_a_class_of_ours_that_sets_it():
    for family in families.FAMILIES:
        module, cls = family.model.split(":")
        source = Path(importlib.util.find_spec(module).origin).read_text()
        tree = ast.parse(source)
        classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
        assert cls in classes, family.model
        # The class declares its family (read from the AST: importing needs vLLM).
        body = ast.unparse(classes[cls])
        assert "zspa_family =" in body, family.model


def test_every_family_replaces_an_architecture_vllm_registers():
    # From the installed vLLM's registry source (no import): a typo would replace nothing.
    source = (
        Path(importlib.util.find_spec("vllm").origin).parent / "model_executor/models/registry.py"
    )
    registered = set(re.findall(r'^\s+"(\w+)": \(', source.read_text(), re.M))
    assert set(plugin.MODELS) <= registered


def test_readme_architecture_table_lists_exactly_the_families():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("### Supported architectures and position semantics", 1)[1]
    table = table.split("\n\n", 2)[1]
    rows = re.findall(r"^\| `(\w+)` \|", table, re.M)
    assert rows == [f.architecture for f in families.FAMILIES]


def test_media_specs_are_consistent():
    for family in families.FAMILIES:
        assert len(set(family.modalities)) == len(family.media), family.architecture
        for media in family.media:
            assert media.pixels in media.split_keys and media.pixels in media.input_keys
            assert media.embeds not in media.split_keys  # embeddings are never encoded
            if media.grid is not None:
                assert media.grid in media.item_keys
