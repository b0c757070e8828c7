"""The accuracy harness end to end: lmms-eval -> zspa-serve (tiny model, synthetic task)."""

from __future__ import annotations

import json

import pytest

from tests.bench.test_benchmarks import run_script
from zspa_vllm.pruning import keep_count

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

N_SAMPLES = 6


def test_lmms_eval_scores_each_configuration_through_zspa_serve(tmp_path):
    out = tmp_path / "accuracy"
    run_script(
        "benchmarks/accuracy/run_accuracy.py",
        "--tiny",
        "--synthetic", str(N_SAMPLES),
        "--ratios", "0.75",
        "--methods", "zspa", "uniform",
        "--concurrency", "2",
        "--work", str(tmp_path / "work"),
        "--out", str(out),
    )  # fmt: skip
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["config"] for r in rows] == ["unpruned", "zspa r=0.75", "uniform r=0.75"]
    for row in rows:
        # lmms-eval scored every sample (random weights: any accuracy is plumbing-valid).
        (score,) = row["scores"].values()
        assert 0.0 <= score <= 1.0
        # ... through the configured server: the counters show what each one kept.
        assert row["visual_tokens_before"] == N_SAMPLES * 576
        assert row["visual_tokens_after"] == N_SAMPLES * keep_count(576, row["ratio"])
    table = out.with_suffix(".md").read_text()
    assert "| uniform r=0.75 | 25.0% |" in table
