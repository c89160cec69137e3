"""The fixed overhead of `diffrecon run` (issue: hospital-safe runs, operator view): a
one-slice 64 x 64 zero-filled scan timed as a user runs it (a new process each time), three
runs each with Prefect's temporary server, with a running server (PREFECT_API_URL set:
no server started) and through a warm `diffrecon daemon` (DIFFRECON_DAEMON set; its start-up
timed apart), and the import time of the CLI and the flows.

    .venv/bin/python benchmarks/cli_overhead.py [--out benchmarks/results/cli_overhead.json]
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

from common import PrefectServer

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/cli_overhead.json")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from diffrecon.io.fastmri import write_fastmri
    from tests.conftest import make_acquisition

    tmp = Path(tempfile.mkdtemp())
    write_fastmri(make_acquisition(n_slices=1, n_coils=4, ny=64, nx=64), tmp / "s.h5")
    py = sys.executable

    def timed(env: dict, tag: str) -> list[float]:
        out = []
        for i in range(args.repeats):
            t0 = time.perf_counter()
            r = subprocess.run([py, "-m", "diffrecon.cli", "run", str(tmp / "s.h5"), "--method",
                                "zero-filled", "--out", str(tmp / f"o{tag}{i}")], env=env,
                               capture_output=True, text=True)
            out.append(round(time.perf_counter() - t0, 2))
            if r.returncode:
                raise SystemExit(r.stderr[-2000:])
        print(tag, out, flush=True)
        return out

    t0 = time.perf_counter()
    subprocess.run([py, "-c", "import diffrecon.cli as c; c.build_parser(); "
                              "import diffrecon.flows.reconstruct"], check=True)
    imports = round(time.perf_counter() - t0, 2)
    base = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    base["OMP_NUM_THREADS"] = "1"
    temporary = timed({**base, "PREFECT_HOME": str(tmp / "home")}, "temporary-server")
    with PrefectServer(tmp / "srv") as server:
        running = timed({**base, "PREFECT_API_URL": server.api}, "running-server")
        sock = tmp / "daemon.sock"
        t0 = time.perf_counter()
        daemon = subprocess.Popen([py, "-m", "diffrecon.cli", "daemon", "--socket", str(sock)],
                                  env={**base, "PREFECT_API_URL": server.api},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not sock.exists():
            if daemon.poll() is not None or time.perf_counter() - t0 > 300:
                raise SystemExit("the daemon did not start")
            time.sleep(0.05)
        daemon_start = round(time.perf_counter() - t0, 2)
        try:
            warm = timed({**base, "PREFECT_API_URL": server.api, "DIFFRECON_DAEMON": str(sock)},
                         "daemon")
        finally:
            daemon.terminate()
            daemon.wait()
    result = {"imports_s": imports, "temporary_server_s": temporary,
              "running_server_s": running, "daemon_start_s": daemon_start, "daemon_s": warm,
              "cpu": os.cpu_count()}
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
