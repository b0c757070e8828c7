"""zspa_vllm.pruning against the float64 reference, plus properties and edges."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import reference as ref
from tests.support.peak_rss import peak_growth_mib
from tests.support.selection import check_against_reference, clustered, gaussian
from zspa_vllm import pruning as P

CASES = [
    (n, d, seed) for seed, (n, d) in enumerate([(2, 3), (7, 5), (40, 16), (130, 64), (300, 8)])
]


@pytest.mark.parametrize("make", [gaussian, clustered])
@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
@pytest.mark.parametrize(("n", "d", "seed"), CASES)
def test_matches_reference_small(make, ratio, n, d, seed):
    visual, prompt = make(n, d, seed), gaussian(5, d, seed + 100)
    keep = P.keep_count(n, ratio)
    if keep < n:
        check_against_reference(visual, prompt, keep)


def test_matches_reference_many_random_shapes():
    exact = 0
    g = torch.Generator().manual_seed(7)
    for trial in range(60):
        n = int(torch.randint(2, 400, (1,), generator=g))
        d = int(torch.randint(1, 96, (1,), generator=g))
        m = int(torch.randint(1, 12, (1,), generator=g))
        make = gaussian if trial % 2 else clustered
        keep = int(torch.randint(1, n, (1,), generator=g))
        core_ratio = float(torch.rand((), generator=g))
        exact += check_against_reference(
            make(n, d, trial), gaussian(m, d, 1000 + trial), keep, core_ratio
        )
    # Near-ties are rare in random data: if most runs stop at one, the check is toothless.
    assert exact >= 50


@pytest.mark.slow
@pytest.mark.parametrize("make", [gaussian, clustered])
@pytest.mark.parametrize(
    ("n", "d", "ratio"), [(576, 4096, 0.9), (576, 4096, 0.5), (5000, 256, 0.9)]
)
def test_matches_reference_large(make, n, d, ratio):
    visual, prompt = make(n, d, 3), gaussian(20, d, 4)
    check_against_reference(visual, prompt, P.keep_count(n, ratio))


def test_reference_check_catches_a_wrong_selector(monkeypatch):
    # The comparison must be able to fail: a selector that fills by *minimum* distance
    # (the most redundant token) is caught at the first fill step.
    def wrong_fill(rows, inv, chosen, min_dist, steps):
        return real_fill(rows, inv, chosen, -min_dist.masked_fill(chosen, math.inf), steps)

    real_fill = P._greedy_fill
    monkeypatch.setattr(P, "_greedy_fill", wrong_fill)
    with pytest.raises(AssertionError, match="fill step 0"):
        check_against_reference(gaussian(200, 32, 1), gaussian(4, 32, 2), 50)


def test_reference_check_catches_a_wrong_core(monkeypatch):
    monkeypatch.setattr(P, "_relevance", lambda rows, inv, prompt: -(rows @ prompt.mean(0)) * inv)
    with pytest.raises(AssertionError, match="below the reference core"):
        check_against_reference(gaussian(200, 32, 1), gaussian(4, 32, 2), 50)


# --- properties --------------------------------------------------------------------


@st.composite
def problems(draw):
    n = draw(st.integers(1, 80))
    d = draw(st.integers(1, 24))
    m = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**16))
    make = draw(st.sampled_from([gaussian, clustered]))
    ratio = draw(st.floats(0.0, 0.99))
    core_ratio = draw(st.floats(0.0, 1.0))
    return make(n, d, seed), gaussian(m, d, seed + 1), P.keep_count(n, ratio), core_ratio


@settings(max_examples=150, deadline=None)
@given(problems())
def test_properties(problem):
    visual, prompt, keep, core_ratio = problem
    out = P.zspa_select(visual, prompt, keep, core_ratio)
    assert out.dtype == torch.long
    assert out.shape == (min(keep, visual.shape[0]),)
    assert bool((out[1:] > out[:-1]).all())  # strictly increasing, hence unique
    assert int(out.min()) >= 0 and int(out.max()) < visual.shape[0]
    if keep < visual.shape[0]:
        core, _ = P.zspa_order(visual, prompt, keep, core_ratio)
        assert set(core.tolist()) <= set(out.tolist())
    assert torch.equal(
        P.zspa_select(visual, prompt, keep, 1.0), P.relevance_select(visual, prompt, keep)
    )


@settings(max_examples=50, deadline=None)
@given(problems())
def test_ratio_zero_is_identity(problem):
    visual, prompt, _, core_ratio = problem
    keep = P.keep_count(visual.shape[0], 0.0)
    for method in P.METHODS:
        out = P.select(method, visual, prompt, keep)
        assert torch.equal(out, torch.arange(visual.shape[0]))


# --- keep_count ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "ratio", "want"),
    [(576, 0.0, 576), (576, 0.5, 288), (576, 0.75, 144), (576, 0.9, 58), (5, 0.5, 2), (1, 0.9, 1)],
)
def test_keep_count(n, ratio, want):
    # round(2.5) == 2 (banker's rounding) is the documented behaviour for (5, 0.5).
    assert P.keep_count(n, ratio) == want


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, math.nan, math.inf, "0.5", None, True])
def test_keep_count_rejects(ratio):
    with pytest.raises(ValueError, match="prune_ratio"):
        P.keep_count(576, ratio)


# --- edges -------------------------------------------------------------------------


def test_keep_at_least_n_returns_everything_without_computing(monkeypatch):
    monkeypatch.setattr(P, "_zspa_order_batch", None)  # any call would raise TypeError
    visual = gaussian(10, 4, 0)
    for keep in (10, 11):
        assert torch.equal(P.zspa_select(visual, gaussian(2, 4, 1), keep), torch.arange(10))


def test_no_text_falls_back_to_divprune():
    visual, empty = clustered(120, 16, 0), torch.empty(0, 16)
    want = P.divprune_select(visual, None, 30)
    assert torch.equal(P.zspa_select(visual, empty, 30), want)
    assert torch.equal(P.relevance_select(visual, empty, 30), want)


def test_zero_vectors_never_nan():
    visual = gaussian(50, 8, 0)
    visual[::3] = 0
    for prompt in (gaussian(3, 8, 1), torch.zeros(3, 8)):
        for method in P.METHODS:
            out = P.select(method, visual, prompt, 20)
            assert out.shape == (20,) and bool((out[1:] > out[:-1]).all())
    assert P.zspa_select(torch.zeros(9, 4), torch.zeros(2, 4), 3).tolist() == [0, 1, 2]


def test_ties_break_toward_lower_index():
    same = torch.ones(12, 6)
    prompt = torch.ones(2, 6)
    for method in ("zspa", "relevance", "divprune"):
        assert P.select(method, same, prompt, 4).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"keep": 0}, "keep"),
        ({"keep": 2.0}, "keep"),
        ({"core_ratio": 1.5}, "core_ratio"),
        ({"core_ratio": math.nan}, "core_ratio"),
        ({"visual": torch.ones(3)}, "visual"),
        ({"visual": torch.ones(3, 4, dtype=torch.long)}, "floating"),
        ({"prompt": torch.ones(2, 5)}, "width"),
    ],
)
def test_input_validation(kwargs, match):
    args = {"visual": torch.ones(3, 4), "prompt": torch.ones(2, 4), "keep": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        P.zspa_select(**args)


def test_select_unknown_method_lists_names():
    with pytest.raises(ValueError, match=r"divprune.*random.*relevance.*uniform.*zspa"):
        P.select("topk", torch.ones(3, 4), torch.ones(1, 4), 2)


# --- baselines ---------------------------------------------------------------------


def test_relevance_select_is_top_k_by_reference_relevance():
    visual, prompt = clustered(300, 32, 5), gaussian(6, 32, 6)
    rel = ref.relevance(visual, prompt)
    assert P.relevance_select(visual, prompt, 40).tolist() == sorted(ref.top_by_relevance(rel, 40))


@pytest.mark.parametrize("make", [gaussian, clustered])
def test_divprune_matches_reference(make):
    visual = make(250, 24, 9)
    order, _ = ref.divprune(visual, 60)
    assert P.divprune_select(visual, None, 60).tolist() == sorted(order)


def test_divprune_ignores_the_prompt():
    visual = clustered(100, 16, 2)
    a = P.divprune_select(visual, gaussian(3, 16, 0), 20)
    assert torch.equal(a, P.divprune_select(visual, gaussian(5, 16, 1), 20))


def test_random_select_is_seeded():
    visual = gaussian(100, 4, 0)
    a = P.random_select(visual, None, 30, seed=1)
    assert torch.equal(a, P.random_select(visual, None, 30, seed=1))
    assert not torch.equal(a, P.random_select(visual, None, 30, seed=2))
    before = torch.get_rng_state()
    P.random_select(visual, None, 30)
    assert torch.equal(before, torch.get_rng_state())  # global RNG untouched


@pytest.mark.parametrize(("n", "keep"), [(576, 58), (576, 144), (10, 3), (7, 6)])
def test_uniform_select_is_evenly_spaced(n, keep):
    out = P.uniform_select(torch.ones(n, 2), None, keep)
    gaps = (out[1:] - out[:-1]).tolist()
    assert len(out) == keep and min(gaps) >= 1 and max(gaps) - min(gaps) <= 1
    assert int(out[0]) < math.ceil(n / keep) and int(out[-1]) >= n - math.ceil(n / keep)


# --- batching, dtypes, devices -----------------------------------------------------


def test_batch_equals_per_item():
    visuals = [clustered(n, 32, n) for n in (576, 100, 1, 300, 50)]
    prompts = [gaussian(m, 32, m) for m in (5, 0, 3, 7, 2)]
    keeps = [58, 25, 1, 300, 10]
    ratios = [0.6, 0.6, 0.2, 0.9, 1.0]
    got = P.zspa_select_batch(visuals, prompts, keeps, ratios)
    for v, p, k, c, out in zip(visuals, prompts, keeps, ratios, got, strict=True):
        assert torch.equal(out, P.zspa_select(v, p, k, c))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_precision_inputs_compute_in_float32(dtype):
    visual, prompt = clustered(200, 64, 1).to(dtype), gaussian(4, 64, 2).to(dtype)
    out = P.zspa_select(visual, prompt, 40)
    want = P.zspa_select(visual.to(torch.promote_types(dtype, torch.float32)), prompt.float(), 40)
    assert out.device == visual.device and torch.equal(out, want)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_reference(dtype):
    visual, prompt = clustered(576, 1024, 3), gaussian(10, 1024, 4)
    keep = P.keep_count(576, 0.75)
    out = P.zspa_select(visual.to("cuda", dtype), prompt.to("cuda", dtype), keep)
    assert out.device.type == "cuda" and out.shape == (keep,)
    if dtype == torch.float32:
        check_against_reference(visual, prompt, keep)
        core, fill = P.zspa_order(visual.cuda(), prompt.cuda(), keep)
        assert sorted(core.tolist() + fill.tolist()) == out.tolist()


# --- boundaries and scaling ----------------------------------------------------------


def test_imports_without_vllm_or_fastapi():
    code = (
        "import sys; sys.modules['vllm'] = None; sys.modules['fastapi'] = None\n"
        "import zspa_vllm.pruning as p, torch\n"
        "print(p.zspa_select(torch.randn(8, 4), torch.randn(2, 4), 3).tolist())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_memory_is_linear_in_n():
    # N=16384 at ratio 0.5: a Gram matrix would need N^2 * 4 B = 1 GiB on top of the
    # 16 MiB input; the selector's peak must stay far below that (the torch loop: the
    # kernel backend never takes an image this large).
    grown = peak_growth_mib(
        "import torch, zspa_vllm.pruning as p\n"
        "v = torch.randn(16384, 256); q = torch.randn(8, 256)\n"
        "p.zspa_select(v[:64], q, 10)",
        "p.zspa_select(v, q, p.keep_count(16384, 0.5))",
    )
    assert 0 < grown < 300, f"peak grew by {grown:.0f} MiB"
