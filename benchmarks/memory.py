"""Peak memory of `diffrecon run` per method on a clinical-size MRI scan (issue: real scans
of every shape): a synthetic fully sampled 16-coil 320 x 320 x 35-slice fastMRI file,
R=4 equispaced, each method in its own process, peak resident memory (GNU time's %M)
and wall time.

    .venv/bin/python benchmarks/memory.py [--slices 35] [--size 320] [--methods ...]

DDS runs with --nfe 2 here: its memory per step does not depend on the number of steps,
and 50 steps of 35 slices at 320 x 320 take hours on this CPU. Writes
benchmarks/results/memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=35)
    ap.add_argument("--coils", type=int, default=16)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--methods", default="zero-filled,cg-sense,dds")
    ap.add_argument("--slice-batch", type=int, default=4)
    ap.add_argument("--out", default="benchmarks/results/memory.json")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from diffrecon.io.fastmri import write_fastmri
    from tests.conftest import make_acquisition

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        scan = Path(tmp) / "big.h5"
        acq = make_acquisition(n_slices=args.slices, n_coils=args.coils, ny=args.size,
                               nx=args.size, seed=0)
        write_fastmri(acq, scan)
        del acq
        size_mb = scan.stat().st_size / 2**20
        for method in args.methods.split(","):
            stats = Path(tmp) / f"{method}.rss"
            cmd = ["/usr/bin/time", "-f", "%M", "-o", str(stats),
                   sys.executable, "-m", "diffrecon.cli", "run", str(scan), "--method", method,
                   "--out", str(Path(tmp) / method), "--slice-batch", str(args.slice_batch)]
            if method.startswith("dds"):
                cmd += ["--nfe", "2"]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  env={**os.environ, "DIFFRECON_PROGRESS": "off"})
            wall = time.perf_counter() - t0
            peak_kb = int(stats.read_text().split()[-1])  # GNU time %M: peak RSS in kB
            rows.append({"method": method, "exit_code": proc.returncode,
                         "peak_rss_gib": round(peak_kb / 2**20, 2), "wall_s": round(wall, 1)})
            print(rows[-1], flush=True)
            if proc.returncode:
                print(proc.stderr[-2000:])
    result = {"scan": f"{args.slices} x {args.coils} x {args.size} x {args.size} complex64 "
                      f"({size_mb:.0f} MiB on disk)", "slice_batch": args.slice_batch,
              "rows": rows, "cpu": os.cpu_count()}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
