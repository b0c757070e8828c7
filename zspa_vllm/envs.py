"""Environment variables read by the plugin (read here only, at call time)."""

from __future__ import annotations

import os

DISABLE = "ZSPA_DISABLE"
"""Set to 1/true/yes to make ``register()`` a no-op: vLLM then runs stock LLaVA."""


def plugin_disabled() -> bool:
    return os.environ.get(DISABLE, "").strip().lower() in {"1", "true", "yes", "on"}
