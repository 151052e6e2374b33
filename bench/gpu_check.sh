#!/usr/bin/env bash
# GPU check for a lent GPU machine: training / inference throughput of D-LinkNet34 + 1D decoder (image+gps) at
# 1024² with bf16 + channels-last, and whether the CPU data pipeline keeps up. Installs nothing; needs only torch,
# numpy (and scipy for rendering) in the Python it finds. Results: $OUT/gpu_check.json and $OUT/gpu_check.log.
#
#   bash bench/gpu_check.sh                                    # full run (~3-6 min on an H100)
#   GPU_CHECK_SIZE=128 GPU_CHECK_STEPS=2 bash bench/gpu_check.sh   # smoke run (CPU is fine)
#
# Knobs (environment): OUT, PYTHON, GPU_CHECK_SIZE, GPU_CHECK_BATCH, GPU_CHECK_STEPS, GPU_CHECK_WARMUP,
# GPU_CHECK_BASELINE_STEPS, GPU_CHECK_INFER_BATCHES, GPU_CHECK_WORKERS, GPU_CHECK_PIPE_BATCHES,
# GPU_CHECK_GPS_PER_MPX, GPU_CHECK_DEVICE (see bench/gpu_check.py).
set -euo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-./gpu_out}"
mkdir -p "$OUT"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then PY=.venv/bin/python; else PY=python3; fi
fi
{
  echo "== gpu_check $(date -u +%FT%TZ) on $(hostname)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "(no nvidia-smi)"
  "$PY" -c "import sys, torch, numpy; print('python', sys.version.split()[0], 'torch', torch.__version__, 'numpy', numpy.__version__, 'cuda', torch.cuda.is_available())"
} >> "$OUT/gpu_check.log" 2>&1
exec "$PY" bench/gpu_check.py
