"""The selector registry: one ``SelectorSpec`` per method, and nothing else to edit.

A spec names the method, gives its batch function and declares its own numeric options.
Everything that knows about methods is generated from the registry: the ``prune_method``
values and every ``prune_<option>`` key accepted by ``config.resolve`` (offline and engine
defaults), the server's request fields and ``/openapi.json``, the ``zspa-serve`` flags, and
the processor -> worker per-item fields (one float64 field per option). Adding a method
is one ``register`` call (or one entry point, below); no other module changes.

Third-party selectors register through the ``zspa_vllm.selectors`` entry-point group: the
entry point names a ``SelectorSpec`` (or a zero-argument callable returning one or a list
of them). Entry points are loaded on first use of the registry, in every process that
uses it (vLLM's API server and its workers load the same installed distributions, so both
sides see the same methods). See README, "Adding a selector".

Pure torch (through ``pruning``): no vLLM, no FastAPI.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points

import torch

from zspa_vllm import pruning
from zspa_vllm.option import NumberOption

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "zspa_vllm.selectors"

BatchSelector = Callable[..., list[torch.Tensor]]
"""``fn(visuals, prompts, keeps, **{option: [one value per item]}) -> [sorted long indices]``.

``visuals[i]`` is ``[N_i, D]``, ``prompts[i]`` is ``[M_i, D]`` (``M_i`` may be 0),
``keeps[i] >= 1``; each result holds ``min(keeps[i], N_i)`` strictly increasing indices on
``visuals[i].device``. Conventions as in ``zspa_vllm.pruning``.
"""


@dataclass(frozen=True)
class SelectorSpec:
    """One selection method.

    Attributes:
        name: the ``prune_method`` value.
        select_batch: the batch function (``BatchSelector``); ``per_item`` adapts a
            one-image function.
        options: the method's own numeric options; each becomes the request key
            ``prune_<name>`` (shared by every method that declares the same option).
        help: one line for README tables and ``--help``.
    """

    name: str
    select_batch: BatchSelector
    options: tuple[NumberOption, ...] = field(default=())
    help: str = ""

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"selector name must be an identifier, got {self.name!r}")
        names = [o.name for o in self.options]
        if len(set(names)) != len(names) or "ratio" in names:
            raise ValueError(f"selector {self.name!r}: duplicate or reserved option in {names}")

    def __call__(
        self,
        visuals: Sequence[torch.Tensor],
        prompts: Sequence[torch.Tensor],
        keeps: Sequence[int],
        **options: object,
    ) -> list[torch.Tensor]:
        """Select for a batch; an option given as one value applies to every item, an
        omitted one takes its default."""
        n = len(visuals)
        unknown = set(options) - {o.name for o in self.options}
        if unknown:
            raise ValueError(
                f"method {self.name!r} takes options {[o.name for o in self.options]}, "
                f"got {sorted(unknown)}"
            )
        per_item = {}
        for o in self.options:
            value = options.get(o.name, o.default)
            values = list(value) if isinstance(value, (list, tuple)) else [value] * n
            if len(values) != n:
                raise ValueError(f"{o.name} must be one number or {n} numbers, got {len(values)}")
            per_item[o.name] = [o.check(v, o.name) for v in values]
        return self.select_batch(visuals, prompts, keeps, **per_item)


def per_item(fn: Callable[..., torch.Tensor]) -> BatchSelector:
    """A batch function from a one-image ``fn(visual, prompt, keep, **options)``."""

    def batch(visuals, prompts, keeps, **options):
        return [
            fn(v, p, k, **{name: values[i] for name, values in options.items()})
            for i, (v, p, k) in enumerate(zip(visuals, prompts, keeps, strict=True))
        ]

    return batch


CORE_RATIO = NumberOption(
    "core_ratio",
    default=pruning.DEFAULT_CORE_RATIO,
    low=0.0,
    high=1.0,
    help="share of the kept tokens chosen by relevance to the prompt (the rest by diversity)",
)

BUILTINS = (
    SelectorSpec(
        "zspa",
        pruning.zspa_select_batch,
        (CORE_RATIO,),
        help="ZSPAPrune: relevance core + max-min diversity fill",
    ),
    SelectorSpec(
        "relevance",
        per_item(pruning.relevance_select),
        help="top-K by cosine to the prompt vector",
    ),
    SelectorSpec(
        "divprune",
        pruning.divprune_select_batch,
        help="max-min diversity only, seeded with the most isolated token (DivPrune)",
    ),
    SelectorSpec(
        "random",
        per_item(pruning.random_select),
        help="K tokens uniformly at random, seeded (deterministic)",
    ),
    SelectorSpec("uniform", per_item(pruning.uniform_select), help="K evenly spaced tokens"),
)

_registry: dict[str, SelectorSpec] = {}
_plugins_loaded = False


def register(spec: SelectorSpec) -> SelectorSpec:
    """Add ``spec``; a second spec under a taken name, or an option that another method
    declares differently, is an error (requests would become ambiguous)."""
    if not isinstance(spec, SelectorSpec):
        raise TypeError(f"expected a SelectorSpec, got {type(spec).__name__}")
    current = _registry.get(spec.name)
    if current is not None and current != spec:
        raise ValueError(f"selector {spec.name!r} is already registered")
    for other in _registry.values():
        for mine in spec.options:
            theirs = next((o for o in other.options if o.name == mine.name), None)
            if theirs is not None and theirs != mine:
                raise ValueError(
                    f"selector {spec.name!r}: option {mine.key} differs from {other.name!r}'s"
                )
    _registry[spec.name] = spec
    return spec


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
        try:
            obj = ep.load()
            specs = obj() if callable(obj) and not isinstance(obj, SelectorSpec) else obj
            for spec in specs if isinstance(specs, (list, tuple)) else [specs]:
                register(spec)
        except Exception as exc:
            # A broken plugin must not take the server down with it, but must be visible.
            raise RuntimeError(
                f"zspa-vllm: selector entry point {ep.name!r} ({ep.value}) failed: {exc}"
            ) from exc


def specs() -> dict[str, SelectorSpec]:
    """Every registered method by name (built-ins, then entry points), sorted by name."""
    _load_plugins()
    return dict(sorted(_registry.items()))


def names() -> tuple[str, ...]:
    return tuple(specs())


def get(name: object) -> SelectorSpec:
    registered = specs()
    if not isinstance(name, str) or name not in registered:
        raise ValueError(f"prune_method must be one of {', '.join(registered)}, got {name!r}")
    return registered[name]


def options() -> dict[str, NumberOption]:
    """Every method's options by name (an option shared by methods appears once)."""
    return {o.name: o for spec in specs().values() for o in spec.options}


for _spec in BUILTINS:
    register(_spec)
