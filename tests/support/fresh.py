"""Call a test-support function in a fresh Python process.

    python -m tests.support.fresh MODULE:FUNCTION PAYLOAD_JSON

vLLM plugins register once per process and some settings (``ZSPA_DISABLE``, selector entry
points) are read at start, so tests that compare such processes run real functions of
``tests.support`` here, never code strings. The function takes the decoded payload; its
JSON-encodable return value is printed on one line prefixed ``RESULT``.
"""

from __future__ import annotations

import importlib
import json
import sys

PREFIX = "RESULT"

if __name__ == "__main__":
    module, _, name = sys.argv[1].partition(":")
    result = getattr(importlib.import_module(module), name)(json.loads(sys.argv[2]))
    print(PREFIX + json.dumps(result), flush=True)
