"""Shared checks of the selector against the float64 reference (unit and kernel tests)."""

from __future__ import annotations

import torch

from tests.support import reference as ref
from zspa_vllm import pruning as P

# float32 cosines over D <= 4096 carry errors around 1e-6; two candidates whose float64
# scores differ by less than this may legitimately be ordered either way.
NEAR_TIE = 2e-5


def gaussian(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def clustered(n: int, d: int, seed: int, clusters: int = 8) -> torch.Tensor:
    """Tokens around a few centres, like the patches of a real image (sky, object...)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, d, generator=g) * 3
    labels = torch.randint(0, clusters, (n,), generator=g)
    return centres[labels] + 0.3 * torch.randn(n, d, generator=g)


def check_against_reference(visual, prompt, keep, core_ratio=0.6) -> bool:
    """Assert the implementation's selection order matches the reference.

    Returns True if the whole selection matched, False if it stopped at a near-tie
    (where float32 may break the other way); raises AssertionError on a real divergence.
    """
    core, fill = P.zspa_order(visual, prompt, keep, core_ratio)
    r_core, r_fill, rel, scores = ref.zspa(visual, prompt, keep, core_ratio)
    core, fill = core.tolist(), fill.tolist()
    if set(core) != set(r_core):
        boundary = float(rel[r_core[-1]])
        for i in set(core) - set(r_core):
            gap = boundary - float(rel[i])
            assert gap < NEAR_TIE, f"core token {i} is {gap:.2e} below the reference core"
        return False
    for step, (got, want) in enumerate(zip(fill, r_fill, strict=True)):
        if got != want:
            gap = float(scores[step][want] - scores[step][got])
            assert gap < NEAR_TIE, (
                f"fill step {step}: picked {got}, reference {want}, gap {gap:.2e}"
            )
            return False
    assert P.zspa_select(visual, prompt, keep, core_ratio).tolist() == sorted(core + fill)
    return True
