"""Soak test of the nightly run (a benchmark, not part of `make test`): N small scans through
`process_inbox` against a real Prefect server started here.

    .venv/bin/python benchmarks/soak.py [--scans 200] [--method cg-sense]
    .venv/bin/python benchmarks/soak.py --faults --out benchmarks/results/soak_faults.json
    .venv/bin/python benchmarks/soak.py --realistic --out benchmarks/results/soak_realistic.json

Reports total time, time per scan, the reconstruction time inside it (load, coil maps and
the method, as the results record it) and the rest (Prefect orchestration, QA, export,
ledger: the overhead), the server's database growth, and checks that every scan is in the
ledger as done with its outputs present. Writes benchmarks/results/soak.json.

``--faults`` injects what a hospital night brings: truncated files, dangling symbolic links
and size bombs (quarantined), second files with a stem already there (``.hdf5`` beside
``.h5``: both done, apart), and ``--kills`` runs of ``diffrecon inbox`` (a process of its
own) killed with SIGKILL mid-night (once a random number of further scans are done, then
0-0.3 s later, whatever the machine's speed), each followed by a rerun. It
counts scans lost (expected done but not done with its outputs), scans duplicated (more
than one finished subflow run per scan, read from the server) and quarantined.
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
    ap.add_argument("--faults", action="store_true", help="inject bad entries and kills")
    ap.add_argument("--kills", type=int, default=4, help="with --faults: runs killed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--realistic", action="store_true",
                    help="one 16-coil 128 x 128 x 24 scan, CG-SENSE and DDS: the overhead as a "
                         "share of the same work run bare (no Prefect)")
    args = ap.parse_args()
    if args.faults:
        return soak_with_faults(args)
    if args.realistic:
        return soak_realistic(args)
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
        recon = 0.0  # each method's time and, once per scan, the coil maps
        for e in done:
            records = read_results(outbox / e.name / "results.json")
            recon += sum(r.seconds or 0.0 for r in records)
            recon += max((r.maps_seconds or 0.0 for r in records), default=0.0)
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


def soak_realistic(args: argparse.Namespace) -> None:
    """The same scan twice: bare (the task functions called directly, no Prefect: prepare,
    each method with its QA, each export) and through ``process_inbox`` against a server
    (subflow, task runs, caching into a fresh store, report, ledger). The difference is
    what orchestration costs."""
    import sys

    with tempfile.TemporaryDirectory() as tmp, PrefectServer(Path(tmp) / "home") as server:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from prefect.logging import disable_run_logger

        from diffrecon.config import MaskSpec, ReconConfig
        from diffrecon.flows.inbox import process_inbox
        from diffrecon.io.fastmri import write_fastmri
        from diffrecon.results import read_results
        from diffrecon.tasks import mri
        from diffrecon.tasks.export import VolumeRef, export, series_description
        from tests.conftest import make_acquisition

        inbox = Path(tmp) / "inbox"
        acq = make_acquisition(n_slices=24, n_coils=16, ny=128, nx=128, seed=args.seed)
        path = write_fastmri(acq, inbox / "realistic.h5")
        old = time.time() - 3600
        os.utime(path, (old, old))
        methods = ["cg-sense", "dds"]
        config = ReconConfig(methods=methods, mask=MaskSpec(accel=4), outputs=["nifti", "png"])
        bare = config.model_copy(update={"out_dir": str(Path(tmp) / "bare"),
                                         "store": str(Path(tmp) / "bare" / ".artifacts")})
        t0 = time.perf_counter()
        with disable_run_logger():
            prep = mri.prepare_scan.fn(str(path), bare.store_root, "realistic", False,
                                       bare.mask, bare.device, None, bare.coil_method,
                                       bare.calib)
            for m in methods:
                out = mri.reconstruct.fn(prep.meas, prep.maps, m, bare)
                export.fn(VolumeRef(name="realistic", method=m, modality="mri",
                                    image=out.image, affine=prep.meas.affine,
                                    description=series_description(m, None,
                                                                   prep.meas.setting)),
                          bare.outputs, bare.out_dir, bare.store_root)
        t_bare = time.perf_counter() - t0
        db0 = server.database_bytes()
        t0 = time.perf_counter()
        process_inbox(str(inbox), str(Path(tmp) / "outbox"), config, settle_seconds=60)
        t_flow = time.perf_counter() - t0
        time.sleep(5)
        db1 = server.database_bytes()
        records = read_results(Path(tmp) / "outbox" / "realistic" / "results.json")
    result = {
        "scan": "16 coils x 128 x 128 x 24 slices, R=4 equispaced", "methods": methods,
        "bare_s": round(t_bare, 2), "orchestrated_s": round(t_flow, 2),
        "overhead_s": round(t_flow - t_bare, 2),
        "overhead_share_of_bare": round((t_flow - t_bare) / t_bare, 4),
        "method_seconds": {r.method: round(r.seconds or 0, 2) for r in records},
        "maps_seconds": round(max(r.maps_seconds or 0 for r in records), 2),
        "database_growth_kb": round((db1 - db0) / 1024, 1), "threads": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


def _finished_subflows(server_api: str) -> dict[str, int]:
    """Finished (completed or failed) reconstruct-scans runs per name, from the server."""
    from collections import Counter

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    counts: Counter = Counter()
    with get_client(sync_client=True) as client:
        offset = 0
        while True:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["reconstruct-scans"])),
                limit=200, offset=offset)
            counts.update(r.name for r in runs if r.state_type.value in ("COMPLETED", "FAILED"))
            if len(runs) < 200:
                return dict(counts)
            offset += 200


def _done(ledger_file: Path) -> int | None:
    """Scans the ledger has as done (0 before it exists), read through the project's Ledger;
    None when it cannot be read just now (busy, or being created)."""
    import sqlite3

    from diffrecon.tasks.ledger import Ledger

    if not ledger_file.exists():
        return 0
    try:
        return sum(e.state == "done" for e in Ledger(ledger_file).all())
    except sqlite3.Error:
        return None


def _done_now(ledger_file: Path, wait: float = 30.0) -> int:
    """``_done``, asked again until the ledger answers (at most ``wait`` seconds)."""
    deadline = time.monotonic() + wait
    while (n := _done(ledger_file)) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if n is None:
        raise RuntimeError(f"{ledger_file}: the ledger could not be read for {wait:g} s")
    return n


def soak_with_faults(args: argparse.Namespace) -> None:
    import random
    import signal
    import subprocess
    import sys

    import h5py
    import numpy as np

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp, PrefectServer(Path(tmp) / "home") as server:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from diffrecon.io.fastmri import write_fastmri
        from diffrecon.io.records import short_hash
        from diffrecon.tasks.ledger import Ledger
        from tests.conftest import make_acquisition

        inbox, outbox = Path(tmp) / "inbox", Path(tmp) / "outbox"
        good = []
        for i in range(args.scans):
            acq = make_acquisition(n_slices=1, n_coils=4, ny=args.size, nx=args.size, seed=i)
            write_fastmri(acq, inbox / f"scan{i:04d}.h5")
            good.append(f"scan{i:04d}")
        for i in rng.sample(range(args.scans), 5):  # a second file with the same stem
            acq = make_acquisition(n_slices=1, n_coils=4, ny=args.size, nx=args.size,
                                   seed=1000 + i)
            write_fastmri(acq, inbox / f"scan{i:04d}.hdf5")
            good.append(f"scan{i:04d}-{short_hash(f'scan{i:04d}.hdf5')}")
        bad = []
        data = (inbox / "scan0000.h5").read_bytes()
        for i in range(5):
            (inbox / f"truncated{i}.h5").write_bytes(data[: len(data) // 3])
            bad.append(f"truncated{i}")
        for i in range(3):
            (inbox / f"dangling{i}.h5").symlink_to(Path(tmp) / f"nowhere{i}.h5")
            with h5py.File(inbox / f"bomb{i}.h5", "w") as f:
                f.create_dataset("kspace", shape=(64, 32, 4096, 4096), dtype=np.complex64,
                                 chunks=(1, 1, 64, 64))
            bad += [f"dangling{i}", f"bomb{i}"]
        old = time.time() - 3600
        for p in inbox.iterdir():
            if not p.is_symlink():
                os.utime(p, (old, old))
        db0 = server.database_bytes()
        cmd = [sys.executable, "-m", "diffrecon.cli", "inbox", str(inbox), "--out",
               str(outbox), "--method", args.method, "--accel", "2", "--outputs", "nifti,png",
               "--max-attempts", str(args.kills + 3)]
        env = {**os.environ, "PREFECT_API_URL": server.api, "OMP_NUM_THREADS": "1"}
        t0 = time.perf_counter()
        kills, ended = [], []  # runs killed; exit codes of runs that ended by themselves
        ledger_file = outbox / "ledger.sqlite"
        for _ in range(args.kills):
            # killed mid-night whatever the machine's speed: once a random number of further
            # scans (1 to half of those left) are done, then 0-0.3 s later (mostly inside the
            # next scan); a run that stalls is killed after 300 s, one that ends by itself
            # (nothing left) is counted as not killed
            done0 = _done_now(ledger_file)
            target = done0 + rng.randint(1, max(1, (len(good) - done0) // 2))
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            start = time.perf_counter()
            while proc.poll() is None and time.perf_counter() - start < 300:
                n = _done(ledger_file)
                if n is not None and n >= target:
                    break
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 0.3))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills.append({"after_s": round(time.perf_counter() - start, 1),
                              "done_when_killed": _done_now(ledger_file)})
            else:
                ended.append(proc.returncode)
        final = subprocess.run(cmd, env=env, capture_output=True, text=True)
        total = time.perf_counter() - t0
        time.sleep(5)
        db1 = server.database_bytes()
        rows = {e.name: e for e in Ledger(outbox / "ledger.sqlite").all()}
        lost = [n for n in good if n not in rows or rows[n].state != "done"
                or not all(Path(o).exists() for o in rows[n].outputs)]
        quarantined = sorted(n for n, e in rows.items() if e.state == "quarantined")
        finished = _finished_subflows(server.api)
        duplicated = sorted(n for n in good if finished.get(n, 0) > 1)
    result = {
        "scans": len(good), "bad_entries": len(bad), "method": args.method,
        "matrix": f"1 x 4 x {args.size} x {args.size}", "kills": kills,
        "runs_not_killed": ended,
        "final_run_exit_code": final.returncode, "total_s": round(total, 1),
        "lost": len(lost), "duplicated": len(duplicated),
        "quarantined": len(quarantined), "quarantined_as_expected": quarantined == sorted(bad),
        "database_growth_mb": round((db1 - db0) / 2**20, 1), "cpu": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    assert kills, "no run was killed while working: the kills tested nothing"
    assert not lost and not duplicated and quarantined == sorted(bad), (lost, duplicated,
                                                                        quarantined)


if __name__ == "__main__":
    main()
