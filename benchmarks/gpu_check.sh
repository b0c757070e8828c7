#!/usr/bin/env bash
# Everything this project measures on a lent GPU machine, in one call (it has torch, Triton,
# pytest and hypothesis; no vLLM, no internet), e.g. with the device tool:
#   run: bash benchmarks/gpu_check.sh            (results land in $OUT, commit them)
# 1. the kernel tests compiled on CUDA, 2. bench_selection (loop vs kernel, batch 1 and 16),
# 3. gpu_ttft (vision + selection + CUDA-graph prefill against the Amdahl limit).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD"  # the machine has no install of this package
out=${OUT:-benchmarks/results}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>&1
ZSPA_SELECT_BACKEND=triton python3 -m pytest -q -p no:cacheprovider tests/kernel \
  > "$out/gpu_kernel_tests.txt" 2>&1
echo "kernel tests: rc=$?" | tee -a "$out/gpu_kernel_tests.txt"
python3 benchmarks/bench_selection.py --device cuda --dtype bfloat16 --repeats 20 \
  --methods zspa divprune --budget-s 10 --out "$out" > "$out/bench_selection.txt" 2>&1
echo "bench_selection: rc=$?"
python3 benchmarks/gpu_ttft.py --repeats 20 --out "$out/gpu_ttft.json" > "$out/gpu_ttft.txt" 2>&1
echo "gpu_ttft: rc=$?"
tail -5 "$out"/*.txt
