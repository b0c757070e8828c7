"""The Gram + one-launch kernel backend against the float64 reference and the torch loop."""

from __future__ import annotations

import pytest
import torch

from tests.support import reference as ref
from tests.support.peak_rss import peak_growth_mib
from tests.support.selection import NEAR_TIE, check_against_reference, clustered, gaussian
from zspa_vllm import gram_backend, greedy_kernel
from zspa_vllm import pruning as P


@pytest.fixture(autouse=True)
def no_torch_loop(monkeypatch):
    """Any use of the torch loop fails the test: the kernel must have run."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the torch loop ran on the triton backend")

    monkeypatch.setattr(P, "_greedy_fill", forbidden)


def divprune_matches_reference(visual: torch.Tensor, keep: int, got: list[int]) -> bool:
    """True on an exact match, False at a near-tie; raises on a real divergence."""
    want, scores = ref.divprune(visual.cpu(), keep)
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        if g != w:
            gap = float(scores[step][w] - scores[step][g])
            assert gap < NEAR_TIE, f"divprune step {step}: picked {g}, reference {w}, gap {gap:.2e}"
            return False
    return True


def divprune_order(visual: torch.Tensor, keep: int) -> list[int]:
    ((_, kernel),) = P._plan([0], [visual])
    assert kernel
    return gram_backend.divprune_order([visual], [keep])[0].tolist()


@pytest.mark.parametrize("make", [gaussian, clustered])
@pytest.mark.parametrize(("n", "d"), [(2, 3), (17, 5), (130, 64), (576, 128), (1030, 32)])
@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_zspa_matches_reference(device, make, n, d, ratio):
    visual, prompt = make(n, d, n).to(device), gaussian(6, d, n + 1).to(device)
    keep = P.keep_count(n, ratio)
    if keep < n:
        check_against_reference(visual, prompt, keep)


@pytest.mark.parametrize("make", [gaussian, clustered])
@pytest.mark.parametrize(("n", "d"), [(2, 3), (40, 16), (300, 64)])
def test_divprune_matches_reference(device, make, n, d):
    visual = make(n, d, n).to(device)
    keep = P.keep_count(n, 0.75)
    assert divprune_matches_reference(visual, keep, divprune_order(visual, keep))


def test_many_random_shapes_mostly_exact(device):
    exact = 0
    g = torch.Generator().manual_seed(11)
    for trial in range(30):
        n = int(torch.randint(2, 300, (1,), generator=g))
        d = int(torch.randint(1, 64, (1,), generator=g))
        keep = int(torch.randint(1, n, (1,), generator=g))
        core_ratio = float(torch.rand((), generator=g))
        make = gaussian if trial % 2 else clustered
        visual, prompt = make(n, d, trial).to(device), gaussian(4, d, 500 + trial).to(device)
        exact += check_against_reference(visual, prompt, keep, core_ratio)
    assert exact >= 25  # near-ties are rare: most runs must match step for step


def test_one_batch_of_different_sizes_equals_each_image_alone(device):
    # Several N in one launch (padding rows must never be picked), mixed budgets, core
    # ratios and one prompt-less image (divprune in the same call).
    sizes, d = [5, 130, 64, 1, 200, 33], 24
    visuals = [clustered(n, d, i).to(device) for i, n in enumerate(sizes)]
    prompts = [gaussian(3 + i, d, 100 + i).to(device) for i in range(len(sizes))]
    prompts[4] = torch.empty(0, d, device=device)
    keeps = [2, 13, 64, 1, 50, 1]
    cores = [0.6, 0.0, 0.5, 0.6, 1.0, 0.3]
    batch = P.zspa_select_batch(visuals, prompts, keeps, cores)
    for v, p, k, c, got in zip(visuals, prompts, keeps, cores, batch, strict=True):
        assert got.device.type == device.type
        alone = P.zspa_select(v, p, k, c)
        assert torch.equal(got, alone)
        if k < v.shape[0] and p.shape[0]:
            core, fill = P.zspa_order(v, p, k, c)
            assert sorted(core.tolist() + fill.tolist()) == got.tolist()
    assert torch.equal(batch[3], torch.arange(1, device=device))
    assert torch.equal(batch[2], torch.arange(64, device=device))  # K = N: everything


def test_ties_go_to_the_lowest_index(device):
    # Four exact copies of each of 8 orthogonal directions (cosines exactly 0 or 1): every
    # choice is an exact tie and must go to the lowest index, i.e. the first copy of each
    # direction in order; relevance to an all-ones prompt is a tie too.
    visual = torch.eye(8).repeat_interleave(4, dim=0).to(device)
    firsts = [4 * i for i in range(8)]
    assert divprune_order(visual, 8) == firsts
    core, fill = P.zspa_order(visual, torch.ones(2, 8, device=device), 8, core_ratio=0.25)
    assert core.tolist() == [0, 1] and fill.tolist() == firsts[1:7]


def test_zero_vectors_and_zero_prompt(device):
    visual = gaussian(60, 8, 3)
    visual[::4] = 0
    visual = visual.to(device)
    for prompt in (gaussian(3, 8, 4), torch.zeros(3, 8)):
        out = P.zspa_select(visual, prompt.to(device), 20)
        assert out.shape == (20,) and bool((out[1:] > out[:-1]).all())
        check_against_reference(visual, prompt.to(device), 20)


@pytest.mark.parametrize("keep", [1, 2])
def test_tiny_budgets(device, keep):
    visual, prompt = clustered(100, 16, 5).to(device), gaussian(3, 16, 6).to(device)
    check_against_reference(visual, prompt, keep, core_ratio=0.0)  # core is still >= 1
    assert divprune_matches_reference(visual, keep, divprune_order(visual, keep))


def test_core_equal_to_budget_is_relevance(device):
    visual, prompt = clustered(200, 16, 7).to(device), gaussian(5, 16, 8).to(device)
    assert torch.equal(
        P.zspa_select(visual, prompt, 30, 1.0), P.relevance_select(visual, prompt, 30)
    )


def test_half_precision_inputs_match_float32(device):
    visual, prompt = clustered(150, 32, 9), gaussian(4, 32, 10)
    for dtype in (torch.float16, torch.bfloat16):
        v, p = visual.to(dtype), prompt.to(dtype)
        got = P.zspa_select(v.to(device), p.to(device), 40)
        want = P.zspa_select(v.float().to(device), p.float().to(device), 40)
        assert torch.equal(got, want)  # similarities are computed in float32 either way


def test_batches_past_the_memory_bound_are_split(device, monkeypatch):
    sizes = [30, 90, 60, 120]
    visuals = [clustered(n, 16, i).to(device) for i, n in enumerate(sizes)]
    prompts = [gaussian(3, 16, 20 + i).to(device) for i in range(4)]
    keeps = [P.keep_count(n, 0.75) for n in sizes]
    together = P.zspa_select_batch(visuals, prompts, keeps)
    # Room for two 90-token Grams per launch: [30, 60, 90] cannot share one.
    monkeypatch.setattr(P, "GRAM_MAX_BYTES", 2 * 90 * 90 * 4)
    plan = P._plan(range(4), visuals)
    assert plan == [([0, 2], True), ([1], True), ([3], True)]
    split = P.zspa_select_batch(visuals, prompts, keeps)
    assert all(torch.equal(a, b) for a, b in zip(split, together, strict=True))


def test_images_too_large_for_the_kernel_take_the_torch_loop(device, monkeypatch):
    visuals = [gaussian(n, 8, n).to(device) for n in (40, 100)]
    monkeypatch.setattr(greedy_kernel, "MAX_BLOCK_N", 64)
    assert P._plan([0, 1], visuals) == [([0], True), ([1], False)]
    monkeypatch.setattr(greedy_kernel, "MAX_BLOCK_N", 16384)
    monkeypatch.setattr(P, "GRAM_MAX_BYTES", 50 * 50 * 4)  # a 100-token Gram is past it
    assert P._plan([0, 1], visuals) == [([0], True), ([1], False)]
    monkeypatch.setenv("ZSPA_GRAM_MAX_MIB", "1")  # the operator's bound wins
    assert P._plan([0, 1], visuals) == [([0, 1], True)]
    visuals64 = [v.double() for v in visuals]
    assert P._plan([0, 1], visuals64) == [([0, 1], False)]  # float64 stays on the loop


def test_kernel_alone_against_the_reference_greedy(device):
    # The kernel on a hand-made start set (two seeds), checked step by step.
    visual = clustered(300, 32, 12)
    rows, inv, valid = P._pad_rows([visual])
    g = gram_backend.cosine_gram(rows, inv, valid)
    start = [3, 77]
    score = 1.0 - g[0, :, start].amax(dim=1)
    score[start] = float("-inf")
    got = greedy_kernel.greedy_fill(g.to(device), score[None].to(device), [120])[0].tolist()
    u = visual.double() / visual.double().norm(dim=1, keepdim=True)
    want, scores = ref.greedy_max_min(1.0 - u @ u.T, start, 120)
    for step, (a, b) in enumerate(zip(got, want, strict=True)):
        if a != b:
            assert float(scores[step][b] - scores[step][a]) < NEAR_TIE, f"step {step}"
            break
    assert len(set(got)) == 120 and not set(got) & set(start)


def test_peak_extra_memory_is_within_the_stated_bound(device):
    # README states the kernel path's peak (pruning.peak_extra_bytes): the float32 Gram,
    # one gathered block of core columns (<= 64 MiB), O(B * N) vectors.
    n, d, keep = 4096, 64, P.keep_count(4096, 0.5)
    bound_mib = P.peak_extra_bytes([n], d) / 2**20
    if device.type == "cuda":
        v, q = torch.randn(n, d, device=device), torch.randn(8, d, device=device)
        P.zspa_select(v, q, keep)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        P.zspa_select(v, q, keep)
        grown = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        grown = peak_growth_mib(
            "import torch, zspa_vllm.pruning as p\n"
            f"v = torch.randn({n}, {d}); q = torch.randn(8, {d})\n"
            "p.zspa_select(torch.randn(64, 64), torch.randn(2, 64), 10)",
            f"p.zspa_select(v, q, {keep})",
        )
    assert n * n * 4 / 2**20 <= grown + 8, "the Gram was not built: is this the kernel path?"
    assert grown <= bound_mib, f"peak grew by {grown:.0f} MiB, bound {bound_mib:.0f} MiB"
