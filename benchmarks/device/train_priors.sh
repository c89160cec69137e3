#!/usr/bin/env bash
# On the device machine: install the carried wheels, train one set of priors (brain or ct)
# side by side, one process per prior on the one GPU, each for MINUTES of training; one tar
# file and one log per prior in $OUT. Measured on an H200 (2026-11-27): two brain processes
# at 776 images/s each with the GPU 93-98 % busy (one process alone was not timed);
# MINUTES=5.4 brain: 361 s in all; MINUTES=3.2 ct: 219 s.
# Prepare with prepare.sh first. TRAIN_ARGS adds recipe options of train_priors.py, e.g.
# TRAIN_ARGS="--augment --patch 64" (issue "Priors that win": measured on the CPU in
# benchmarks/results/recipe_study*.json).
set -euo pipefail
SET=${1:-brain}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
case "$SET" in
  brain) NAMES="brain-t1-axial-128 brain-t1-coronal-128" ;;
  ct) NAMES="ct-axial-128 ct-coronal-128" ;;
  *) echo "unknown set $SET (brain or ct)"; exit 2 ;;
esac
pids=()
for name in $NAMES; do
  python3 benchmarks/device/train_priors.py --set "$SET" --only "$name" --data .devdata \
    --out "$OUT" --minutes "${MINUTES:-3.1}" --threads 6 --work "/tmp/train-$name" \
    ${TRAIN_ARGS:-} > "$OUT/$name.log" 2>&1 &
  pids+=($!)
done
( while sleep 60; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done ) &
mon=$!
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
kill "$mon" 2>/dev/null || true
tail -n 3 "$OUT"/*.log
ls -la "$OUT"
exit $rc
