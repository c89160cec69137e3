#!/usr/bin/env bash
# On the device machine: install the carried wheels, train one set of priors (brain or ct)
# within about 7 minutes, one tar file per prior in $OUT. Prepare with prepare.sh first.
set -euo pipefail
SET=${1:-brain}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 benchmarks/device/train_priors.py --set "$SET" --data .devdata --out "${OUT:-/tmp/out}" \
  --minutes "${MINUTES:-3.1}"
ls -la "${OUT:-/tmp/out}"
