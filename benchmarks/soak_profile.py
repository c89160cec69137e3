"""Where a soak scan's time goes (issue "Speed where users wait", item 2): N small scans
through `process_inbox` against a Prefect server started here, as benchmarks/soak.py runs
them, with timers around the flow engine's phases and diffrecon's own steps, every HTTP
request of the client (sync and async) by route, the CPU time of this process and of the
server, and the server database's rows per scan.

    .venv/bin/python benchmarks/soak_profile.py [--scans 40]
        [--out benchmarks/results/soak_profile.json]

Timers add a little to the run; compare their shares, not the total, with soak.py's figure.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import re
import resource
import sqlite3
import tempfile
import time
from pathlib import Path

from common import PrefectServer

ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scans", type=int, default=40)
    ap.add_argument("--out", default="benchmarks/results/soak_profile.json")
    args = ap.parse_args()
    n = args.scans
    timers: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])

    def timed(owner, name: str, label: str) -> None:
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def inner(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                timers[label][0] += 1
                timers[label][1] += time.perf_counter() - t0
        setattr(owner, name, inner)

    with tempfile.TemporaryDirectory() as tmp, PrefectServer(Path(tmp) / "home") as server:
        import sys

        import psutil

        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        import prefect.client.base as base
        import prefect.flow_engine as engine

        import diffrecon.flows.inbox as inbox
        import diffrecon.flows.reconstruct as reconstruct
        from diffrecon.config import MaskSpec, ReconConfig
        from diffrecon.io.fastmri import write_fastmri
        from tests.conftest import make_acquisition

        requests: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
        sync_send, async_send = base.PrefectHttpxSyncClient.send, base.PrefectHttpxAsyncClient.send

        def route(kind: str, request) -> str:
            return f"{kind}{request.method} {ID.sub('ID', request.url.path)}"

        def send(self, request, *a, **k):
            t0 = time.perf_counter()
            try:
                return sync_send(self, request, *a, **k)
            finally:
                r = requests[route("", request)]
                r[0] += 1
                r[1] += time.perf_counter() - t0

        async def asend(self, request, *a, **k):
            t0 = time.perf_counter()
            try:
                return await async_send(self, request, *a, **k)
            finally:
                r = requests[route("async ", request)]
                r[0] += 1
                r[1] += time.perf_counter() - t0

        base.PrefectHttpxSyncClient.send, base.PrefectHttpxAsyncClient.send = send, asend
        for name in ("create_flow_run", "load_subflow_run", "set_state", "begin_run",
                     "handle_success"):
            timed(engine.FlowRunEngine, name, f"engine.{name}")
        timed(engine, "run_coro_as_sync", "engine: coroutines run as sync (tracking task)")
        timed(inbox, "_process_one", "one scan (all of it)")
        timed(reconstruct, "process_scan", "process_scan (the subflow's work)")
        timed(reconstruct, "scan_report", "scan_report (the report artifact)")
        timed(reconstruct, "export", "export (NIfTI, PNG)")
        timed(inbox.Ledger, "record", "ledger records")
        from prefect.client.orchestration import PrefectClient
        timed(PrefectClient, "__init__", "PrefectClient() (a TLS context each)")

        folder, outbox = Path(tmp) / "inbox", Path(tmp) / "outbox"
        for i in range(n):
            write_fastmri(make_acquisition(n_slices=1, n_coils=4, ny=64, nx=64, seed=i),
                          folder / f"scan{i:04d}.h5")
        old = time.time() - 3600
        for p in folder.iterdir():
            os.utime(p, (old, old))
        config = ReconConfig(methods=["cg-sense"], mask=MaskSpec(accel=2),
                             outputs=["nifti", "png"])
        srv = psutil.Process(server.proc.pid)

        def server_cpu() -> float:
            total = 0.0
            for p in [srv, *srv.children(recursive=True)]:
                try:
                    c = p.cpu_times()
                    total += c.user + c.system
                except psutil.Error:
                    pass
            return total

        def own_cpu() -> float:
            r = resource.getrusage(resource.RUSAGE_SELF)
            return r.ru_utime + r.ru_stime

        s0, c0, t0 = server_cpu(), own_cpu(), time.perf_counter()
        inbox.process_inbox(str(folder), str(outbox), config, settle_seconds=60)
        wall = time.perf_counter() - t0
        own, srv_cpu = own_cpu() - c0, server_cpu() - s0
        time.sleep(5)  # the server's event services catch up before its rows are counted
        db = sqlite3.connect(next(server.home.glob("*.db")))
        tables = [t for (t,) in db.execute("select name from sqlite_master where type='table'")]
        rows = {t: db.execute(f'select count(*) from "{t}"').fetchone()[0] for t in tables}
        db.close()

    def per_scan(d: dict) -> dict:
        return {k: {"calls_per_scan": round(c / n, 2), "ms_per_scan": round(1000 * s / n, 1)}
                for k, (c, s) in sorted(d.items(), key=lambda kv: -kv[1][1])}

    result = {
        "scans": n, "seconds_per_scan": round(wall / n, 3),
        "cpu_per_scan_s": {"this process": round(own / n, 3), "server": round(srv_cpu / n, 3)},
        "timers": per_scan(timers), "requests": per_scan(requests),
        "server_rows_per_scan": {t: round(c / n, 1) for t, c in rows.items()
                                 if c and t not in ("alembic_version", "block_schema",
                                                    "block_schema_reference", "block_type",
                                                    "configuration")},
        "cpu": os.cpu_count(),
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
