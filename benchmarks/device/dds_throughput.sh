#!/usr/bin/env bash
# On the device machine (carry .whl, see prepare.sh): DDS throughput, without and with
# torch.compile; 186 s for both on an H200 (2026-11-27), figures in the README.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
set -o pipefail
python3 benchmarks/device/dds_throughput.py --slices 16 --batch 16 "$@" 2>&1 | tee "${OUT:-/tmp}/dds_throughput.txt"
# the same with torch.compile (its compile time is outside the timed loop: warm-up first)
timeout 240 python3 benchmarks/device/dds_throughput.py --slices 16 --batch 16 --compile "$@" 2>&1 \
  | tee "${OUT:-/tmp}/dds_throughput_compile.txt" || echo "torch.compile run failed or timed out"
