"""Speed of coil-map estimation: ours (torch ESPIRiT), sigpy, and BART's ecalib if installed.

Same parameters for all: square 24 x 24 calibration region, 6 x 6 kernel, threshold 0.02,
crop 0.8, one map set. Runs on a simulated 15-coil 320 x 320 slice and on the real
16-coil 128 x 128 twix scan, in one process, alternating, and prints the ratios.

    .venv/bin/python benchmarks/coil_maps.py [--repeats 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import bart  # benchmarks/bart.py (the script's folder is on sys.path)
import numpy as np
import torch
from common import median_time  # benchmarks/common.py

from diffrecon.demo_data import simulated_multicoil
from diffrecon.recon.coils import estimate_coil_maps
from diffrecon.recon.diffusion.training import hardware_name

TWIX = Path(__file__).resolve().parents[2] / "shared/data/mri/raw_twix/invivo_brain_16ch_gre.dat"


def time_bart(k: np.ndarray) -> float | None:
    if not bart.available():
        return None
    return bart.ecalib(k, "-m1", "-r", "24", "-k", "6", "-c", "0.8")[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    cases = [("simulated 15x320x320", simulated_multicoil(1, 320, 15)[0])]
    if TWIX.exists():
        from diffrecon.io.twix import read_twix

        cases.append(("real twix 16x128x128", torch.from_numpy(read_twix(TWIX).kspace)))
    params = dict(calib=24, kernel_width=6, thresh=0.02, crop=0.8)
    print(f"coil maps on {hardware_name(dev)}; calibration 24x24, kernel 6, thresh 0.02, crop 0.8")
    print(f"{'data':24s} {'ours (s)':>9s} {'sigpy (s)':>10s} {'bart (s)':>9s} "
          f"{'sigpy/ours':>10s} {'bart/ours':>9s}")
    for name, k in cases:
        kd = k.to(dev)
        estimate_coil_maps(kd, **params)  # warm-up
        ours = median_time(lambda kd=kd: estimate_coil_maps(kd, **params), args.repeats)
        sig = median_time(lambda k=k: estimate_coil_maps(k, method="sigpy", **params), 1)
        bart = time_bart(k[0].numpy())
        ratio_b = f"{bart / ours:9.2f}" if bart else f"{'-':>9s}"
        bart_s = f"{bart:9.2f}" if bart else f"{'n/a':>9s}"
        print(f"{name:24s} {ours:9.2f} {sig:10.2f} {bart_s} {sig / ours:10.2f} {ratio_b}")


if __name__ == "__main__":
    main()
