#!/usr/bin/env bash
# On the device machine: B4 on the GPU, the full protocol (the 6 IXI test volumes) for the
# MRI tasks and the CT volume, every row of benchmarks/volume.py with the settings of the
# README's B4 tables (eta 1; 16 coils: gamma 3, scale 1.45; single coil: scale 2.0).
# Prepare here with `bash benchmarks/device/prepare.sh`, then carry [".devb4", ".whl"].
# Each task gets its weighted share of DEADLINE seconds (default 460), its volumes in
# order; rows are written as they finish to $OUT/b4_*.json, the log to $OUT/b4_gpu.log.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
PY=${PY:-python3} DEV=${DEV:-cuda}  # PY=.venv/bin/python DEV=cpu: a dry run here
[ "$DEV" = cpu ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --upgrade --target /tmp/site .whl/*.whl || exit 1
# sigpy (the Poisson mask) runs on the CPU: hide cupy and mpi4py from it
mkdir -p /tmp/stubs/cupy /tmp/stubs/mpi4py
echo 'raise ImportError("hidden from sigpy")' > /tmp/stubs/cupy/__init__.py
echo 'MPI = None' > /tmp/stubs/mpi4py/__init__.py
export PYTHONPATH=/tmp/stubs:/tmp/site:$PWD PYTHONUNBUFFERED=1
[ -e ../shared ] || ln -s "$PWD/.devb4" ../shared
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1 | tee "$OUT/b4_gpu.log"
DEADLINE=${DEADLINE:-460}
WEIGHTS=10  # the steps' weights below, together: each step gets its share of the time left
step() {  # step WEIGHT OUTFILE ARGS...: one volume.py process, cut at its share of the time
  local left=$(( (DEADLINE - SECONDS) * $1 / WEIGHTS ))
  WEIGHTS=$((WEIGHTS - $1))
  if [ "$left" -lt 20 ]; then echo "skipped (deadline): ${*:2}" | tee -a "$OUT/b4_gpu.log"; return; fi
  echo "== ${*:2} (up to $left s)" | tee -a "$OUT/b4_gpu.log"
  timeout "$left" "$PY" benchmarks/volume.py --device "$DEV" --out "$OUT/$2" "${@:3}" 2>&1 \
    | tee -a "$OUT/b4_gpu.log" || echo "step ended: rc $?" | tee -a "$OUT/b4_gpu.log"
}
ALL=0,1,2,3,4,5
AUX="--aux-prior brain-t1-coronal-128 --eta 1.0"
step 3 b4_zsr.json --task mri-zsr --volumes $ALL $AUX \
  --methods adjoint,admm-tv,dds,dds-3d-tv,dds-perpendicular,dds-perpendicular-tv
step 4 b4_cart16.json --task mri-cartesian --coils 16 --scale-factor 1.45 --gamma 3 \
  --volumes $ALL $AUX --methods zero-filled,admm-tv,dds,dds-3d-tv,dds-perpendicular,dds-perpendicular-tv
step 2 b4_cart1.json --task mri-cartesian --coils 1 --scale-factor 2.0 --volumes $ALL $AUX \
  --methods zero-filled,admm-tv,dds,dds-3d-tv,dds-perpendicular,dds-perpendicular-tv
step 1 b4_ct.json --task ct --views 8,16 --eta 1.0 --aux-prior ct-coronal-128 \
  --methods dds,dds-3d-tv,dds-perpendicular,dds-perpendicular-tv
echo "done in $SECONDS s" | tee -a "$OUT/b4_gpu.log"
