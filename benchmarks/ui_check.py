"""Look at the Prefect UI as a person would: a real server, a batch run (CG-SENSE and DDS on
the built-in sample scan), then headless-Chromium screenshots of the flow-run page and of
the scan's report artifact, and the artifacts checked through the API.

    .venv/bin/python benchmarks/ui_check.py [--out benchmarks/results] [--samples 4]
    .venv/bin/python benchmarks/ui_check.py --inbox   # a night with a quarantined scan

Needs Debian `chromium`. Writes ui_flow_run.png, ui_report.png and prints what the API
holds. Open the PNGs and look at them: the report must show the QA table and the preview
(with --samples K > 1, DDS draws K samples and its std map sits beside its image).
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


def inbox_with_a_quarantined_scan(out: Path) -> None:
    """A night of three scans, one of them corrupt: the inbox run, the failed subflow run of
    the corrupt scan (its state message the reason) and the inbox table, as the UI shows them
    (ui_inbox_run.png, ui_inbox_failed_scan.png)."""
    import os
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    with tempfile.TemporaryDirectory() as tmp, PrefectServer(Path(tmp) / "home") as server:
        from prefect.client.orchestration import get_client

        from diffrecon.config import MaskSpec, ReconConfig
        from diffrecon.flows.inbox import process_inbox
        from diffrecon.io.fastmri import write_fastmri
        from tests.conftest import make_acquisition

        inbox = Path(tmp) / "inbox"
        for i, name in enumerate(("anna", "bert")):
            write_fastmri(make_acquisition(n_slices=2, n_coils=4, ny=64, nx=64, seed=i),
                          inbox / f"{name}.h5")
        data = (inbox / "anna.h5").read_bytes()
        (inbox / "carl.h5").write_bytes(data[: len(data) // 3])
        old = time.time() - 3600
        for p in inbox.iterdir():
            os.utime(p, (old, old))
        summary = process_inbox.with_options(flow_run_name="night-of-2026-12-02")(
            str(inbox), str(Path(tmp) / "outbox"),
            ReconConfig(methods=["zero-filled", "cg-sense"], mask=MaskSpec(accel=2)))
        for s in summary:
            print(s)
        time.sleep(3)
        with get_client(sync_client=True) as client:
            runs = {r.name: r for r in client.read_flow_runs()}
        bad = runs["carl"]
        print(f"carl: {bad.state_type.value}: {bad.state.message}")
        assert bad.state_type.value == "FAILED" and "truncated" in bad.state.message
        profile = Path(tmp) / "chromium"
        screenshot(f"{server.url}/v2/runs/flow-run/{runs['night-of-2026-12-02'].id}",
                   out / "ui_inbox_run.png", profile)
        screenshot(f"{server.url}/v2/runs/flow-run/{bad.id}", out / "ui_inbox_failed_scan.png",
                   profile)
        print(f"screenshots in {out}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--samples", type=int, default=4, help="DDS samples (std map if > 1)")
    ap.add_argument("--inbox", action="store_true",
                    help="the inbox scenario with a quarantined scan instead")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.inbox:
        return inbox_with_a_quarantined_scan(out)
    with tempfile.TemporaryDirectory() as tmp, PrefectServer(Path(tmp) / "home") as server:
        from prefect.client.orchestration import get_client

        from diffrecon.config import MaskSpec, PriorRef, ReconConfig
        from diffrecon.demo_data import write_demo_scan
        from diffrecon.flows.reconstruct import reconstruct_scans

        scan = write_demo_scan(Path(tmp) / "in" / "mni152_demo.h5")
        config = ReconConfig(methods=["zero-filled", "cg-sense", "dds"],
                             mask=MaskSpec(accel=4), out_dir=str(Path(tmp) / "out"),
                             diffusion=PriorRef(nfe=20, samples=args.samples))
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
        assert args.samples == 1 or "| dds | dds std" in report.data
        assert any(a.type == "progress" and a.data == 100.0 for a in arts)
        assert "results-mni152-demo" in kinds
        profile = Path(tmp) / "chromium"
        screenshot(f"{server.url}/v2/runs/flow-run/{run.id}", out / "ui_flow_run.png", profile)
        screenshot(f"{server.url}/v2/artifacts/artifact/{report.id}", out / "ui_report.png",
                   profile)
        print(f"flow run {run.name} ({run.state_type.value}); screenshots in {out}")


if __name__ == "__main__":
    main()
