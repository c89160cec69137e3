"""Benchmark B3 (ct-sparse): 8, 16, 32 views and limited angle (0..89 degrees), parallel
beam, 183 detectors, on axial slices of example_ct (every 4th; --quick: every 16th).

Protocol: ../shared/BENCHMARKS.md (PSNR/SSIM with data range 1 in CT units). Prints the
table and writes JSON with the project's results model.

    .venv/bin/python benchmarks/ct_sparse.py [--quick] [--out benchmarks/results/ct_sparse.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from diffrecon.protocols import ct_slices
from diffrecon.recon import metrics
from diffrecon.recon.ct import CTProjector, cg_ls, fbp, tv_ct
from diffrecon.recon.diffusion.training import hardware_name
from diffrecon.results import ResultRecord, format_table, write_results

VOLUME = Path(__file__).resolve().parents[2] / "shared/data/ct/totalsegmentator/example_ct.nii.gz"
METHODS = {"fbp": fbp, "cg-ls": cg_ls, "admm-tv": tv_ct}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/ct_sparse.json")
    args = ap.parse_args()
    cases = ct_slices(VOLUME, every=16 if args.quick else 4)
    images = torch.stack([c.image for c in cases]).double()
    records = []
    for setting in ("8", "16", "32", "limited"):
        op = CTProjector(cases[0].geometry(setting))
        y = torch.cat([c.sinogram(op) for c in cases])
        for name, fn in METHODS.items():
            t0 = time.perf_counter()
            x = fn(y, op)
            secs = (time.perf_counter() - t0) / len(cases)
            records.append(ResultRecord(
                scan=f"B3{'-quick' if args.quick else ''} ({len(cases)} slices)", modality="ct",
                method=name, setting="limited 0-89 deg" if setting == "limited"
                else f"{setting} views", psnr=metrics.psnr(x, images, data_range=1.0),
                ssim=metrics.ssim(x, images, data_range=1.0), nmse=metrics.nmse(x, images),
                dc_residual=metrics.dc_residual(op, x, y), seconds=secs))
    print(f"B3 on {hardware_name(torch.device('cpu'))}; seconds per slice")
    print(format_table(records))
    print(f"\nwritten: {write_results(records, args.out)}")


if __name__ == "__main__":
    main()
