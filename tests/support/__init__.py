"""Helpers shared by several test packages (importable as ``tests.support.*``), so test
modules never import each other or each other's conftest."""
