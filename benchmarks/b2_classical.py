"""Benchmark B2 (the real 16-coil twix scan) for the classical methods.

Prints a table (scan, method, setting, PSNR, SSIM, NMSE, DC residual, seconds) and
writes it as JSON with the project's results model. Protocol: ../shared/BENCHMARKS.md.

    .venv/bin/python benchmarks/b2_classical.py [--out benchmarks/results/b2_classical.json]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from diffrecon.io.twix import read_twix
from diffrecon.recon import classical, coils, masks, metrics
from diffrecon.recon.fft import ifft2c
from diffrecon.recon.operators import Sense
from diffrecon.results import ResultRecord, format_table, write_results

SCAN = Path(__file__).resolve().parents[2] / "shared/data/mri/raw_twix/invivo_brain_16ch_gre.dat"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/b2_classical.json")
    args = ap.parse_args()
    acq = read_twix(SCAN)
    k = torch.from_numpy(acq.kspace)
    ref_maps = coils.estimate_coil_maps(k, calib_width=24, crop=0.8)
    ref = classical.sense_combine(ifft2c(k), ref_maps).abs()
    records = []
    for accel in (4, 8):
        for kind in ("equispaced", "random"):
            seed = masks.benchmark_seed(acq.name, 0, f"{accel}/{kind}")
            mask = masks.make_mask(kind, (128, 128), accel, seed)
            ku = k * mask
            setting = f"R={accel} {kind}"
            t0 = time.perf_counter()
            zf = classical.zero_filled(ku, mask)
            t_zf = time.perf_counter() - t0
            t0 = time.perf_counter()
            maps = coils.estimate_coil_maps(ku, mask)
            x = classical.cg_sense(ku, maps, mask)
            t_cg = time.perf_counter() - t0
            for method, img, secs, dc in (
                ("zero-filled", zf, t_zf, None),
                ("cg-sense", x, t_cg, metrics.dc_residual(Sense(maps, mask), x, ku)),
            ):
                records.append(ResultRecord(
                    scan=acq.name, method=method, setting=setting, psnr=metrics.psnr(img, ref),
                    ssim=metrics.ssim(img, ref), nmse=metrics.nmse(img, ref), dc_residual=dc,
                    seconds=secs,
                ))
    print(f"B2 brain-raw on {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads")
    print(format_table(records))
    print(f"\nwritten: {write_results(records, args.out)}")


if __name__ == "__main__":
    main()
