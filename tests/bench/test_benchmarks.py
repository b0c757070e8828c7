"""The benchmark scripts run end to end here (plumbing, tiny settings; no timing asserted)."""

from __future__ import annotations

import json

import pytest

from tests.support.bench import run_script
from zspa_vllm.pruning import keep_count

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_kv_capacity_matches_the_block_arithmetic(tmp_path):
    out = tmp_path / "kv"
    run_script("benchmarks/kv_capacity.py", "--blocks", "40", "--requests", "8", "--out", str(out))
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["peak_running"] for r in rows] == [r["expected_running"] for r in rows]
    assert [r["prompt_tokens"] - keep_count(576, r["ratio"]) for r in rows] == [
        rows[0]["prompt_tokens"] - 576
    ] * len(rows)
    assert rows[-1]["peak_running"] > rows[0]["peak_running"]
    assert "| 0.9 |" in out.with_suffix(".md").read_text()


def test_serve_bench_runs_against_zspa_and_stock(tmp_path):
    out = tmp_path / "results" / "serve_bench"
    run_script(
        "benchmarks/serve_bench.py",
        "--launch",
        "--concurrency", "1", "2",
        "--ratios", "0", "0.75",
        "--rounds", "1",
        "--requests", "2",
        "--output-len", "4",
        "--amdahl-repeats", "1",
        "--hf-peer-rounds", "2",
        "--hf-peer-requests", "2",
        "--out", str(out),
        env={"ZSPA_BENCH_DIR": str(tmp_path / "work")},
    )  # fmt: skip
    result = json.loads(out.with_suffix(".json").read_text())
    cells = result["cells"]
    peer = result["hf_peer"]
    assert len(peer["rounds"]) == 2 and peer["ratio"] == 0.75
    latency = [r["latency_ratio_hf_over_zspa"] for r in peer["rounds"]]
    assert peer["summary"]["latency_ratio_hf_over_zspa"]["min"] == min(latency)
    table = out.with_suffix(".md").read_text()
    # --render rebuilds the same table from the JSON alone.
    out.with_suffix(".md").unlink()
    run_script("benchmarks/serve_bench.py", "--render", str(out.with_suffix(".json")))
    assert out.with_suffix(".md").read_text() == table
    assert "HF / zspa-serve single-request latency" in table
    assert set(cells) == {f"{c}@{n}" for c in result["configs"] for n in (1, 2)}
    stock, full, pruned = (cells[f"{c}@1"]["prompt_tokens"] for c in result["configs"])
    assert stock == full  # ratio 0 == stock vLLM's prompt
    assert full - pruned == 576 - keep_count(576, 0.75)
    assert result["env"]["git_sha"] and result["env"]["vllm"] == "0.32.0"
    assert [r["ratio"] for r in result["amdahl"][1:]] == [0.0, 0.75]
    assert len(list(out.parent.glob("serve_bench-*.png"))) == 3
    assert "| 2 | zspa r=0.75 |" in out.with_suffix(".md").read_text()


def test_serve_bench_launches_the_qwen_benchmark_model(tmp_path):
    out = tmp_path / "results" / "serve_bench_qwen"
    run_script(
        "benchmarks/serve_bench.py",
        "--launch", "qwen2_5_vl",
        "--concurrency", "1",
        "--ratios", "0", "0.9",
        "--rounds", "1",
        "--requests", "2",
        "--output-len", "2",
        "--amdahl-repeats", "1",
        "--out", str(out),
        env={"ZSPA_BENCH_DIR": str(tmp_path / "work")},
    )  # fmt: skip
    result = json.loads(out.with_suffix(".json").read_text())
    stock, full, pruned = (result["cells"][f"{c}@1"]["prompt_tokens"] for c in result["configs"])
    # An 896 x 896 image is 32 x 32 = 1024 visual tokens on the benchmark model.
    assert stock == full and full - pruned == 1024 - keep_count(1024, 0.9)
    assert "qwen2_5_vl CPU benchmark model" in out.with_suffix(".md").read_text()


def test_bench_selection_times_both_backends_per_image_and_per_batch(tmp_path):
    # The triton backend on CPU tensors runs in the interpreter here (plumbing only).
    run_script(
        "benchmarks/bench_selection.py", "--shapes", "120x32", "--ratios", "0.75",
        "--methods", "zspa", "divprune", "uniform", "--backends", "torch", "triton",
        "--batches", "1", "3", "--repeats", "2", "--out", str(tmp_path),
        env={"TRITON_INTERPRET": "1"},
    )  # fmt: skip
    rows = json.loads((tmp_path / "selection-cpu-float32-t1.json").read_text())["rows"]
    cells = {(r["method"], r["backend"], r["batch"]) for r in rows}
    greedy = {(m, b, k) for m in ("zspa", "divprune") for b in ("torch", "triton") for k in (1, 3)}
    assert cells == greedy | {("uniform", "torch", 1), ("uniform", "torch", 3)}
    for r in rows:
        assert r["keep"] == keep_count(120, 0.75)
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"] and r["first_ms"] > 0


def test_gpu_ttft_reports_each_backend_against_the_amdahl_limit(tmp_path):
    out = tmp_path / "ttft.json"
    run_script(
        "benchmarks/gpu_ttft.py", "--tiny", "--device", "cpu", "--repeats", "2",
        "--ratios", "0.5", "0.9", "--batches", "1", "2", "--out", str(out),
        env={"TRITON_INTERPRET": "1"},
    )  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    assert {(r["batch"], r["ratio"], r["backend"]) for r in rows} == {
        (b, r, k) for b in (1, 2) for r in (0.5, 0.9) for k in ("torch", "triton")
    }
    for r in rows:
        text = r["tokens_full"] - 64  # the tiny shape: 64 image tokens
        assert r["tokens_pruned"] == text + keep_count(64, r["ratio"])
        vision, full = r["vision_ms"]["median"], r["prefill_full_ms"]["median"]
        pruned, sel = r["prefill_pruned_ms"]["median"], r["selection_ms"]["median"]
        assert r["amdahl_limit"] == pytest.approx((vision + full) / (vision + pruned))
        assert r["speedup"] == pytest.approx((vision + full) / (vision + pruned + sel))
        assert r["pct_of_limit"] == pytest.approx(100 * r["speedup"] / r["amdahl_limit"])


def test_multiturn_bench_reports_each_turn_for_each_config(tmp_path):
    out = tmp_path / "results" / "multiturn"
    run_script(
        "benchmarks/multiturn_bench.py", "--launch",
        "--ratios", "0", "0.75", "--prompt-scope-ratio", "0.75",
        "--turns", "2", "--conversations", "2", "--rounds", "1", "--output-len", "2",
        "--out", str(out),
        env={"ZSPA_BENCH_DIR": str(tmp_path / "work")},
    )  # fmt: skip
    result = json.loads(out.with_suffix(".json").read_text())
    configs = result["configs"]
    assert list(configs) == ["stock vLLM", "zspa r=0", "zspa r=0.75", "zspa r=0.75 scope=prompt"]
    for rows in configs.values():
        assert [r["turn"] for r in rows] == [1, 2]
    tokens = {name: [r["prompt_tokens"] for r in rows] for name, rows in configs.items()}
    # Turn 1 is the same prompt everywhere but for the pruned image (later turns carry each
    # conversation's own replies, whose lengths vary).
    assert tokens["stock vLLM"][0] == tokens["zspa r=0"][0]
    assert tokens["stock vLLM"][0] - tokens["zspa r=0.75"][0] == 576 - keep_count(576, 0.75)
    hit = {name: rows[1]["prefix_hit_rate"]["median"] for name, rows in configs.items()}
    # Turn 2 reuses turn 1 from the prefix cache, pruned or not, but not under the old rule.
    assert hit["zspa r=0.75"] > 0.5 and hit["stock vLLM"] > 0.5
    assert hit["zspa r=0.75 scope=prompt"] < 0.1
    assert "| zspa r=0.75 scope=prompt |" in out.with_suffix(".md").read_text()


def test_short_soak_has_no_errors_and_frees_every_request(tmp_path):
    # A few hundred mixed requests (ratios, methods, streams, clients that disconnect
    # mid-stream, repeated and new images); afterwards vLLM's own gauges must show nothing
    # running or waiting and an empty KV cache: disconnected streams were aborted.
    out = tmp_path / "soak"
    run_script(
        "benchmarks/soak.py", "--launch", "--requests", "300", "--concurrency", "8",
        "--out", str(out),
        env={"ZSPA_BENCH_DIR": str(tmp_path / "work")},
    )  # fmt: skip
    result = json.loads(out.with_suffix(".json").read_text())
    s = result["summary"]
    assert s["errors"] == 0, s["error_examples"]
    assert s["requests"] == 300 and s["completed"] + s["disconnected"] == 300
    assert s["disconnected"] > 0 and s["completed"] > 200
    assert (s["running_after"], s["waiting_after"], s["kv_usage_after"]) == (0, 0, 0)
    assert len(result["rss_mib"]) >= 3 and s["rss_max_mib"] >= s["rss_start_mib"] > 0
