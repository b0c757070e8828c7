"""Peak resident memory of one call, measured in a fresh Python process (Linux).

``ru_maxrss`` survives ``fork`` + ``exec``: a child of a large pytest process starts with
its parent's high-water mark, which hides any smaller peak. ``VmHWM`` in
``/proc/self/status`` belongs to the new address space and is reset on demand by writing 5
to ``/proc/self/clear_refs``.
"""

from __future__ import annotations

import os
import subprocess
import sys

_TEMPLATE = """\
{setup}
def _hwm_mib():
    with open('/proc/self/status') as f:
        return next(int(l.split()[1]) for l in f if l.startswith('VmHWM:')) / 1024
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # the high-water mark restarts from the current RSS
_base = _hwm_mib()
{call}
print(_hwm_mib() - _base)
"""


def peak_growth_mib(setup: str, call: str, env: dict[str, str] | None = None) -> float:
    """MiB by which ``call`` raised the process's peak RSS after ``setup`` ran."""
    result = subprocess.run(
        [sys.executable, "-c", _TEMPLATE.format(setup=setup, call=call)],
        capture_output=True,
        text=True,
        env=os.environ | (env or {}),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return float(result.stdout.strip().splitlines()[-1])
