"""The accuracy harness end to end: lmms-eval -> zspa-serve (tiny model, synthetic task)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.support.bench import ROOT, run_script
from zspa_vllm.pruning import keep_count

_spec = importlib.util.spec_from_file_location(
    "run_accuracy", ROOT / "benchmarks/accuracy/run_accuracy.py"
)
run_accuracy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_accuracy)

N_SAMPLES = 6


@pytest.mark.vllm
@pytest.mark.slow
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


@pytest.mark.vllm
@pytest.mark.slow
def test_a_failed_lmms_eval_run_stops_the_harness_naming_the_cause(tmp_path):
    # lmms-eval exits 0 after "Error during evaluation" (here: an unknown task); the harness
    # must stop there with lmms-eval's own words, never fail later on a missing results file.
    result = subprocess.run(
        [
            sys.executable, "benchmarks/accuracy/run_accuracy.py", "--tiny",
            "--tasks", "no_such_task", "--ratios", "0.5", "--methods", "zspa",
            "--work", str(tmp_path / "work"), "--out", str(tmp_path / "accuracy"),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=1200,
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode != 0
    assert "lmms-eval failed for unpruned" in result.stderr, result.stderr[-3000:]
    assert "'Error during evaluation' (and exited 0)" in result.stderr
    assert "Tasks not found: no_such_task" in result.stderr  # the cause, from its log
    assert "Traceback" not in result.stderr.split("Last lines of its log")[0]
    assert not (tmp_path / "accuracy.json").exists()


@pytest.mark.parametrize(
    ("returncode", "log", "results", "cause"),
    [
        (1, "boom", True, "exited with status 1"),
        (0, "| ERROR | Error during evaluation: No module named 'filelock._api'", True, "logged"),
        (0, "all fine", False, "wrote no results file"),
    ],
)
def test_check_lmms_eval_trusts_the_artefact_not_the_exit_code(
    tmp_path, returncode, log, results, cause
):
    out = tmp_path / "out"
    if results:
        (out / "model").mkdir(parents=True)
        (out / "model" / "x_results.json").write_text("{}")
    with pytest.raises(run_accuracy.LmmsEvalError, match=cause) as err:
        run_accuracy.check_lmms_eval("cfg", returncode, log, tmp_path / "log", out)
    assert log.splitlines()[-1].split("| ")[-1] in str(err.value)


def test_check_lmms_eval_accepts_a_clean_run(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x_results.json").write_text("{}")
    run_accuracy.check_lmms_eval("cfg", 0, "done", tmp_path / "log", tmp_path / "out")
