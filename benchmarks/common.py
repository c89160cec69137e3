"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time

import torch


def median_time(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls (CUDA synchronised)."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


class PrefectServer:
    """A Prefect server on 127.0.0.1 with its own PREFECT_HOME (SQLite database inside),
    started on entry and stopped on exit; this process's client points at it."""

    def __init__(self, home):
        import socket
        from pathlib import Path

        self.home = Path(home)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = self.url + "/api"

    def __enter__(self):
        import os
        import subprocess
        import sys
        from pathlib import Path

        import httpx

        env = {"PREFECT_HOME": str(self.home), "PREFECT_SERVER_API_PORT": str(self.port),
               "PREFECT_API_URL": self.api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PREFECT_LOGGING_LEVEL": "WARNING"}
        os.environ.update(env)
        prefect = str(Path(sys.executable).parent / "prefect")
        self.proc = subprocess.Popen(
            [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.api + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.proc.terminate()
        raise RuntimeError("the Prefect server did not start")

    def database_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.home.glob("*.db*"))

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=30)
