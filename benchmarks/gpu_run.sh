#!/usr/bin/env bash
# The GPU checks as one script for a lent GPU machine (see benchmarks/README.md): install the suite without
# dependencies into the machine's own PyTorch environment, then the training-loop check and the throughput
# benchmark. Writes its figures to $OUT (or ./gpu-out).
set -uo pipefail
export PYTHONUNBUFFERED=1
out=${OUT:-gpu-out}
mkdir -p "$out"
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$out/pip.log" 2>&1 || {
  echo "editable install failed; see pip.log"; tail -5 "$out/pip.log"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$out/gpu.txt"
timeout 200 python3 -m benchmarks.gpu_check 2>&1 | tee "$out/gpu_check.txt"
timeout 300 python3 benchmarks/bench_training.py --device cuda --tile 4000000 --seconds 5 \
  --results "$out/RESULTS-gpu.md" 2>&1 | tee "$out/bench_gpu.txt"
