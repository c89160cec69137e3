#!/usr/bin/env bash
# On the device machine (carry .whl, see prepare.sh): DDS throughput, under 5 minutes on one H100.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 benchmarks/device/dds_throughput.py --slices 8 --batch 8 "$@" 2>&1 | tee "${OUT:-/tmp}/dds_throughput.txt"
