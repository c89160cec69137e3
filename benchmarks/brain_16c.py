"""Benchmarks B1 (brain-16c, simulated from IXI) and B2 (brain-raw, the real twix scan).

Protocol: ../shared/BENCHMARKS.md. Every method estimates its own coil maps from the
undersampled data (our torch ESPIRiT from the rectangular fully sampled centre); the
``cg-sense (bart maps)`` row uses BART's ecalib (``-m1 -c 0.8``) where bart is installed.
DDS uses the prior given by --prior; with --dps, DPS runs at R = 8 random on the first
two slices of each data set (minutes per slice on a CPU). Prints a table (PSNR, SSIM,
NMSE, invented structure (``metrics.invented_px``) means over slices, seconds per slice
including the coil maps) and writes it as JSON with the project's results model.

    .venv/bin/python benchmarks/brain_16c.py [--quick] [--dps] [--prior NAME|DIR|none]
        [--diffusion dds,dds-tv] [--samples K [--branch-steps N]] [--train | --validation]
        [--tv-lam-factors 1,0.5] [--eta E] [--nfe N] [--cg-iters C]
        [--settings 4/equispaced,8/random]

``--samples K``: the diffusion rows are the mean of K samples per slice (``diffrecon run
--samples K``, with ``--branch-steps`` as there). ``--train``: in place of B1 and B2, four
slices of the first two IXI training volumes (testing.b1_training_cases), for choosing settings
without looking at test slices. ``--validation``: the slices of the IXI volumes prior
training holds out (testing.b1_validation_cases), to judge a newly trained prior.
``--tv-lam-factors``: one dds-tv row per multiple of ADMM-TV's TV weight (default 1, the
flow's). ``--eta``, ``--nfe``, ``--cg-iters``: the diffusion rows' sampler settings (default:
the flow's).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import bart  # benchmarks/bart.py
import numpy as np
import torch

from diffrecon.config import ReconConfig
from diffrecon.recon import classical, coils, metrics
from diffrecon.recon.diffusion.training import hardware_name
from diffrecon.recon.operators import Sense
from diffrecon.results import ResultRecord, format_table, write_results
from diffrecon.testing import b1_cases, b2_case

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mri"
SETTINGS = [(4, "equispaced"), (4, "random"), (8, "equispaced"), (8, "random")]


def methods():
    """name -> function(kspace (1, C, ky, kx), maps, mask) -> image (1, H, W)."""
    return {
        "cg-sense": classical.cg_sense,
        "l1-wavelet": classical.l1_wavelet_sense,
        "admm-tv": classical.tv_sense,
    }


def run_case(case, accel, kind, use_bart, prior=None, dps=False, diffusion=("dds",),
             samples: int = 1, branch_steps: int = 0, tv_factors=(1.0,),
             knobs: dict | None = None):
    mask = case.mask(accel, kind)
    ku = (case.kspace * mask)[None]
    ref = case.reference[None]
    rows = []

    def record(method, x, seconds, maps=None, nfe=None):
        dc = metrics.dc_residual(Sense(maps, mask), x, ku) if maps is not None else None
        rows.append((method, metrics.psnr(x, ref), metrics.ssim(x, ref), metrics.nmse(x, ref),
                     dc, seconds, nfe, metrics.invented_px(x, ref)))

    t0 = time.perf_counter()
    record("zero-filled", classical.zero_filled(ku, mask), time.perf_counter() - t0)
    t0 = time.perf_counter()
    maps = coils.estimate_coil_maps(ku, mask)
    t_maps = time.perf_counter() - t0
    for name, fn in methods().items():
        t0 = time.perf_counter()
        x = fn(ku, maps, mask)
        record(name, x, t_maps + time.perf_counter() - t0, maps)
    if prior is not None:
        from diffrecon.recon.diffusion.dds import DDSConfig
        from diffrecon.recon.diffusion.dps import DPSConfig
        from diffrecon.recon.diffusion.run import run_diffusion
        from diffrecon.recon.diffusion.settings import DDSTVConfig

        lam = ReconConfig.model_fields["tv_lam"].default  # the flow's: ADMM-TV's weight
        knobs = knobs or {}  # DDSConfig fields set on the command line, else the flow's
        runs = []
        for m in diffusion:
            if m == "dds":
                runs.append((m, DDSConfig(branch_steps=branch_steps, **knobs)))
            for f in tv_factors if m == "dds-tv" else ():
                runs.append((m if f == 1.0 else f"{m} (lam x{f:g})",
                             DDSTVConfig(tv_lam=lam * f, branch_steps=branch_steps, **knobs)))
        runs += [("dps", DPSConfig())] if dps else []
        op = Sense(maps, mask)
        for name, cfg in runs:
            k = 1 if name == "dps" else samples
            before = prior.evaluations
            t0 = time.perf_counter()
            x = run_diffusion([prior], cfg, lambda a, b: op, ku, samples=k).image
            record(name if k == 1 else f"{name} (K={k})", x, t_maps + time.perf_counter() - t0,
                   maps, (prior.evaluations - before) / k)
    if use_bart:
        bmaps, t_b = bart.ecalib(ku[0].numpy())
        bmaps = torch.from_numpy(bmaps)[None]
        t0 = time.perf_counter()
        x = classical.cg_sense(ku, bmaps, mask)
        record("cg-sense (bart maps)", x, t_b + time.perf_counter() - t0, bmaps)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="B1-quick (2 volumes x 4 slices)")
    ap.add_argument("--out", default="benchmarks/results/brain_16c.json")
    ap.add_argument("--no-bart", action="store_true")
    ap.add_argument("--prior", default="brain-t1-axial-128",
                    help="prior for the DDS rows ('none' to skip them)")
    ap.add_argument("--dps", action="store_true", help="DPS rows (R = 8 random, 2 slices)")
    ap.add_argument("--diffusion", default="dds", help="comma list of dds, dds-tv")
    ap.add_argument("--samples", type=int, default=1, help="diffusion rows: mean of K samples")
    ap.add_argument("--branch-steps", type=int, default=0)
    ap.add_argument("--eta", type=float, default=None, help="DDS / dds-tv noise mixing "
                    "(default: the flow's)")
    ap.add_argument("--nfe", type=int, default=None, help="DDS / dds-tv steps (default: "
                    "the flow's)")
    ap.add_argument("--cg-iters", type=int, default=None, help="DDS / dds-tv CG iterations "
                    "per step (default: the flow's)")
    ap.add_argument("--tv-lam-factors", default="1", help="dds-tv rows: comma list of "
                    "multiples of ADMM-TV's weight")
    ap.add_argument("--settings", default=",".join(f"{a}/{k}" for a, k in SETTINGS),
                    help="comma list of R/pattern (default: all four)")
    ap.add_argument("--train", action="store_true", help="IXI training slices instead")
    ap.add_argument("--validation", action="store_true", help="the slices of the IXI "
                    "volumes prior training holds out, instead")
    args = ap.parse_args()
    prior = None
    if args.prior != "none":
        from diffrecon.recon.diffusion.registry import resolve_prior

        prior = resolve_prior(args.prior)
    use_bart = bart.available() and not args.no_bart
    if args.train or args.validation:
        from diffrecon.testing import b1_training_cases, b1_validation_cases

        cases_of = b1_training_cases if args.train else b1_validation_cases
        datasets = {"IXI training" if args.train else "IXI validation": cases_of(
            DATA / "ixi_t1", DATA / "b1_simulation_maps_16ch_128.npy")}
    else:
        datasets = {
            "B1-quick" if args.quick else "B1": b1_cases(
                DATA / "ixi_t1", DATA / "b1_simulation_maps_16ch_128.npy", quick=args.quick),
            "B2": [b2_case(DATA / "raw_twix" / "invivo_brain_16ch_gre.dat")],
        }
    tv_factors = [float(f) for f in args.tv_lam_factors.split(",")]
    settings = [(int(a), k) for a, k in (x.split("/") for x in args.settings.split(","))]
    knobs = {k: v for k, v in (("eta", args.eta), ("nfe", args.nfe),
                               ("cg_iters", args.cg_iters)) if v is not None}
    records = []
    for dataset, cases in datasets.items():
        for accel, kind in settings:
            acc: dict[str, list] = {}
            for i, case in enumerate(cases):
                dps = args.dps and accel == 8 and kind == "random" and i < 2
                for method, *vals in run_case(case, accel, kind, use_bart, prior, dps,
                                              args.diffusion.split(","), args.samples,
                                              args.branch_steps, tv_factors, knobs):
                    acc.setdefault(method, []).append(vals)
            for method, vals in acc.items():
                v = np.array([[np.nan if x is None else x for x in row] for row in vals], float)
                with np.errstate(all="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-None columns
                    mean = np.nanmean(v, axis=0)
                opt = [None if np.isnan(m) else float(m) for m in mean]
                records.append(ResultRecord(
                    scan=f"{dataset} ({len(vals)} slices)", method=method,
                    setting=f"R={accel} {kind}", psnr=opt[0], ssim=opt[1], nmse=opt[2],
                    dc_residual=opt[3], seconds=opt[4],
                    nfe=None if opt[5] is None else int(opt[5]), invented_px=opt[6],
                    prior=prior.name if method.startswith(("dds", "dps")) else None))
            print(f"done {dataset} R={accel} {kind}", flush=True)
    print(f"\nB1/B2 on {hardware_name(torch.device('cpu'))}; seconds per slice incl. coil maps")
    print(format_table(records))
    print(f"\nwritten: {write_results(records, args.out)}")


if __name__ == "__main__":
    main()
