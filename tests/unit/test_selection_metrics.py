"""zspa_vllm.seam.selection_metrics: what is observed, when, and on which rank."""

from __future__ import annotations

import pytest
import torch
from prometheus_client import REGISTRY

from zspa_vllm.seam import selection_metrics as sm


def sample(name: str, method: str) -> float:
    value = REGISTRY.get_sample_value(name, {"model_name": "test-model", "method": method})
    return value or 0.0


@pytest.fixture(autouse=True)
def state(monkeypatch):
    monkeypatch.setattr(sm._state, "model_name", "test-model")
    monkeypatch.setattr(sm._state, "enabled", True)
    monkeypatch.setattr(sm._state, "pending", sm.deque())


def test_a_cpu_call_is_observed_once_with_its_items():
    count, items = (
        sample("zspa_selection_seconds_count", "m1"),
        sample("zspa_selection_items_sum", "m1"),
    )
    with sm.timed("m1", 3, torch.device("cpu")):
        torch.ones(64, 64) @ torch.ones(64, 64)
    assert sample("zspa_selection_seconds_count", "m1") == count + 1
    assert sample("zspa_selection_items_sum", "m1") == items + 3
    assert sample("zspa_selection_seconds_sum", "m1") > 0


def test_other_ranks_do_not_observe(monkeypatch):
    monkeypatch.setattr(sm._state, "enabled", False)
    count = sample("zspa_selection_seconds_count", "m2")
    with sm.timed("m2", 1, torch.device("cpu")):
        pass
    assert sample("zspa_selection_seconds_count", "m2") == count


class FakeEvent:
    """A CUDA event whose completion the test decides (query() never blocks)."""

    def __init__(self, done: bool, ms: float = 0.0) -> None:
        self.done, self.ms = done, ms

    def query(self) -> bool:
        return self.done

    def elapsed_time(self, end: FakeEvent) -> float:
        return end.ms - self.ms


def test_cuda_timings_are_observed_in_order_once_finished():
    count = sample("zspa_selection_seconds_count", "m3")
    first_end, second_end = FakeEvent(False, 7.0), FakeEvent(True, 19.0)
    sm._state.pending.extend(
        [(FakeEvent(True, 2.0), first_end, "m3", 1), (FakeEvent(True, 4.0), second_end, "m3", 2)]
    )
    sm._drain()  # the oldest has not finished: nothing observed, order kept
    assert sample("zspa_selection_seconds_count", "m3") == count
    first_end.done = True
    before = sample("zspa_selection_seconds_sum", "m3")
    sm._drain()
    assert sample("zspa_selection_seconds_count", "m3") == count + 2
    assert sample("zspa_selection_seconds_sum", "m3") == pytest.approx(before + 0.005 + 0.015)
    assert not sm._state.pending
