"""Tune dds-tv on training slices only (IXI training volumes, B1's simulation; the CT
training volume aorta_ct_cropped at 8 / 16 views, B3's simulation): ADMM-TV, DDS and dds-tv
for a few ADMM iterations per step and TV weights. Prints a table, writes JSON.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tune_dds_tv.py [--task mri|ct]
        [--iters 1,2,4] [--lam-factors 1] [--out benchmarks/results/tune_dds_tv.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from diffrecon.recon import classical, coils, metrics
from diffrecon.recon.ct import CTProjector, tv_ct
from diffrecon.recon.diffusion.registry import resolve_prior
from diffrecon.recon.diffusion.run import sample
from diffrecon.recon.diffusion.settings import DDSConfig, DDSTVConfig
from diffrecon.recon.operators import Sense
from diffrecon.results import ResultRecord, format_table, write_results
from diffrecon.testing import b1_case, ct_slices, ixi_split

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def mri_rows(args) -> list[ResultRecord]:
    maps = torch.from_numpy(np.load(SHARED / "mri/b1_simulation_maps_16ch_128.npy"))
    train, _ = ixi_split(SHARED / "mri/ixi_t1")
    cases = [b1_case(v, z, maps) for v in train[:2] for z in (60, 80)]  # training volumes
    prior = resolve_prior("brain-t1-axial-128")
    rows = []
    for accel in (4, 8):
        ref = torch.stack([c.reference for c in cases])
        masks = [c.mask(accel, "equispaced") for c in cases]
        mask = masks[0]  # equispaced masks do not depend on the seed
        ku = torch.stack([c.kspace for c in cases]) * mask
        s = coils.estimate_coil_maps(ku, mask)
        op = Sense(s, mask)
        runs = {} if args.skip_baselines else {"admm-tv": None, "dds": DDSConfig()}
        for it in args.iters:
            for f in args.lam_factors:
                for carry in args.carry:
                    runs[f"dds-tv iters={it} lam={1e-4 * f:g} carry={carry}"] = DDSTVConfig(
                        tv_lam=1e-4 * f, tv_iters=it, tv_carry=carry)
        for name, cfg in runs.items():
            t0 = time.perf_counter()
            x = classical.tv_sense(ku, s, mask, 1e-4) if cfg is None \
                else sample(prior, op, ku, cfg)
            rows.append(ResultRecord(scan=f"IXI train ({len(cases)} slices)", method=name,
                                     setting=f"R={accel} equispaced",
                                     psnr=metrics.psnr(x, ref), ssim=metrics.ssim(x, ref),
                                     seconds=(time.perf_counter() - t0) / len(cases)))
            print(rows[-1].method, rows[-1].setting, f"{rows[-1].psnr:.2f}", flush=True)
    return rows


def ct_rows(args) -> list[ResultRecord]:
    cases = ct_slices(SHARED / "ct/totalsegmentator/aorta_ct_cropped.nii.gz", every=16)
    prior = resolve_prior(args.ct_prior)
    images = torch.stack([c.image for c in cases]).double()
    rows = []
    for views in ("8", "16"):
        op = CTProjector(cases[0].geometry(views))
        y = torch.cat([c.sinogram(op) for c in cases])
        runs = {} if args.skip_baselines else {"admm-tv": None, "dds": DDSConfig(eta=1.0)}
        for it in args.iters:
            for f in args.lam_factors:
                for carry in args.carry:
                    runs[f"dds-tv iters={it} lam={f:g} carry={carry}"] = DDSTVConfig(
                        eta=1.0, tv_lam=f, tv_iters=it, tv_carry=carry)
        for name, cfg in runs.items():
            t0 = time.perf_counter()
            x = (tv_ct(y, op, lam=1.0) if cfg is None
                 else sample(prior, op, y.float(), cfg)).double()
            rows.append(ResultRecord(scan=f"aorta_ct_cropped ({len(cases)} slices)",
                                     modality="ct", method=name, setting=f"{views} views",
                                     psnr=metrics.psnr(x, images, 1.0),
                                     ssim=metrics.ssim(x, images, 1.0),
                                     seconds=(time.perf_counter() - t0) / len(cases)))
            print(rows[-1].method, rows[-1].setting, f"{rows[-1].psnr:.2f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", choices=["mri", "ct"], default="mri")
    ap.add_argument("--iters", default="1,2,4")
    ap.add_argument("--lam-factors", default="1", help="multiples of the ADMM-TV weight")
    ap.add_argument("--carry", default="1", help="comma list of 0/1: carry ADMM's z, u")
    ap.add_argument("--skip-baselines", action="store_true")
    ap.add_argument("--ct-prior", default="ct-axial-128")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    args.iters = [int(v) for v in args.iters.split(",")]
    args.lam_factors = [float(v) for v in args.lam_factors.split(",")]
    args.carry = [bool(int(v)) for v in args.carry.split(",")]
    rows = mri_rows(args) if args.task == "mri" else ct_rows(args)
    print(format_table(rows))
    out = args.out or f"benchmarks/results/tune_dds_tv_{args.task}.json"
    print(f"\nwritten: {write_results(rows, out)}")


if __name__ == "__main__":
    main()
