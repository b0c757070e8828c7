"""One numeric pruning option: its name, range, default and help, stated once.

Everything that accepts the option derives from this object: the request validation
(``config.resolve``), the server's pydantic fields and ``/openapi.json``
(``zspa_server.options``), the ``zspa-serve --prune-*`` flags, and ``keep_count``. So a
range is written in one place and every error message names the same allowed values.
Pure Python: imported by the selectors, which never import vLLM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Every request key of ours starts with this (``prune_ratio``, ``prune_core_ratio``...): a
# misspelt one (prune_rato) is an error, not ignored.
PREFIX = "prune_"


@dataclass(frozen=True)
class NumberOption:
    """A real-valued option in ``[low, high]`` (``[low, high)`` when ``high_open``).

    Attributes:
        name: the selector's keyword (``core_ratio``); the request key is ``prune_<name>``.
        default: the built-in value.
        low, high, high_open: the allowed range; NaN and infinities never pass.
        help: one sentence for ``--help``, ``/openapi.json`` and README.
    """

    name: str
    default: float
    low: float
    high: float
    high_open: bool = False
    help: str = ""

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.name.startswith(PREFIX):
            raise ValueError(f"option name must be an identifier without {PREFIX!r}: {self.name!r}")
        self.check(self.default, "default")

    @property
    def key(self) -> str:
        """The request / ``mm_processor_kwargs`` key."""
        return PREFIX + self.name

    @property
    def flag(self) -> str:
        """The ``zspa-serve`` flag that sets the server default."""
        return "--" + self.key.replace("_", "-")

    @property
    def interval(self) -> str:
        return f"[{_fmt(self.low)}, {_fmt(self.high)}{')' if self.high_open else ']'}"

    @property
    def allowed(self) -> str:
        """The allowed values, in the words every error message uses."""
        return f"a number in {self.interval}"

    def contains(self, value: float) -> bool:
        if math.isnan(value) or value < self.low:
            return False
        return value < self.high if self.high_open else value <= self.high

    def check(self, value: object, name: str | None = None) -> float:
        """``value`` as a float, or ``ValueError`` naming the key and the allowed values.

        Booleans and strings are refused (``True`` is not a ratio), ints are numbers.
        """
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not self.contains(float(value))
        ):
            raise ValueError(f"{name or self.key} must be {self.allowed}, got {value!r}")
        return float(value)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


RATIO = NumberOption(
    "ratio",
    default=0.0,
    low=0.0,
    high=1.0,
    high_open=True,
    help="share of each image's (and video's) visual tokens to drop before prefill (0: off)",
)
"""``prune_ratio``: the one option every selector shares."""
