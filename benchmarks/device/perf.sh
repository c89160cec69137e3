#!/usr/bin/env bash
# On the device machine (one H200): the GPU side of the speed issue in one run, at most
# 8 minutes, printing one JSON line per figure and writing $OUT/perf.json (the "cuda" key;
# merge it into benchmarks/results/perf.json here). Parts, each cut at its share of time:
#   dds      DDS at 320 x 320, official ADM MRI configuration, bf16, batched, compiled
#            (torch.compile), cuDNN's algorithms timed per shape (--cudnn-benchmark: not
#            yet run; 2026-12-04 without it 2.54 slices/s, uncompiled 1.04), 50 NFE, 15
#            coils: slices/s against the FLOP bound (target >= 3.3 slices/s), peak memory
#   espirit  ESPIRiT on a 35-slice 15-coil 320 x 320 volume on the GPU (target < 5 s)
#   ct       the CT projectors on CUDA (torch backend) against astra's CPU projectors and
#            ours on the device's CPU (numba, when installed there)
#   samples  --samples 8 against one sample, 4 slices at 320 x 320 (target <= 3x; the
#            one-sample run fills 4 of 16 batch slots, so the ratio flatters a full scan),
#            whole trajectories (2026-12-04: 6.6x) and sharing all but the last 14 steps
#            (--branch-steps 14: 2.96x the network work; not yet timed on a GPU)
# Prepare with `bash benchmarks/device/prepare.sh` (wheels into .whl and .whlx, astra-toolbox
# among them), then call the device tool with carry [".whl", ".whlx"] and:
#   bash benchmarks/device/perf.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl .whlx/*.whl || exit 1
# sigpy (imported by the coil-map module's sigpy option) runs on the CPU: hide cupy/mpi4py
mkdir -p /tmp/stubs/cupy /tmp/stubs/mpi4py
echo 'raise ImportError("hidden from sigpy")' > /tmp/stubs/cupy/__init__.py
echo 'MPI = None' > /tmp/stubs/mpi4py/__init__.py
export PYTHONPATH=/tmp/stubs:/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1 | tee "$OUT/perf.log"
cp benchmarks/results/perf.json "$OUT/perf.json" 2>/dev/null || true
part() {  # part SECONDS NAME ARGS...
  echo "== $2 (up to $1 s)" | tee -a "$OUT/perf.log"
  timeout "$1" python3 benchmarks/perf.py --device cuda --out "$OUT/perf.json" --parts "$2" \
    "${@:3}" 2>&1 | tee -a "$OUT/perf.log" || echo "part $2 ended: rc $?" | tee -a "$OUT/perf.log"
}
PARTS=${PARTS:-dds espirit ct samples}  # e.g. PARTS="dds samples": only the parts not yet run
for p in $PARTS; do
  case "$p" in
    dds) part 200 dds --dds-slices 48 --dds-batch 16 --dds-compile --cudnn-benchmark ;;
    espirit) part 70 espirit --repeats 3 ;;
    ct) part 120 ct --repeats 2 ;;
    samples) part 90 samples --samples-slices 4 --dds-batch 16 ;;
    *) echo "unknown part $p (dds, espirit, ct, samples)" | tee -a "$OUT/perf.log" ;;
  esac
done
echo "done in $SECONDS s" | tee -a "$OUT/perf.log"
