"""Look at the Prefect UI as a person would: a real server, a batch run (CG-SENSE and DDS on
the built-in sample scan), then headless-Chromium screenshots of the flow-run page and of
the scan's report artifact, and the artifacts checked through the API.

    .venv/bin/python benchmarks/ui_check.py [--out benchmarks/results]

Needs Debian `chromium`. Writes ui_flow_run.png, ui_report.png and prints what the API
holds. Open the PNGs and look at them: the report must show the QA table and the preview.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from common import PrefectServer


def screenshot(url: str, path: Path, profile: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not installed (apt-get install chromium)")
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={profile}", "--hide-scrollbars",
                    "--window-size=1400,1100", "--virtual-time-budget=20000",
                    f"--screenshot={path}", url],
                   check=True, capture_output=True, timeout=120)
    if not path.exists():
        raise SystemExit(f"chromium wrote no screenshot of {url}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, PrefectServer(Path(tmp) / "home") as server:
        from prefect.client.orchestration import get_client

        from diffrecon.config import MaskSpec, PriorRef, ReconConfig
        from diffrecon.demo_data import write_demo_scan
        from diffrecon.flows.reconstruct import reconstruct_scans

        scan = write_demo_scan(Path(tmp) / "in" / "mni152_demo.h5")
        config = ReconConfig(methods=["zero-filled", "cg-sense", "dds"],
                             mask=MaskSpec(accel=4), out_dir=str(Path(tmp) / "out"),
                             diffusion=PriorRef(nfe=20))
        records = reconstruct_scans.with_options(flow_run_name="mni152_demo")([str(scan)],
                                                                             config)
        for r in records:
            print(f"{r.method:12s} PSNR {r.psnr:.2f} dB  {r.state}")
        time.sleep(3)  # artifacts and logs reach the API asynchronously
        with get_client(sync_client=True) as client:
            (run,) = client.read_flow_runs()
            arts = client.read_artifacts()
        kinds = {a.key or a.type: a for a in arts}
        for a in arts:
            print(f"artifact {a.key or '-':24s} {a.type:9s} {a.description or ''}")
        report = kinds["report-mni152-demo"]
        assert "cg-sense" in report.data and "data:image/png;base64," in report.data
        assert any(a.type == "progress" and a.data == 100.0 for a in arts)
        assert "results-mni152-demo" in kinds
        profile = Path(tmp) / "chromium"
        screenshot(f"{server.url}/v2/runs/flow-run/{run.id}", out / "ui_flow_run.png", profile)
        screenshot(f"{server.url}/v2/artifacts/artifact/{report.id}", out / "ui_report.png",
                   profile)
        print(f"flow run {run.name} ({run.state_type.value}); screenshots in {out}")


if __name__ == "__main__":
    main()
