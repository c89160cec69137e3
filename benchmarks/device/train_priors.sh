#!/usr/bin/env bash
# On the device machine: install the carried wheels, train a set of priors (brain, ct, or all
# four) side by side, one process per prior on the one GPU, each for MINUTES of training; one
# tar file and one log per prior in $OUT. Batches are drawn on the GPU (training.train).
# Measured on an H200 (2026-11-27, batches then drawn on the CPU): two brain processes at 776
# images/s each with the GPU 93-98 % busy; MINUTES=5.4 brain: 361 s in all.
# Prepare with prepare.sh first. TRAIN_ARGS adds recipe options of train_priors.py to every
# prior, e.g. TRAIN_ARGS="--augment --patch 64 --init-from diffrecon/priors" (issue "Priors
# that win": measured on the CPU in benchmarks/results/recipe_study*.json); CT priors also
# get CT_ARGS (default: pixel sizes 1.5-3 mm, as the shipped CT priors were trained).
set -euo pipefail
SET=${1:-brain}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
# runs: an A/B study, one process per line of $RUNS, "TAG SET/NAME ARGS..." (ARGS after
# TRAIN_ARGS); each run's tar lands in $OUT/TAG/ and its log is $OUT/TAG.log, e.g.
#   RUNS=$'pos brain/brain-t1-axial-128 --patch 64 --positions\nhalf brain/brain-t1-axial-128 --patch 64 --patch-full 0.5'
case "$SET" in
  brain) NAMES="brain/brain-t1-axial-128 brain/brain-t1-coronal-128" ;;
  ct) NAMES="ct/ct-axial-128 ct/ct-coronal-128" ;;
  all) NAMES="brain/brain-t1-axial-128 brain/brain-t1-coronal-128 ct/ct-axial-128 ct/ct-coronal-128" ;;
  runs) [ -n "${RUNS:-}" ] || { echo "set runs needs RUNS (lines: TAG SET/NAME ARGS...)"; exit 2; } ;;
  *) echo "unknown set $SET (brain, ct, all or runs)"; exit 2 ;;
esac
if [ "$SET" != runs ]; then
  RUNS=""
  for item in $NAMES; do RUNS+="${item#*/} $item"$'\n'; done
fi
n=$(echo "$RUNS" | grep -c .)
threads=$(( $(nproc) / n )); [ "$threads" -ge 1 ] || threads=1
pids=()
seen=" "
while read -r tag item rest; do
  [ -n "$tag" ] || continue
  if ! [[ "$tag" =~ ^[A-Za-z0-9._-]+$ ]] || [[ "$seen" == *" $tag "* ]] || [[ "$item" != */* ]]; then
    echo "RUNS line '$tag $item ...': give a unique tag (letters, digits, . _ -) and SET/NAME"
    exit 2
  fi
  seen+="$tag "
  set -f; read -r -a args <<< "$rest"; set +f  # the run's options, word by word, unglobbed
  set_=${item%%/*}; name=${item#*/}
  extra=""; [ "$set_" = ct ] && extra=${CT_ARGS:---pixel-range 1.5 3.0}
  out="$OUT"; [ "$SET" = runs ] && out="$OUT/$tag"
  mkdir -p "$out"
  python3 benchmarks/device/train_priors.py --set "$set_" --only "$name" --data .devdata \
    --out "$out" --minutes "${MINUTES:-3.1}" --threads "$threads" --work "/tmp/train-$tag" \
    ${TRAIN_ARGS:-} $extra ${args[@]+"${args[@]}"} > "$OUT/$tag.log" 2>&1 &
  pids+=($!)
done <<< "$RUNS"
( while sleep 60; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done ) &
mon=$!
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
kill "$mon" 2>/dev/null || true
tail -n 4 "$OUT"/*.log
ls -laR "$OUT"
echo "done in $SECONDS s"
exit $rc
