"""Soak test of the nightly run (a benchmark, not part of `make test`): N small scans through
`process_inbox` against a real Prefect server started here.

    .venv/bin/python benchmarks/soak.py [--scans 200] [--method cg-sense]

Reports total time, time per scan, the reconstruction time inside it (load, coil maps and
the method, as the results record it) and the rest (Prefect orchestration, QA, export,
ledger: the overhead), the server's database growth, and checks that every scan is in the
ledger as done with its outputs present. Writes benchmarks/results/soak.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from common import PrefectServer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scans", type=int, default=200)
    ap.add_argument("--method", default="cg-sense")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--out", default="benchmarks/results/soak.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, PrefectServer(Path(tmp) / "home") as server:
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from diffrecon.config import MaskSpec, ReconConfig
        from diffrecon.flows.inbox import process_inbox
        from diffrecon.io.fastmri import write_fastmri
        from diffrecon.results import read_results
        from diffrecon.tasks.ledger import Ledger
        from tests.conftest import make_acquisition

        inbox, outbox = Path(tmp) / "inbox", Path(tmp) / "outbox"
        for i in range(args.scans):
            acq = make_acquisition(n_slices=1, n_coils=4, ny=args.size, nx=args.size, seed=i)
            write_fastmri(acq, inbox / f"scan{i:04d}.h5")
        old = time.time() - 3600
        for p in inbox.iterdir():
            os.utime(p, (old, old))
        db0 = server.database_bytes()
        config = ReconConfig(methods=[args.method], mask=MaskSpec(accel=2),
                             outputs=["nifti", "png"])
        t0 = time.perf_counter()
        summary = process_inbox(str(inbox), str(outbox), config, settle_seconds=60)
        total = time.perf_counter() - t0
        time.sleep(5)  # let the server write the last events
        db1 = server.database_bytes()
        entries = Ledger(outbox / "ledger.sqlite").all()
        done = [e for e in entries if e.state == "done"]
        outputs_ok = all(Path(o).exists() for e in done for o in e.outputs)
        recon = sum(r.seconds or 0.0 for e in done
                    for r in read_results(outbox / e.name / "results.json"))
    n = args.scans
    result = {
        "scans": n, "method": args.method, "matrix": f"1 x 4 x {args.size} x {args.size}",
        "total_s": round(total, 1), "per_scan_s": round(total / n, 3),
        "reconstruction_per_scan_s": round(recon / n, 3),
        "overhead_per_scan_s": round((total - recon) / n, 3),
        "database_growth_mb": round((db1 - db0) / 2**20, 1),
        "database_per_scan_kb": round((db1 - db0) / n / 1024, 1),
        "ledger_done": len(done), "processed": len(summary), "outputs_present": outputs_ok,
        "cpu": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    assert len(done) == n and outputs_ok, "not every scan is done with its outputs"


if __name__ == "__main__":
    main()
