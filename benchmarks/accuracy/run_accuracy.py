"""Accuracy harness: lmms-eval against zspa-serve at each prune ratio and method.

    # GPU host, the paper's setting (LLaVA-1.5-7B; lmms-eval downloads the datasets):
    .venv/bin/python benchmarks/accuracy/run_accuracy.py llava-hf/llava-1.5-7b-hf \
        --tasks pope,gqa,textvqa_val,mmmu_val,ai2d,chartqa --no-tiny-defaults
    # Here, plumbing only: the tiny random-weight model on a synthetic yes/no task
    .venv/bin/python benchmarks/accuracy/run_accuracy.py --tiny --synthetic 16

For every configuration (unpruned once, then each method at each ratio) it starts
zspa-serve with that configuration as the server default (``--prune-ratio`` /
``--prune-method``: lmms-eval's OpenAI-compatible model sends plain OpenAI requests), runs
lmms-eval (``--model openai``) from its own venv (scripts/setup-lmms-eval), reads the
visual-token counters from /metrics to record what was kept, and stops the server. The
result is the paper-style table, rows = method and ratio, columns = task scores:
``benchmarks/results/accuracy.{json,md}`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from zspa_vllm.testing.servers import start_server, stop_server  # noqa: E402

SYNTHETIC_TASK = "zspa_synthetic_pope"
TASK_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 8
  temperature: 0
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
metadata:
  version: 0.1
"""
TASK_UTILS = '''\
"""POPE-style yes/no questions on generated images (a red square present or not)."""

from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"] + "\\nAnswer the question using a single word or phrase."


def process_results(doc, results):
    prediction = results[0].strip().lower()
    return {"accuracy": float(prediction.startswith(doc["answer"]))}
'''


def write_synthetic_task(root: Path, n: int) -> Path:
    """A tiny POPE-like task: images with or without a red square; returns the task dir."""
    task_dir = root / SYNTHETIC_TASK
    images = task_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        pixels = (rng.random((336, 336, 3)) * 80 + 100).astype("uint8")
        present = i % 2 == 0
        if present:
            x, y = rng.integers(0, 236, size=2)
            pixels[y : y + 100, x : x + 100] = (220, 30, 30)
        path = images / f"{i}.png"
        Image.fromarray(pixels).save(path)
        rows.append(
            {
                "question_id": i,
                "image": str(path),
                "question": "Is there a red square in the image?",
                "answer": "yes" if present else "no",
            }
        )
    data = task_dir / "test.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (task_dir / f"{SYNTHETIC_TASK}.yaml").write_text(
        TASK_YAML.format(task=SYNTHETIC_TASK, data=data)
    )
    (task_dir / "utils.py").write_text(TASK_UTILS)
    return task_dir


def visual_tokens(url: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text

    def total(name: str) -> float:
        return sum(float(v) for v in re.findall(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.M))

    return (
        total("zspa_visual_tokens_before_pruning_total"),
        total("zspa_visual_tokens_after_pruning_total"),
    )


class LmmsEvalError(RuntimeError):
    """An lmms-eval run that produced no scores; the message names the cause."""


# lmms-eval logs an exception in cli_evaluate under this text and still exits 0.
_EVAL_ERROR = "Error during evaluation"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def check_lmms_eval(name: str, returncode: int, log: str, log_path: Path, output_dir: Path) -> None:
    """Raise ``LmmsEvalError`` unless the run exited 0, logged no evaluation error and
    wrote a results file: lmms-eval exits 0 after many failures, so the exit code alone
    proves nothing (a missing module once passed as a run with no results)."""
    results = list(output_dir.rglob("*results*.json")) if output_dir.exists() else []
    if returncode != 0:
        cause = f"it exited with status {returncode}"
    elif _EVAL_ERROR in log:
        cause = f"it logged {_EVAL_ERROR!r} (and exited 0)"
    elif not results:
        cause = f"it wrote no results file under {output_dir}"
    else:
        return
    tail = "\n".join(_ANSI.sub("", log).rstrip().splitlines()[-25:])
    raise LmmsEvalError(
        f"lmms-eval failed for {name}: {cause}. Last lines of its log ({log_path}):\n{tail}"
    )


def scores(output_dir: Path) -> dict[str, float]:
    """Task -> metric -> value from lmms-eval's newest results file."""
    found = sorted(output_dir.rglob("*results*.json"))
    if not found:
        raise LmmsEvalError(f"no lmms-eval results file under {output_dir}")
    results = json.loads(found[-1].read_text())["results"]
    return {
        f"{task}/{metric.split(',')[0]}": float(value)
        for task, metrics in results.items()
        for metric, value in metrics.items()
        if isinstance(value, (int, float)) and "stderr" not in metric and metric != "alias"
    }


def run_config(
    args, lmms_python: str, include: Path | None, ratio: float, method: str, work: Path
) -> dict:
    name = "unpruned" if ratio == 0 else f"{method} r={ratio:g}"
    slug = re.sub(r"[^a-z0-9.]+", "-", name)
    serve = ["--served-model-name", "model", "--prune-ratio", str(ratio), "--prune-method", method]
    proc, url = start_server(
        args.model, work / f"serve-{slug}.log", *serve, *args.serve_arg,
        tiny_model_defaults=args.tiny_defaults,
    )  # fmt: skip
    try:
        before = visual_tokens(url)
        cmd = [
            lmms_python, "-m", "lmms_eval",
            "--model", "openai",
            "--model_args", f"model_version=model,base_url={url}/v1,api_key=EMPTY,"
            f"num_concurrent={args.concurrency}",
            "--tasks", args.tasks,
            "--batch_size", "1",
            "--output_path", str(work / slug),
        ]  # fmt: skip
        if include is not None:
            cmd += ["--include_path", str(include)]
        if args.limit:
            cmd += ["--limit", str(args.limit)]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        log, log_path = result.stdout + result.stderr, work / f"lmms-eval-{slug}.log"
        log_path.write_text(log)
        check_lmms_eval(name, result.returncode, log, log_path, work / slug)
        after = visual_tokens(url)
    finally:
        stop_server(proc)
    kept_before, kept_after = after[0] - before[0], after[1] - before[1]
    return {
        "config": name,
        "method": method if ratio else None,
        "ratio": ratio,
        "visual_tokens_before": kept_before,
        "visual_tokens_after": kept_after,
        "scores": scores(work / slug),
    }


def markdown(rows: list[dict], model: str) -> str:
    columns = sorted({k for r in rows for k in r["scores"]})
    lines = [
        f"# Accuracy: `{model}` through zspa-serve (lmms-eval)",
        "",
        "| config | visual tokens kept | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for r in rows:
        kept = (
            r["visual_tokens_after"] / r["visual_tokens_before"] if r["visual_tokens_before"] else 0
        )
        cells = " | ".join(f"{r['scores'].get(c, float('nan')):.4f}" for c in columns)
        lines.append(f"| {r['config']} | {kept:.1%} | {cells} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="model id or local checkpoint")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="build and use the tiny random-weight LLaVA (plumbing runs)",
    )
    parser.add_argument("--tasks", default=SYNTHETIC_TASK)
    parser.add_argument(
        "--synthetic",
        type=int,
        default=0,
        metavar="N",
        help=f"write the {SYNTHETIC_TASK} task with N samples",
    )
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.5, 0.75, 0.9])
    parser.add_argument(
        "--methods", nargs="+", default=["zspa", "relevance", "divprune", "random", "uniform"]
    )
    parser.add_argument("--limit", type=int, default=0, help="samples per task (0: all)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        help="extra zspa-serve option, e.g. --serve-arg=--dtype=bfloat16",
    )
    parser.add_argument(
        "--no-tiny-defaults",
        dest="tiny_defaults",
        action="store_false",
        help="do not add the CPU tiny-model options (float32, eager, ...)",
    )
    parser.add_argument("--timeout", type=float, default=24 * 3600)
    parser.add_argument("--work", help="working directory (default: a temporary one)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/accuracy"))
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="zspa-accuracy-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        from zspa_vllm.testing.tiny_llava import build_tiny_llava

        args.model = args.model or str(build_tiny_llava(work / "tiny-llava"))
    if not args.model:
        parser.error("give a MODEL or --tiny")
    include = write_synthetic_task(work / "tasks", args.synthetic) if args.synthetic else None
    lmms_python = subprocess.run(
        [str(ROOT / "scripts/setup-lmms-eval")], capture_output=False, stdout=subprocess.PIPE,
        text=True, check=True,
    ).stdout.strip().splitlines()[-1]  # fmt: skip

    configs = [(0.0, args.methods[0])] + [
        (r, m) for m in args.methods for r in args.ratios if r > 0
    ]
    try:
        rows = [run_config(args, lmms_python, include, r, m, work) for r, m in configs]
    except LmmsEvalError as e:
        sys.exit(f"run_accuracy.py: {e}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps({"model": args.model, "tasks": args.tasks, "rows": rows}, indent=2) + "\n"
    )
    table = markdown(rows, args.model)
    out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
