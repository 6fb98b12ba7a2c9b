#!/usr/bin/env bash
# The GPU checks as one script for a lent GPU machine, run from the repository root:
#   1. stop at once, exit 2, where there is no NVIDIA GPU;
#   2. install the suite without dependencies into the machine's own PyTorch environment;
#   3. record the GPU, the machine's torch and the CUDA image's torch (images/component-cuda/Dockerfile), and say
#      MISMATCH when they differ: figures from this run are then for the machine's torch, not the image's;
#   4. benchmarks/gpu_check.py: the shipped training path (train_model as the train step runs it: bf16, CUDA
#      graph) against the CPU run and the reference loop, one quality check for all;
#   5. benchmarks/bench_training.py on cuda: throughput against the reference loop (batch 32 and 8192).
# Writes everything to $OUT (or ./gpu-out). Exits with gpu_check's status (0 PASS, 1 FAIL), or the first failure.
set -uo pipefail
export PYTHONUNBUFFERED=1
out=${OUT:-gpu-out}
mkdir -p "$out"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_run.sh: no NVIDIA GPU here (nvidia-smi is missing or lists none); run it on a machine with one" >&2
  exit 2
fi

image_torch=$(sed -n 's|^FROM pytorch/pytorch:\([0-9][0-9.]*\)-.*|\1|p' images/component-cuda/Dockerfile)
if [ -z "$image_torch" ]; then
  echo "gpu_run.sh: cannot read the CUDA image's torch version from images/component-cuda/Dockerfile" >&2
  exit 1
fi

python3 -m pip install -q --no-deps --no-build-isolation -e . >"$out/pip.log" 2>&1 || {
  echo "gpu_run.sh: the editable install failed; see $out/pip.log" >&2
  tail -5 "$out/pip.log" >&2
  exit 1
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
machine_torch=$(python3 -c "import torch; print(torch.__version__)") || exit 1
{
  echo "torch $machine_torch on this machine; the CUDA image ships torch $image_torch"
  case "$machine_torch" in
    "$image_torch" | "$image_torch"+*) echo "torch: matches the CUDA image" ;;
    *) echo "torch: MISMATCH: these figures are for torch $machine_torch, not the CUDA image's $image_torch; say so beside them" ;;
  esac
} | tee -a "$out/gpu.txt"

timeout 300 python3 -m benchmarks.gpu_check 2>&1 | tee "$out/gpu_check.txt"
check=${PIPESTATUS[0]}
timeout 300 python3 benchmarks/bench_training.py --device cuda --tile 4000000 --seconds 5 \
  --results "$out/RESULTS-gpu.md" 2>&1 | tee "$out/bench_gpu.txt"
bench=${PIPESTATUS[0]}
[ "$check" -ne 0 ] && exit "$check"
exit "$bench"
